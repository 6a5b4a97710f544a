"""PlainCNN: NoProp-DT's image encoder and a linear classifier, one cross-entropy loss trained by backprop."""

import torch
import torch.nn.functional as F
from torch import nn

from lightning_noprop.nn.blocks import ConvEncoder
from lightning_noprop.strategies import NoPropDT, PlainCNN


def test_the_encoder_is_the_dt_blocks_and_the_classifier_linear():
    cnn, dt = PlainCNN(width=32), NoPropDT(num_blocks=1, width=32)
    cnn.build(10, (1, 28, 28))
    dt.build(10, (1, 28, 28))
    assert isinstance(cnn.encoder, ConvEncoder)
    shapes = lambda m: [tuple(p.shape) for p in m.parameters()]
    assert shapes(cnn.encoder) == shapes(dt.blocks[0].image_encoder)
    assert isinstance(cnn.classifier, nn.Linear) and (cnn.classifier.in_features, cnn.classifier.out_features) == (32, 10)


def test_one_local_loss_the_cross_entropy_of_the_logits_over_every_parameter():
    torch.manual_seed(0)
    cnn = PlainCNN(width=16, dropout=0.0)
    cnn.build(10, (1, 28, 28))
    x, y = torch.randn(6, 1, 28, 28), torch.arange(6)
    assert cnn.num_local_losses == 1 and len(cnn.block_parameters(0)) == len(list(cnn.parameters()))
    (result,) = cnn.local_losses(x, y, [0])
    torch.testing.assert_close(result.loss, F.cross_entropy(cnn.classifier(cnn.encoder(x)), y))
    result.loss.backward()
    assert all(p.grad is not None for p in cnn.parameters())
    cnn.eval()
    assert cnn.predict(x).logits.shape == (6, 10) and cnn.capture_units == ("forward",)

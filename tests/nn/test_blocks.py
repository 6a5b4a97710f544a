import pytest
import torch
from torch import nn

from lightning_noprop.nn.blocks import DenoisingBlock


@pytest.mark.parametrize(("image_shape", "flat"), [((1, 28, 28), 128 * 7 * 7), ((3, 32, 32), 128 * 8 * 8)])
def test_fig6_block_shapes(image_shape, flat):
    block = DenoisingBlock(image_shape, num_classes=10, embedding_dim=20)
    linears = [m for m in block.image_encoder if isinstance(m, nn.Linear)]
    assert linears[0].in_features == flat, "padding 1 convs and two max-pools give 128 x H/4 x W/4"
    assert isinstance(block.image_encoder[-1], nn.BatchNorm1d), "the image branch ends FC 256 -> BatchNorm"
    logits = block(torch.randn(4, *image_shape), torch.randn(4, 20))
    assert logits.shape == (4, 10)


def test_prototype_block_uses_a_conv_branch_for_z():
    block = DenoisingBlock((1, 28, 28), num_classes=10, embedding_dim=784, z_shape=(1, 28, 28))
    assert any(isinstance(m, nn.Conv2d) for m in block.label_encoder.modules())
    assert block(torch.randn(2, 1, 28, 28), torch.randn(2, 784)).shape == (2, 10)


def test_block_rejects_wrong_z():
    block = DenoisingBlock((1, 28, 28), num_classes=10, embedding_dim=20)
    with pytest.raises(AssertionError, match=r"z must be \(B, 20\)"):
        block(torch.randn(2, 1, 28, 28), torch.randn(2, 10))
    with pytest.raises(AssertionError, match="expected images of shape"):
        block(torch.randn(2, 3, 28, 28), torch.randn(2, 20))

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


def test_ct_fm_network_matches_fig6_without_batchnorm():
    from lightning_noprop.nn import TimeConditionedBlock

    network = TimeConditionedBlock((1, 28, 28), num_classes=10, embedding_dim=20)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in network.modules()), "the CT/FM network has no BatchNorm"
    assert network.fuse[0].in_features == 3 * 256, "image, z and time features are concatenated (768)"
    assert network.time_encoder[1].in_features == 64, "sinusoidal time embedding of dim 64"
    x, z, t = torch.randn(3, 1, 28, 28), torch.randn(3, 20), torch.rand(3)
    network.eval()
    logits = network(x, z, t)
    assert logits.shape == (3, 10)
    assert torch.equal(logits, network.from_image_features(network.image_encoder(x), z, t))
    assert not torch.allclose(logits, network(x, z, 1 - t)), "the output must depend on t"


def test_ct_fm_network_with_prototypes_uses_a_conv_branch_for_z():
    from lightning_noprop.nn import TimeConditionedBlock

    network = TimeConditionedBlock((1, 28, 28), num_classes=10, embedding_dim=784, z_shape=(1, 28, 28))
    assert any(isinstance(m, nn.Conv2d) for m in network.label_encoder.modules())
    assert network(torch.randn(2, 1, 28, 28), torch.randn(2, 784), torch.rand(2)).shape == (2, 10)

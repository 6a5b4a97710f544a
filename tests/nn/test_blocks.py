import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_noprop.nn.blocks import DenoisingBlock, TimeConditionedBlock


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


def _layers(module: nn.Module) -> list[tuple]:
    """Each leaf layer of ``module`` in order, with the settings that Fig. 6 fixes."""
    described = []
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            described.append(("conv", layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding))
        elif isinstance(layer, nn.MaxPool2d):
            described.append(("maxpool", layer.kernel_size, layer.stride or layer.kernel_size))
        elif isinstance(layer, nn.Dropout):
            described.append(("dropout", layer.p))
        elif isinstance(layer, nn.Linear):
            described.append(("fc", layer.in_features, layer.out_features))
        elif isinstance(layer, nn.BatchNorm1d):
            described.append(("bn", layer.num_features))
        elif isinstance(layer, (nn.ReLU, nn.Flatten, nn.Unflatten)):
            described.append((type(layer).__name__.lower(),))
        elif not list(layer.children()):
            described.append((type(layer).__name__,))  # anything else is a layer the spec does not have
    return described


def _fig6_convs(channels: int, height: int, width: int, last: tuple = ("bn", 256)) -> list[tuple]:
    """NOPROP.md, Fig. 6: conv3x3 32 -> ReLU -> maxpool2 -> dropout .2 -> conv3x3 64 -> ReLU -> dropout .2 -> conv3x3
    128 -> ReLU -> maxpool2 -> dropout .2 -> flatten -> FC 256 -> BatchNorm (padding 1, so flatten is 128 x H/4 x W/4)."""
    conv = lambda i, o: ("conv", i, o, (3, 3), (1, 1), (1, 1))  # noqa: E731
    return [conv(channels, 32), ("relu",), ("maxpool", 2, 2), ("dropout", 0.2),
            conv(32, 64), ("relu",), ("dropout", 0.2),
            conv(64, 128), ("relu",), ("maxpool", 2, 2), ("dropout", 0.2),
            ("flatten",), ("fc", 128 * (height // 4) * (width // 4), 256), last]  # fmt: skip


@pytest.mark.parametrize("image_shape", [(1, 28, 28), (3, 32, 32)], ids=["mnist", "cifar"])
def test_dt_block_is_fig6_layer_by_layer(image_shape):
    block = DenoisingBlock(image_shape, num_classes=10, embedding_dim=20)
    assert _layers(block.image_encoder) == _fig6_convs(*image_shape)
    # label: FC 256 -> BN -> ReLU = h; h + [FC 256 -> BN -> ReLU -> FC 256 -> BN]
    assert _layers(block.label_encoder.embed) == [("fc", 20, 256), ("bn", 256), ("relu",)]
    assert _layers(block.label_encoder.residual) == [("fc", 256, 256), ("bn", 256), ("relu",), ("fc", 256, 256), ("bn", 256)]
    # fuse: concat 512 -> FC 256 -> BN -> ReLU -> FC 128 -> BN -> ReLU -> FC m
    assert _layers(block.fuse) == [("fc", 512, 256), ("bn", 256), ("relu",), ("fc", 256, 128), ("bn", 128), ("relu",),
                                   ("fc", 128, 10)]  # fmt: skip


def test_dt_block_forward_is_fig6():
    """The forward pass recomputed from the spec with the block's own weights (eval mode: BatchNorm uses its running
    statistics, set to non-trivial values, and dropout is off)."""
    torch.manual_seed(0)
    block = DenoisingBlock((1, 8, 8), num_classes=4, embedding_dim=5, width=16)
    for bn in (m for m in block.modules() if isinstance(m, nn.BatchNorm1d)):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.5, 0.5)
    block.eval()
    x, z = torch.randn(3, 1, 8, 8), torch.randn(3, 5)
    convs = [m for m in block.image_encoder if isinstance(m, nn.Conv2d)]
    fcs = lambda part: [m for m in part.modules() if isinstance(m, nn.Linear)]  # noqa: E731
    bns = lambda part: [m for m in part.modules() if isinstance(m, nn.BatchNorm1d)]  # noqa: E731
    image = F.max_pool2d(F.relu(convs[0](x)), 2)
    image = F.max_pool2d(F.relu(convs[2](F.relu(convs[1](image)))), 2)
    image = bns(block.image_encoder)[0](fcs(block.image_encoder)[0](image.flatten(1)))
    (fc1,), (bn1,) = fcs(block.label_encoder.embed), bns(block.label_encoder.embed)
    (fc2, fc3), (bn2, bn3) = fcs(block.label_encoder.residual), bns(block.label_encoder.residual)
    h = F.relu(bn1(fc1(z)))
    label = h + bn3(fc3(F.relu(bn2(fc2(h)))))  # the residual connection of the label branch
    (f1, f2, f3), (b1, b2) = fcs(block.fuse), bns(block.fuse)
    expected = f3(F.relu(b2(f2(F.relu(b1(f1(torch.cat([image, label], dim=1))))))))
    torch.testing.assert_close(block(x, z), expected)


def test_dt_block_dropout_is_active_in_training_only():
    block = DenoisingBlock((1, 8, 8), num_classes=4, embedding_dim=5, width=16)
    x, z = torch.randn(8, 1, 8, 8), torch.randn(8, 5)
    torch.manual_seed(0)
    first = block(x, z)
    assert not torch.allclose(first, block(x, z)), "dropout masks differ between training calls"
    block.eval()
    assert torch.equal(block(x, z), block(x, z))


def test_prototype_branch_is_the_image_convs_on_z_reshaped_to_an_image():
    block = DenoisingBlock((1, 28, 28), num_classes=10, embedding_dim=784, z_shape=(1, 28, 28))
    assert _layers(block.label_encoder) == [("unflatten",)] + _fig6_convs(1, 28, 28)
    assert block.label_encoder[0].unflattened_size == (1, 28, 28)
    assert _layers(block.fuse)[0] == ("fc", 512, 256)
    network = TimeConditionedBlock((3, 32, 32), num_classes=10, embedding_dim=3072, z_shape=(3, 32, 32))
    assert _layers(network.label_encoder) == [("unflatten",)] + _fig6_convs(3, 32, 32, last=("relu",))


def test_ct_fm_network_is_fig6_layer_by_layer():
    """Same image convs, then FC 256 -> ReLU; z: FC 256 -> ReLU; time: sinusoidal (64) -> FC 256 -> ReLU;
    concat 768 -> FC 256 -> ReLU -> FC 128 -> ReLU -> FC m. No BatchNorm."""
    network = TimeConditionedBlock((1, 28, 28), num_classes=10, embedding_dim=20)
    assert _layers(network.image_encoder) == _fig6_convs(1, 28, 28, last=("relu",))
    assert _layers(network.label_encoder) == [("fc", 20, 256), ("relu",)]
    assert _layers(network.time_encoder) == [("SinusoidalTimeEmbedding",), ("fc", 64, 256), ("relu",)]
    assert network.time_encoder[0].dim == 64
    assert _layers(network.fuse) == [("fc", 768, 256), ("relu",), ("fc", 256, 128), ("relu",), ("fc", 128, 10)]


@pytest.mark.parametrize("strategy", ["NoPropDT", "Backprop", "NoPropCT", "NoPropFM"])
def test_strategies_default_to_the_fig6_dropout_and_width(strategy):
    import lightning_noprop.strategies as strategies

    built = getattr(strategies, strategy)()
    built.build(10, (1, 28, 28))
    networks = built.blocks if hasattr(built, "blocks") else [built.network]
    for network in networks:
        assert [layer[1] for layer in _layers(network) if layer[0] == "dropout"] == [0.2] * 3
        assert network.image_encoder[-2].out_features == 256


@pytest.mark.parametrize("options", [{"dropout": 1.5}, {"dropout": -0.1}, {"dropout": 1.0}, {"width": 0}, {"width": -3}],
                         ids=["dropout-above-1", "negative-dropout", "dropout-1", "zero-width", "negative-width"])  # fmt: skip
@pytest.mark.parametrize("strategy", ["NoPropDT", "NoPropCT", "NoPropFM", "Backprop", "PlainCNN"])
def test_a_block_with_an_impossible_dropout_or_width_is_refused_when_configured(strategy, options):
    from lightning_noprop import strategies
    from lightning_noprop.errors import ConfigurationError

    name, value = next(iter(options.items()))
    with pytest.raises(ConfigurationError, match=rf"^{name} must be .*, got {value} \(the paper's"):
        getattr(strategies, strategy)(**options)

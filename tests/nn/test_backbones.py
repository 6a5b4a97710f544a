import pytest
import torch
import torchvision
from torch import nn

from lightning_noprop.nn import VGG, ResNet
from lightning_noprop.nn.backbones import near_equal_chunks


def _count(modules):
    return sum(p.numel() for m in modules for p in m.parameters())


def _units(stages):
    return [unit for stage in stages for unit in stage]


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_resnet_parameter_count_matches_torchvision(depth):
    ours = _count(_units(ResNet(depth, stem="imagenet").stages(3)))
    features = 512 * (4 if depth >= 50 else 1)
    fc = features * 1000 + 1000  # torchvision's classifier, which our backbone leaves to the blocks' heads
    assert ours + fc == _count([getattr(torchvision.models, f"resnet{depth}")()])


@pytest.mark.parametrize("depth", [11, 13, 16, 19])
def test_vgg_bn_parameter_count_matches_torchvision_features(depth):
    ours = _count(_units(VGG(depth).stages(3)))
    assert ours == _count([getattr(torchvision.models, f"vgg{depth}_bn")().features])


def test_stems():
    cifar = ResNet(18, stem="cifar").stages(3)[0][0]
    imagenet = ResNet(18, stem="imagenet").stages(3)[0][0]
    assert cifar[0].kernel_size == (3, 3) and cifar[0].stride == (1, 1) and not any(isinstance(m, nn.MaxPool2d) for m in cifar)
    assert imagenet[0].kernel_size == (7, 7) and imagenet[0].stride == (2, 2) and isinstance(imagenet[-1], nn.MaxPool2d)
    x = torch.zeros(1, 3, 32, 32)
    assert nn.Sequential(*_units(ResNet(18, stem="cifar").stages(3)))(x).shape == (1, 512, 4, 4)
    assert nn.Sequential(*_units(ResNet(18, stem="imagenet").stages(3)))(torch.zeros(1, 3, 64, 64)).shape == (1, 512, 2, 2)


SPLITS = [(depth, k) for depth in (18, 34, 50, 101, 152) for k in (1, 2, 4, 8, 12, 16)]


@pytest.mark.parametrize(("depth", "num_blocks"), SPLITS, ids=[f"resnet{d}-K{k}" for d, k in SPLITS])
def test_every_resnet_split_keeps_every_unit_exactly_once_in_order(depth, num_blocks):
    backbone = ResNet(depth)
    stages = backbone.stages(3)
    layer3 = len(stages[3])
    if num_blocks > 3 + layer3:
        with pytest.raises(ValueError, match=f"at most {3 + layer3} blocks"):
            backbone.split(stages, num_blocks)
        return
    blocks = backbone.split(stages, num_blocks)
    assert len(blocks) == num_blocks and all(blocks)
    assert [id(u) for block in blocks for u in block] == [id(u) for u in _units(stages)]
    if num_blocks == 4:
        assert [len(b) for b in blocks] == [1 + len(stages[1]), len(stages[2]), layer3, len(stages[4])]
    if num_blocks > 4:  # only layer3 is cut, into near-equal chunks
        sizes = [len(b) for b in blocks[2:-1]]
        assert sum(sizes) == layer3 and max(sizes) - min(sizes) <= 1


def test_resnet101_16_block_split_sizes():
    blocks = ResNet(101).split(ResNet(101).stages(3), 16)
    assert [len(b) for b in blocks] == [4, 4, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 3]


@pytest.mark.parametrize("num_blocks", [1, 2, 3, 4, 5, 6])
def test_vgg_splits_by_stage(num_blocks):
    backbone = VGG(19)
    stages = backbone.stages(3)
    if num_blocks > 5:
        with pytest.raises(ValueError, match="at most 5 blocks"):
            backbone.split(stages, num_blocks)
        return
    blocks = backbone.split(stages, num_blocks)
    assert [id(u) for block in blocks for u in block] == [id(u) for u in _units(stages)]
    if num_blocks == 5:
        assert [sum(isinstance(u, nn.Sequential) for u in b) for b in blocks] == [2, 2, 4, 4, 4]


def test_near_equal_chunks():
    assert near_equal_chunks(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    with pytest.raises(ValueError):
        near_equal_chunks([1, 2], 3)


def test_bad_backbone_options_are_refused():
    with pytest.raises(ValueError, match="depth"):
        ResNet(20)
    with pytest.raises(ValueError, match="stem"):
        ResNet(18, stem="tiny")
    with pytest.raises(ValueError, match="depth"):
        VGG(12)

import math

import torch

from lightning_noprop.nn import LearnedEmbedding
from lightning_noprop.strategies import Backprop

from .helpers import IMAGE_SHAPE, batch


def tiny_backprop(**kwargs) -> Backprop:
    strategy = Backprop(num_blocks=3, width=16, **kwargs)
    strategy.build(4, IMAGE_SHAPE)
    return strategy


def test_one_loss_reaches_every_block_end_to_end():
    strategy = tiny_backprop(embedding=LearnedEmbedding(dim=6))
    x, y = batch()
    (loss,) = strategy.local_losses(x, y, [0])
    loss.loss.backward()
    for block in strategy.blocks:
        assert sum(p.grad.abs().sum() for p in block.parameters() if p.grad is not None) > 0
    assert strategy.mixing_logits.grad.abs().sum() > 0 and strategy.embedding.weight.grad.abs().sum() > 0
    assert strategy.num_local_losses == 1


def test_forward_is_the_dt_matched_recursion():
    strategy = tiny_backprop(mixing_init=0.3).eval()
    x, _ = batch()
    assert torch.allclose(torch.tanh(strategy.mixing_logits), torch.full((3,), 0.3))
    torch.manual_seed(5)
    got = strategy(x).z
    torch.manual_seed(5)
    z = torch.randn(6, 4)
    W = strategy.embedding.weight
    for t in range(3):
        a = math.tanh(strategy.mixing_logits[t].item())
        z = (1 - a) * z + a * (strategy.blocks[t](x, z).softmax(-1) @ W)
    assert torch.allclose(got, z, atol=1e-6)


def test_parameter_groups_partition_the_model():
    strategy = tiny_backprop(embedding=LearnedEmbedding(dim=6))
    ids = [id(p) for p in strategy.block_parameters(0)] + [id(p) for p in strategy.shared_parameters()]
    assert sorted(ids) == sorted(id(p) for p in strategy.parameters())

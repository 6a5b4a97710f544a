import pytest
import torch

from lightning_noprop.nn import ResNet
from lightning_noprop.strategies import BWBPF

from ..helpers import synthetic_data, tiny_module, trainer


def tiny_bwbpf(num_blocks: int = 4, **kwargs) -> BWBPF:
    strategy = BWBPF(ResNet(18, width=4), num_blocks, **kwargs)
    strategy.build(4, (3, 16, 16))
    return strategy


def _batch():
    return torch.randn(6, 3, 16, 16), torch.arange(6) % 4


def _grads(strategy):
    return [sum(p.grad.abs().sum().item() for p in strategy.block_parameters(k) if p.grad is not None)
            for k in range(strategy.num_blocks)]  # fmt: skip


@pytest.mark.parametrize("block", [0, 1, 2, 3])
def test_detached_blocks_are_trained_only_by_their_own_head(block):
    strategy = tiny_bwbpf()
    losses = list(strategy.local_losses(*_batch(), range(4)))
    losses[block].loss.backward()
    grads = _grads(strategy)
    assert grads[block] > 0 and all(g == 0 for k, g in enumerate(grads) if k != block), grads


def test_without_detach_each_head_trains_every_earlier_block():
    strategy = tiny_bwbpf(detach_between_blocks=False)
    losses = list(strategy.local_losses(*_batch(), range(4)))
    losses[2].loss.backward()
    grads = _grads(strategy)
    assert all(g > 0 for g in grads[:3]) and grads[3] == 0, grads


def test_local_losses_are_the_heads_cross_entropy_and_carry_their_logits():
    strategy = tiny_bwbpf().eval()
    x, y = _batch()
    losses = list(strategy.local_losses(x, y, range(4)))
    h = x
    for k, loss in enumerate(losses):
        h = strategy.blocks[k](h)
        logits = strategy.heads[k](h)
        assert torch.allclose(loss.logits, logits)
        assert loss.loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)


def test_prediction_is_the_final_head_or_the_mean_of_the_last_heads():
    x, _ = _batch()
    strategy = tiny_bwbpf().eval()
    final = [r.logits for r in strategy.local_losses(x, torch.zeros(6, dtype=torch.long), range(4))]
    assert torch.allclose(strategy.predict(x).logits, final[-1], atol=1e-6)
    assert torch.allclose(strategy.predict(x, num_steps=2).logits, final[1], atol=1e-6), "anytime: head of block 2"
    strategy.average_last_heads = 2
    mean = torch.stack([final[2].softmax(-1), final[3].softmax(-1)]).mean(0).log()
    assert torch.allclose(strategy.predict(x).logits, mean, atol=1e-6)


def test_one_block_is_the_backprop_baseline():
    strategy = tiny_bwbpf(num_blocks=1)
    assert strategy.num_local_losses == 1 and len(strategy.heads) == 1
    assert strategy.heads[0][-1].in_features == 32, "one classifier on the backbone's last stage (width 4 x 8)"


@pytest.mark.parametrize("mode", ["joint", "per_block"])
def test_per_head_metrics_and_one_optimizer_per_block(mode):
    module = tiny_module(strategy=BWBPF(ResNet(18, width=4), 4), backward_mode=mode)
    fit_trainer = trainer(limit_train_batches=2, limit_val_batches=1)
    fit_trainer.fit(module, synthetic_data())
    assert len(fit_trainer.optimizers) == 4
    metrics = fit_trainer.callback_metrics
    for k in range(4):
        for key in (f"train/block_{k}/loss_epoch", f"train/block_{k}/acc_epoch", f"val/block_{k}/loss", f"val/block_{k}/acc"):
            assert key in metrics and torch.isfinite(metrics[key]), key
    assert "val/acc" in metrics


def test_joint_and_per_block_give_the_same_updates():
    states = []
    for mode in ("joint", "per_block"):
        module = tiny_module(strategy=BWBPF(ResNet(18, width=4), 4), backward_mode=mode,
                             optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))  # fmt: skip
        trainer(limit_train_batches=2, limit_val_batches=0).fit(module, synthetic_data())
        states.append(module.state_dict())
    for key in states[0]:
        assert torch.allclose(states[0][key].float(), states[1][key].float(), atol=1e-5), key


def test_no_detach_needs_joint_backward():
    with pytest.raises(ValueError, match="backward_mode='joint'"):
        tiny_module(strategy=BWBPF(ResNet(18, width=4), 4, detach_between_blocks=False), backward_mode="per_block")


def test_too_many_blocks_is_a_clear_error():
    with pytest.raises(ValueError, match="at most 5 blocks"):
        BWBPF(ResNet(18), 6).build(10, (3, 32, 32))

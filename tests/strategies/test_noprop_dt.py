import pytest
import torch
import torch.nn.functional as F

from lightning_noprop.nn import LearnedEmbedding, PosteriorHead, PrototypeEmbedding
from lightning_noprop.strategies import NoPropDT

from .helpers import IMAGE_SHAPE, assert_standard_normal, batch, tiny_dt


def _grad_norms(strategy):
    return [sum((p.grad.abs().sum().item() if p.grad is not None else 0.0) for p in b.parameters()) for b in strategy.blocks]


@pytest.mark.parametrize("block", [0, 1, 2])
def test_block_loss_trains_only_its_block_head_and_embedding(block):
    strategy = tiny_dt(embedding=LearnedEmbedding(dim=6))
    x, y = batch()
    (loss,) = strategy.local_losses(x, y, [block])
    loss.loss.backward()
    norms = _grad_norms(strategy)
    assert norms[block] > 0
    assert all(n == 0 for i, n in enumerate(norms) if i != block), f"gradient leaked into other blocks: {norms}"
    assert strategy.head.linear.weight.grad.abs().sum() > 0
    assert strategy.embedding.weight.grad.abs().sum() > 0


def _eq8_by_hand(strategy, x, y, t):
    """Eq. 8's three terms for code index t, written out from the spec with the noise that seed 1 draws, as
    ``block_loss`` draws it (z_{t-1}'s eps, then z_T's): (ce, kl, denoise), differentiable in W_Embed."""
    torch.manual_seed(1)
    eps_prev, eps_T = torch.randn(6, 5), torch.randn(6, 5)
    W = strategy.embedding.weight
    u = W[y]
    ab = strategy.noise_schedule.alpha_bar(torch.linspace(0, 1, 5))
    snr = ab / (1 - ab)
    z_prev = ab[t].sqrt() * u + (1 - ab[t]).sqrt() * eps_prev
    u_hat = strategy.blocks[t](x, z_prev).softmax(-1) @ W
    denoise = (4 / 2) * 0.3 * (snr[t + 1] - snr[t]) * ((u_hat - u) ** 2).sum(-1).mean()
    z_T = ab[4].sqrt() * u + (1 - ab[4]).sqrt() * eps_T
    ce = F.cross_entropy(strategy.head.linear(z_T), y)
    kl = (0.5 * (ab[0] * (u**2).sum(-1) - 5 * ab[0] - 5 * torch.log(1 - ab[0]))).mean()
    return ce, kl, denoise


def test_eq8_loss_value():
    """L_t = CE(head(z_T), y) + KL(q(z_0|y)||N(0,I)) + (T/2) eta (SNR(t) - SNR(t-1)) ||u_hat - u_y||^2."""
    strategy = tiny_dt(num_blocks=4, embedding=LearnedEmbedding(dim=5), eta=0.3).eval()  # eval: no dropout RNG
    x, y = batch()
    t = 2  # code index 2 = the paper's block 3, conditioned on z_2
    torch.manual_seed(1)
    got = strategy.block_loss(x, y, t)
    ce, kl, denoise = _eq8_by_hand(strategy, x, y, t)
    assert torch.allclose(got.loss, ce + kl + denoise, rtol=1e-5)
    assert torch.allclose(got.terms["denoise"], denoise, rtol=1e-5)


def test_denoising_term_back_propagates_into_a_learned_embedding():
    """W_Embed enters Eq. 8's denoising term twice, in u_hat = softmax(logits) @ W_Embed and in u_y = W_Embed[y] (also
    through z_{t-1}): the loss's gradient w.r.t. a learned W_Embed is autograd of the whole formula, whose denoising
    part alone is a sizeable share of it (CE and KL reach W_Embed too, so a detached denoising term would hide)."""
    strategy = tiny_dt(num_blocks=4, embedding=LearnedEmbedding(dim=5), eta=0.3).eval()  # eval: no dropout RNG
    x, y = batch()
    t, W = 2, strategy.embedding.weight
    torch.manual_seed(1)
    (got,) = torch.autograd.grad(strategy.block_loss(x, y, t).loss, W)
    ce, kl, denoise = _eq8_by_hand(strategy, x, y, t)
    (from_denoise,) = torch.autograd.grad(denoise, W, retain_graph=True)
    (expected,) = torch.autograd.grad(ce + kl + denoise, W)
    assert from_denoise.norm() > 0.1 * expected.norm(), "the denoising term must pull on W_Embed"
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_loss_weights_positive_finite_and_last_is_about_5000():
    strategy = tiny_dt(num_blocks=10)
    weights = strategy.loss_weights()
    assert torch.isfinite(weights).all() and (weights > 0).all()
    assert 4000 < weights[-1] < 6000, "spec: the last block's weight is ~5000 with alpha_bar_T = 0.9999"


def _oracle(strategy, y):
    """Replace every block by the perfect denoiser u_hat = u_y."""
    strategy.denoise = lambda t, x, z, W: W[y]  # noqa: E731


@pytest.mark.parametrize("noise", [True, False])
def test_eq3_inference_with_perfect_blocks_lands_on_the_class_embedding(noise):
    strategy = tiny_dt(num_blocks=10, num_classes=4, inference_noise=noise).eval()
    x, y = batch(200)
    _oracle(strategy, y)
    z = strategy.predict(x).z
    expected_mean = strategy.alpha_bar()[-1].sqrt() * strategy.embedding.weight[y]
    # z_T = sqrt(alpha_bar_T) u_y + prod(b_t) z_0 (+ noise of variance ~ 1 - alpha_bar_T); prod(b_t) ~ 0.
    assert torch.allclose(z, expected_mean, atol=0.1 if noise else 1e-3)
    assert (torch.cdist(z, strategy.embedding.weight).argmin(1) == y).all()


def test_inference_starts_from_z0_drawn_from_a_standard_normal():
    """Eq. 3 starts from z_0 ~ N(0, I): the first block's z input, over 256 images x 4 dimensions."""
    strategy = tiny_dt(num_blocks=2).eval()
    x, _ = batch(256)
    starts = []
    strategy.blocks[0].register_forward_pre_hook(lambda block, args: starts.append(args[1].clone()))
    strategy.predict(x)
    strategy.predict(x)
    assert [z.shape for z in starts] == [(256, 4)] * 2
    assert_standard_normal(*starts)


def test_noise_free_inference_is_deterministic_given_z0():
    strategy = tiny_dt().eval()
    strategy.inference_noise = False
    x, _ = batch()
    torch.manual_seed(3)
    first = strategy.predict(x).logits
    torch.manual_seed(3)
    assert torch.equal(first, strategy.predict(x).logits)


def test_anytime_prediction_stops_after_k_blocks():
    strategy = tiny_dt(num_blocks=3).eval()
    x, _ = batch()
    calls = []
    original = strategy.denoise
    strategy.denoise = lambda t, *a: calls.append(t) or original(t, *a)  # noqa: E731
    strategy.predict(x, num_steps=2)
    assert calls == [0, 1]


@pytest.mark.parametrize("embedding", [LearnedEmbedding(dim=20), PrototypeEmbedding()], ids=["dim20", "prototype"])
def test_learned_embeddings_get_finite_bounded_updates(embedding):
    strategy = NoPropDT(num_blocks=10, width=16, embedding=embedding)
    strategy.build(10, IMAGE_SHAPE)
    x, y = batch(40, num_classes=10)
    strategy.initialize_from_data(x, y)
    optimizer = torch.optim.AdamW(strategy.parameters(), lr=1e-3, weight_decay=1e-3)
    for _ in range(5):
        before = strategy.embedding.weight.detach().clone()
        optimizer.zero_grad()
        sum(r.loss for r in strategy.local_losses(x, y, range(10))).backward()
        assert torch.isfinite(strategy.embedding.weight.grad).all()
        optimizer.step()
        step = (strategy.embedding.weight.detach() - before).abs().max().item()
        assert step < 10 * 1e-3, f"the embedding moved {step} in one AdamW step at lr 1e-3"


def test_posterior_head_trains():
    strategy = tiny_dt(head=PosteriorHead(sigma=1.0))
    x, y = batch()
    loss = next(strategy.local_losses(x, y, [0])).loss
    loss.backward()
    assert torch.isfinite(loss) and strategy.head.linear.weight.grad.abs().sum() > 0


def test_parameter_groups_partition_the_model():
    strategy = tiny_dt(embedding=LearnedEmbedding(dim=6))
    ids = [id(p) for i in range(3) for p in strategy.block_parameters(i)] + [id(p) for p in strategy.shared_parameters()]
    assert sorted(ids) == sorted(id(p) for p in strategy.parameters())
    assert strategy.num_local_losses == 3


def test_nearest_readout_scores_by_distance_to_class_embeddings():
    strategy = tiny_dt(num_blocks=10, readout="nearest").eval()
    x, y = batch(50)
    _oracle(strategy, y)
    assert (strategy.predict(x).logits.argmax(1) == y).all()


def test_a_learned_schedule_is_shared_by_every_block_and_trained():
    from lightning_noprop.schedules import LearnedSchedule

    strategy = tiny_dt(noise_schedule=LearnedSchedule(hidden=8))
    shared = {id(p) for p in strategy.shared_parameters()}
    assert {id(p) for p in strategy.noise_schedule.parameters()} <= shared
    x, y = batch()
    for block in range(3):
        strategy.zero_grad()
        strategy.block_loss(x, y, block).loss.backward()
        assert strategy.noise_schedule.gamma_0.grad.abs() > 0, f"block {block}'s loss must reach the schedule"
    assert torch.isfinite(strategy.eval().predict(x).logits).all()


# In float64: a gradient whose true value is 0 (a bias that a BatchNorm subtracts again) comes out as rounding
# noise, and Adam turns noise into full-size steps; in float32 the two executions therefore drift apart by ~lr
# on such elements although every gradient agrees to float32 precision. In float64 gradients agree to 1e-9.
def _losses_and_grads(block_execution):
    torch.manual_seed(0)
    strategy = tiny_dt(dropout=0.0, embedding=LearnedEmbedding(dim=6)).double()
    x, y = batch()
    torch.manual_seed(1)
    losses = strategy.stacked_block_losses if block_execution == "vmap" else strategy.local_losses
    losses = list(losses(x.double(), y, range(3)))
    torch.stack([r.loss for r in losses]).sum().backward()
    grads = {name: p.grad.clone() for name, p in strategy.named_parameters()}
    return [r.loss.item() for r in losses], grads, dict(strategy.named_buffers())


def test_vmapped_blocks_give_the_loop_s_losses_gradients_and_batchnorm_statistics():
    loop_losses, loop_grads, loop_buffers = _losses_and_grads("loop")
    vmap_losses, vmap_grads, vmap_buffers = _losses_and_grads("vmap")
    assert vmap_losses == pytest.approx(loop_losses, rel=1e-12)
    for name, grad in loop_grads.items():
        assert torch.allclose(vmap_grads[name], grad, rtol=1e-9, atol=1e-9), name
    for name, buffer in loop_buffers.items():
        assert torch.allclose(vmap_buffers[name].double(), buffer.double(), atol=1e-12), f"running stats differ: {name}"
    assert any("running_mean" in name and buffer.abs().sum() > 0 for name, buffer in vmap_buffers.items())


def test_vmapped_blocks_train_each_block_with_its_own_adamw_to_the_same_weights():
    from ..helpers import synthetic_data, tiny_module, trainer

    states = []
    for block_execution in ("loop", "vmap"):
        module = tiny_module(strategy=NoPropDT(num_blocks=3, width=16, dropout=0.0), block_execution=block_execution)
        trainer(limit_train_batches=3, limit_val_batches=0, precision="64-true").fit(module, synthetic_data())
        assert len(module.trainer.optimizers) == 4, "one AdamW per block plus the shared one, in both modes"
        states.append(module.state_dict())
    for key, value in states[0].items():
        # 3 AdamW steps move weights by ~3e-3; they agree to 1e-6 (the largest gap, 2e-7, is a pre-BatchNorm bias).
        assert torch.allclose(states[1][key].double(), value.double(), rtol=0, atol=1e-6), key


def test_vmapped_blocks_need_joint_backward():
    from ..helpers import tiny_module

    with pytest.raises(ValueError, match="block_execution 'vmap' runs the blocks in one graph, which needs backward_mode='joint'"):
        tiny_module(strategy=NoPropDT(num_blocks=3, width=16), block_execution="vmap", backward_mode="per_block")
    with pytest.raises(ValueError, match="block_order='every_batch'"):
        tiny_module(strategy=NoPropDT(num_blocks=3, width=16), block_execution="vmap", block_order="sequential")


@pytest.mark.parametrize("learned", [False, True], ids=["one-hot+cosine", "learned-embedding+learned-schedule"])
def test_shared_terms_change_no_loss_and_hold_only_gradient_free_parts(learned):
    """Per-batch reuse of the gradient-free parts of L_t (alpha_bar, weights, u_y, KL) gives bit-identical losses,
    and what carries a gradient is recomputed per block, so block after block can back-propagate alone."""
    from lightning_noprop.schedules import LearnedSchedule

    options = {"embedding": LearnedEmbedding(dim=5), "noise_schedule": LearnedSchedule(hidden=8)} if learned else {}
    strategy = tiny_dt(**options)
    x, y = batch()
    torch.manual_seed(0)
    together = list(strategy.local_losses(x, y, range(3)))
    torch.manual_seed(0)
    alone = [strategy.block_loss(x, y, b) for b in range(3)]
    for a, b in zip(together, alone):
        assert torch.equal(a.loss, b.loss) and all(torch.equal(a.terms[k], b.terms[k]) for k in a.terms)
    shared = strategy.shared_terms(y)
    parts = (shared.alpha_bar, shared.weights, shared.u, shared.kl)
    assert all(p is None for p in parts) if learned else all(p is not None and not p.requires_grad for p in parts)
    for result in strategy.local_losses(x, y, range(3)):  # per_block: each graph is freed before the next backward
        result.loss.backward()

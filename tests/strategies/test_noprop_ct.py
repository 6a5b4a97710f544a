import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from lightning_noprop.nn import LearnedEmbedding, OneHotEmbedding, PosteriorHead, PrototypeEmbedding, SoftmaxHead
from lightning_noprop.schedules import CosineSchedule
from lightning_noprop.strategies import NoPropCT

from ..helpers import tiny_module, trainer
from .helpers import assert_standard_normal, assert_trains_and_predicts, batch, sampler_starts, tiny


def test_loss_terms_match_the_ct_objective():
    """L = CE(head(z_1), y) + KL(q(z_0|y) || N(0, I)) + (eta/2) SNR'(t) ||u_hat(z_t, x, t) - u_y||^2, t per sample."""
    strategy = tiny(NoPropCT, embedding=LearnedEmbedding(dim=5), eta=0.7).eval()  # eval: no dropout RNG
    x, y = batch()
    t = torch.tensor([0.05, 0.2, 0.4, 0.6, 0.8, 0.95])
    torch.manual_seed(3)
    got = strategy.loss(x, y, t)
    torch.manual_seed(3)
    eps_t, eps_1 = torch.randn(6, 5), torch.randn(6, 5)
    schedule, W = strategy.noise_schedule, strategy.embedding.weight
    u = W[y]
    with torch.no_grad():
        ab_t, ab_0, ab_1 = schedule.alpha_bar(t), schedule.alpha_bar(torch.tensor(0.0)), schedule.alpha_bar(torch.tensor(1.0))
        z_t = ab_t.sqrt().unsqueeze(1) * u + (1 - ab_t).sqrt().unsqueeze(1) * eps_t
        u_hat = strategy.network(x, z_t, t).softmax(-1) @ W
        h = 1e-3  # SNR'(t) by central differences, independent of the closed form
        snr_prime = ((schedule.snr(t + h).double() - schedule.snr(t - h).double()) / (2 * h)).float()
        denoise = (0.5 * 0.7 * snr_prime * (u_hat - u).pow(2).sum(-1)).mean()
        q_0 = Normal(ab_0.sqrt() * u, (1 - ab_0).sqrt())
        kl = kl_divergence(q_0, Normal(torch.zeros_like(u), torch.ones_like(u))).sum(-1).mean()
        ce = F.cross_entropy(strategy.head(ab_1.sqrt() * u + (1 - ab_1).sqrt() * eps_1, W), y)
    assert got.terms["denoise"].item() == pytest.approx(denoise.item(), rel=2e-3)
    assert got.terms["kl"].item() == pytest.approx(kl.item(), rel=1e-4)
    assert got.terms["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert got.loss.item() == pytest.approx((ce + kl + denoise).item(), rel=2e-3)


def test_each_sample_draws_its_own_time():
    strategy = tiny(NoPropCT)
    seen = []
    original = strategy.network.from_image_features
    strategy.network.from_image_features = lambda f, z, t: seen.append(t.detach().clone()) or original(f, z, t)
    strategy.loss(*batch(size=32))
    per_sample = [t for t in seen if t.numel() == 32]  # the times the network is conditioned on
    assert per_sample and per_sample[0].unique().numel() == 32 and (0 <= per_sample[0]).all() and (per_sample[0] <= 1).all()


@pytest.mark.parametrize("snr_derivative", ["analytic", "autograd"])
def test_gradients_reach_the_network_head_embedding_and_schedule(snr_derivative):
    strategy = tiny(NoPropCT, embedding=LearnedEmbedding(dim=6), snr_derivative=snr_derivative)
    loss = strategy.loss(*batch())
    loss.loss.backward()
    assert torch.isfinite(loss.loss)
    for name, p in strategy.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"no finite gradient for {name}"
    for name in ("gamma_0", "gamma_1", "hidden.weight", "out.weight"):
        assert strategy.noise_schedule.get_parameter(name).grad.abs().sum() > 0, f"schedule's {name} gets no gradient"


def test_analytic_and_autograd_snr_derivative_give_the_same_loss():
    x, y = batch()
    losses = []
    for method in ("analytic", "autograd"):
        torch.manual_seed(0)
        strategy = tiny(NoPropCT, snr_derivative=method).eval()
        torch.manual_seed(1)
        losses.append(strategy.loss(x, y).loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_one_network_one_block_optimizer_and_the_schedule_is_shared():
    strategy = tiny(NoPropCT, embedding=LearnedEmbedding(dim=6))
    assert strategy.num_local_losses == 1
    assert {id(p) for p in strategy.block_parameters(0)} == {id(p) for p in strategy.network.parameters()}
    shared = {id(p) for p in strategy.shared_parameters()}
    assert {id(p) for p in strategy.noise_schedule.parameters()} <= shared
    assert {id(p) for p in strategy.head.parameters()} <= shared and id(strategy.embedding.weight) in shared


@pytest.mark.parametrize("num_steps", [1, 2, 20])
def test_inference_runs_eq3_on_the_grid_k_over_n(num_steps):
    strategy = tiny(NoPropCT).eval()
    x, _ = batch()
    times = []
    original = strategy.network.from_image_features
    strategy.network.from_image_features = lambda f, z, t: times.append(t[0].item()) or original(f, z, t)
    prediction = strategy.predict(x, num_steps)
    assert times == pytest.approx([k / num_steps for k in range(num_steps)])
    assert prediction.logits.shape == (6, 4) and torch.isfinite(prediction.z).all()


def test_deterministic_variant_depends_only_on_z0_and_converges_with_the_step_count():
    strategy = tiny(NoPropCT, inference_noise=False).eval()
    x, _ = batch()

    def z(steps):
        torch.manual_seed(0)
        return strategy.predict(x, steps).z

    deterministic = z(50)
    assert torch.equal(deterministic, z(50))
    coarse, fine = (z(25) - z(50)).norm(), (z(400) - z(800)).norm()
    assert fine < coarse / 4, f"doubling the steps must change z_1 less as N grows: {coarse:.3g} -> {fine:.3g}"
    strategy.inference_noise = True
    assert not torch.allclose(z(50), deterministic), "the noisy variant must add the sqrt(c_k) eps term"


@pytest.mark.parametrize("embedding", [OneHotEmbedding(), LearnedEmbedding(dim=20), PrototypeEmbedding()],
                         ids=["one-hot", "dim20", "prototype"])  # fmt: skip
@pytest.mark.parametrize("head", [SoftmaxHead(), PosteriorHead()], ids=["softmax", "posterior"])
def test_every_embedding_and_head(embedding, head):
    import copy

    assert_trains_and_predicts(tiny(NoPropCT, embedding=copy.deepcopy(embedding), head=copy.deepcopy(head)))


def test_fixed_cosine_schedule_is_an_option():
    strategy = tiny(NoPropCT, noise_schedule=CosineSchedule())
    assert not list(strategy.noise_schedule.parameters())
    assert torch.isfinite(strategy.loss(*batch()).loss)


def test_nonfinite_loss_stops_training_with_a_clear_error():
    strategy = NoPropCT(width=16, inference_steps=5)
    module = tiny_module(strategy=strategy)
    with torch.no_grad():
        strategy.noise_schedule.gamma_0.fill_(float("nan"))
    from .. import helpers

    with pytest.raises(FloatingPointError, match="Non-finite loss .* block 0"):
        trainer(limit_train_batches=1, limit_val_batches=0).fit(module, helpers.synthetic_data())


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="snr_derivative"):
        NoPropCT(snr_derivative="numeric")
    with pytest.raises(ValueError, match="inference_steps"):
        NoPropCT(inference_steps=0)
    with pytest.raises(ValueError, match="eta"):
        NoPropCT(eta=0)


def test_inference_starts_from_z0_drawn_from_a_standard_normal():
    """The sampler starts from z_0 ~ N(0, I): the network's z input at t = 0, over 256 images x 4 dimensions."""
    strategy = tiny(NoPropCT).eval()
    x, _ = batch(256)
    starts = sampler_starts(strategy, x)
    assert [z.shape for z in starts] == [(256, 4)] * 2
    assert_standard_normal(*starts)

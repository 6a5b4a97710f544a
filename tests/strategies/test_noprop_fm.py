import copy

import pytest
import torch
import torch.nn.functional as F

from lightning_noprop.nn import LearnedEmbedding, OneHotEmbedding, PosteriorHead, PrototypeEmbedding, SoftmaxHead
from lightning_noprop.strategies import NoPropFM

from .helpers import assert_standard_normal, assert_trains_and_predicts, batch, sampler_starts, tiny


def _fixed_inputs(d: int):
    torch.manual_seed(2)
    return torch.tensor([0.0, 0.1, 0.3, 0.5, 0.9, 1.0]), torch.randn(6, d)


@pytest.mark.parametrize("embedding", [OneHotEmbedding(), LearnedEmbedding(dim=5)], ids=["one-hot", "dim5"])
def test_loss_is_the_flow_matching_objective_on_the_straight_path(embedding):
    """z_t = t u_y + (1 - t) z_0, v_hat = logits @ W_Embed (no softmax), target u_y - z_0; anchor CE on
    z_t + (1 - t) v_hat only for learned embeddings."""
    strategy = tiny(NoPropFM, embedding=copy.deepcopy(embedding)).eval()
    x, y = batch()
    W = strategy.embedding.weight
    t, z_0 = _fixed_inputs(W.shape[1])
    got = strategy.loss(x, y, t, z_0)
    with torch.no_grad():
        u = W[y]
        z_t = t[:, None] * u + (1 - t[:, None]) * z_0
        v = strategy.network(x, z_t, t) @ W
        flow = (v - (u - z_0)).pow(2).sum(-1).mean()
    assert got.terms["flow"].item() == pytest.approx(flow.item(), rel=1e-5)
    if strategy.embedding.learned:
        anchor = F.cross_entropy(strategy.head(z_t + (1 - t[:, None]) * v, W), y)
        assert got.terms["anchor"].item() == pytest.approx(anchor.item(), rel=1e-5)
        assert got.loss.item() == pytest.approx((flow + anchor).item(), rel=1e-5)
    else:
        assert "anchor" not in got.terms and got.loss.item() == pytest.approx(flow.item(), rel=1e-5)


def test_the_exact_velocity_has_zero_loss():
    strategy = tiny(NoPropFM).eval()  # one-hot: v_hat = logits, so the network can output the target itself
    x, y = batch()
    t, z_0 = _fixed_inputs(4)
    u = strategy.embedding.weight[y]
    strategy.network.from_image_features = lambda f, z, t_: u - z_0
    assert strategy.loss(x, y, t, z_0).loss.item() == pytest.approx(0.0, abs=1e-12)


def test_one_hot_has_no_anchor_and_a_frozen_head():
    strategy = tiny(NoPropFM)
    assert not strategy.anchor_loss
    assert not any(p.requires_grad for p in strategy.head.parameters())
    assert strategy.shared_parameters() == []
    learned = tiny(NoPropFM, embedding=LearnedEmbedding(dim=6))
    assert learned.anchor_loss and {id(p) for p in learned.head.parameters()} <= {id(p) for p in learned.shared_parameters()}
    forced = tiny(NoPropFM, anchor_loss=True)
    assert "anchor" in forced.loss(*batch()).terms


def test_head_readout_without_anchor_is_refused():
    with pytest.raises(ValueError, match="anchor_loss"):
        NoPropFM(readout="head")


def test_euler_inference_lands_on_the_class_of_an_exact_velocity_field():
    """With v(z, t) = (u_c - z) / (1 - t) (the flow towards u_c), Euler reaches u_c and the readout says c."""
    strategy = tiny(NoPropFM, embedding=LearnedEmbedding(dim=6)).eval()
    x, _ = batch()
    target = torch.tensor([0, 1, 2, 3, 0, 1])
    u = strategy.embedding.weight[target].detach()
    strategy.velocity = lambda x_, z, t, W, features=None: (u - z) / (1 - t[:, None])
    prediction = strategy.predict(x, num_steps=10)
    assert torch.allclose(prediction.z, u, atol=1e-5)
    assert torch.equal(prediction.logits.argmax(1), target)


def test_sampler_step_count_changes_the_result_smoothly():
    strategy = tiny(NoPropFM).eval()
    x, _ = batch()

    def z(steps):
        torch.manual_seed(0)
        return strategy.predict(x, steps).z

    differences = [(z(n) - z(2 * n)).norm().item() for n in (10, 40, 160)]
    assert differences[0] > differences[1] > differences[2], differences
    assert differences[2] < differences[0] / 8, f"Euler's error must shrink like 1/N: {differences}"


def test_gradients_reach_network_head_and_embedding_only_through_the_loss():
    strategy = tiny(NoPropFM, embedding=LearnedEmbedding(dim=6))
    strategy.loss(*batch()).loss.backward()
    for name, p in strategy.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("embedding", [OneHotEmbedding(), LearnedEmbedding(dim=20), PrototypeEmbedding()],
                         ids=["one-hot", "dim20", "prototype"])  # fmt: skip
@pytest.mark.parametrize("head", [SoftmaxHead(), PosteriorHead()], ids=["softmax", "posterior"])
def test_every_embedding_and_head(embedding, head):
    assert_trains_and_predicts(tiny(NoPropFM, embedding=copy.deepcopy(embedding), head=copy.deepcopy(head), sigma=0.05))


def test_sigma_adds_noise_to_the_path():
    strategy = tiny(NoPropFM, sigma=0.5).eval()
    x, y = batch()
    t, z_0 = _fixed_inputs(4)
    assert strategy.loss(x, y, t, z_0).loss.item() != strategy.loss(x, y, t, z_0).loss.item()
    with pytest.raises(ValueError, match="sigma"):
        NoPropFM(sigma=-1.0)


def test_inference_starts_from_z0_drawn_from_a_standard_normal():
    """The sampler starts from z_0 ~ N(0, I): the network's z input at t = 0, over 256 images x 4 dimensions."""
    strategy = tiny(NoPropFM).eval()
    x, _ = batch(256)
    starts = sampler_starts(strategy, x)
    assert [z.shape for z in starts] == [(256, 4)] * 2
    assert_standard_normal(*starts)

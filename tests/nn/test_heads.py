import pytest
import torch

from lightning_noprop.nn.heads import PosteriorHead, SoftmaxHead, nearest_embedding_logits


def test_softmax_head_is_a_linear_layer():
    head = SoftmaxHead()
    head.build(4, 6)
    z = torch.randn(3, 6)
    assert torch.allclose(head(z, torch.randn(4, 6)), head.linear(z))


def test_posterior_head_is_gaussian_around_each_embedding():
    head = PosteriorHead(sigma=0.7)
    head.build(4, 6)
    embedding, z = torch.randn(4, 6), torch.randn(3, 6)
    y_tilde = torch.softmax(head.linear(z), dim=-1) @ embedding
    probabilities = torch.stack(
        [torch.exp(-((y_tilde - embedding[c]) ** 2).sum(-1) / (2 * 0.7**2)) for c in range(4)], dim=1
    )
    probabilities = probabilities / probabilities.sum(1, keepdim=True)
    assert torch.allclose(head(z, embedding).softmax(-1), probabilities, atol=1e-6)


def test_heads_reject_wrong_embedding_size():
    head = SoftmaxHead()
    head.build(4, 6)
    with pytest.raises(AssertionError, match=r"z must be \(B, 5\)"):
        head(torch.randn(3, 6), torch.randn(4, 5))


def test_nearest_embedding_logits_pick_the_closest_class():
    embedding = torch.eye(3) * 2
    z = torch.tensor([[1.9, 0.1, 0.0], [0.0, 0.2, 1.5]])
    logits = nearest_embedding_logits(z, embedding)
    assert logits.argmax(1).tolist() == [0, 2]
    assert torch.allclose(logits[0, 1], -0.5 * ((z[0] - embedding[1]) ** 2).sum())

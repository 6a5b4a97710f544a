"""Output heads: map a label embedding z (B, d) to class logits (B, m).

Both heads return logits, i.e. log p(y | z) up to a per-row constant, so CE and argmax work the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn

from lightning_noprop.errors import ConfigurationError


class Head(nn.Module, ABC):
    """Abstract head; ``build`` creates its layers once the class count and embedding size are known."""

    def __init__(self) -> None:
        super().__init__()
        self.linear: nn.Linear | None = None

    def build(self, num_classes: int, embedding_dim: int) -> None:
        """Create the Linear(embedding_dim -> num_classes) that both heads start from."""
        if self.linear is not None:
            raise RuntimeError(f"{type(self).__name__} is already built; use a fresh instance per model.")
        self.linear = nn.Linear(embedding_dim, num_classes)

    @abstractmethod
    def forward(self, z: Tensor, embedding: Tensor) -> Tensor:
        """Logits (B, m) for z (B, d), given W_Embed (m, d)."""


class SoftmaxHead(Head):
    """The paper's default head: Linear(d -> m) followed by softmax (returned as logits)."""

    def forward(self, z: Tensor, embedding: Tensor) -> Tensor:
        assert z.dim() == 2 and z.shape[1] == embedding.shape[1], (
            f"z must be (B, {embedding.shape[1]}), got {tuple(z.shape)}"
        )
        return self.linear(z)


class PosteriorHead(Head):
    """The "posterior" head: class scores from a Gaussian around each class embedding.

    y_tilde = softmax(Linear(z)) @ W_Embed and
    p(y | z) proportional to exp(-||y_tilde - u_y||^2 / (2 sigma^2)).

    Args:
        sigma: width of the Gaussian around each class embedding (spec: choose sigma = 1).
    """

    def __init__(self, sigma: float = 1.0) -> None:
        super().__init__()
        if sigma <= 0:
            raise ConfigurationError(f"PosteriorHead sigma must be > 0, got {sigma}.")
        self.sigma = sigma

    def forward(self, z: Tensor, embedding: Tensor) -> Tensor:
        assert z.dim() == 2 and z.shape[1] == embedding.shape[1], (
            f"z must be (B, {embedding.shape[1]}), got {tuple(z.shape)}"
        )
        y_tilde = self.linear(z).softmax(dim=-1) @ embedding  # (B, d)
        return nearest_embedding_logits(y_tilde, embedding) / self.sigma**2


def check_readout(readout: str) -> None:
    """Refuse a readout other than "head" or "nearest" with the accepted values."""
    if readout not in ("head", "nearest"):
        raise ConfigurationError(f"readout must be 'head' or 'nearest', got {readout!r}.")


def readout_logits(readout: str, head: Head, z: Tensor, embedding: Tensor) -> Tensor:
    """Class scores (B, m) of a final state z (B, d): the ``head``'s, or -distance to each class embedding."""
    return head(z, embedding) if readout == "head" else nearest_embedding_logits(z, embedding)


def nearest_embedding_logits(z: Tensor, embedding: Tensor) -> Tensor:
    """-||z - u_c||^2 / 2 for every class c: (B, d), (m, d) -> (B, m); argmax is the nearest class embedding."""
    return -0.5 * (z.unsqueeze(1) - embedding.unsqueeze(0)).pow(2).sum(-1)

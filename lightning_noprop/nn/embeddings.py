"""Class embeddings W_Embed (m x d): the clean targets u_y = W_Embed[y] that NoProp's blocks denoise towards.

Every embedding is built in two steps: the constructor takes its hyperparameters (so it can be chosen
with ``class_path`` in YAML), ``build(num_classes, image_shape)`` creates its tensors once the data's
shape is known. The three options of the paper (spec, "Class embeddings"):

| class | d | learned | init |
|---|---|---|---|
| OneHotEmbedding | m | no | identity |
| LearnedEmbedding(dim) | dim | yes | orthogonal rows when dim >= m, else random unit-norm rows |
| PrototypeEmbedding | C*H*W | yes | per class, the training image with the smallest median distance to the others |
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from lightning_noprop.errors import ConfigurationError


class ClassEmbedding(nn.Module, ABC):
    """Abstract class embedding. After ``build``, ``weight`` is the (num_classes, dim) matrix W_Embed."""

    #: True when W_Embed is a trainable parameter (it then joins the shared optimizer).
    learned: bool = False
    #: True when ``initialize_from_data`` must run on the training split before training.
    requires_data_init: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.num_classes: int | None = None

    @property
    def is_built(self) -> bool:
        return self.num_classes is not None

    def build(self, num_classes: int, image_shape: tuple[int, int, int]) -> None:
        """Create W_Embed for ``num_classes`` classes of images shaped ``image_shape`` (C, H, W)."""
        if self.is_built:
            raise RuntimeError(f"{type(self).__name__} is already built; use a fresh instance per model.")
        if num_classes < 2:
            raise ConfigurationError(f"num_classes must be >= 2, got {num_classes}.")
        self.num_classes = num_classes
        self._build(num_classes, tuple(image_shape))

    @abstractmethod
    def _build(self, num_classes: int, image_shape: tuple[int, int, int]) -> None: ...

    @property
    @abstractmethod
    def weight(self) -> Tensor:
        """W_Embed, shape (num_classes, dim)."""

    @property
    def dim(self) -> int:
        """Embedding dimension d."""
        return self.weight.shape[1]

    @property
    def z_shape(self) -> tuple[int, ...] | None:
        """Shape that z can be reshaped to for a convolutional label branch, or None for a vector."""
        return None

    def forward(self, y: Tensor) -> Tensor:
        """u_y for labels ``y`` of shape (B,), returns (B, dim)."""
        return self.weight[y]

    @property
    def data_initialized(self) -> bool:
        """False while ``initialize_from_data`` has yet to run (an embedding that needs it, fresh)."""
        return True

    def initialize_from_data(self, images: Tensor, labels: Tensor) -> None:
        """Data-dependent initialisation from the training split; a no-op unless the embedding needs it."""

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}" if self.is_built else "unbuilt"


class OneHotEmbedding(ClassEmbedding):
    """Fixed one-hot embedding: W_Embed = I (m x m), not trained."""

    learned = False

    def _build(self, num_classes: int, image_shape: tuple[int, int, int]) -> None:
        self.register_buffer("_weight", torch.eye(num_classes))

    @property
    def weight(self) -> Tensor:
        return self._weight


class LearnedEmbedding(ClassEmbedding):
    """A trainable embedding of any dimension (the paper's "dim=20").

    Args:
        dim: embedding dimension d. Rows start orthonormal when dim >= num_classes (orthogonal init),
            otherwise as random unit-norm vectors.
    """

    learned = True

    def __init__(self, dim: int = 20) -> None:
        super().__init__()
        if dim < 1:
            raise ConfigurationError(f"LearnedEmbedding dim must be >= 1, got {dim}.")
        self._dim = dim

    def _build(self, num_classes: int, image_shape: tuple[int, int, int]) -> None:
        weight = torch.empty(num_classes, self._dim)
        if self._dim >= num_classes:
            nn.init.orthogonal_(weight)
        else:
            nn.init.normal_(weight, std=1.0 / math.sqrt(self._dim))
            weight = weight / weight.norm(dim=1, keepdim=True)
        self._weight = nn.Parameter(weight)

    @property
    def weight(self) -> Tensor:
        return self._weight


class PrototypeEmbedding(ClassEmbedding):
    """Trainable image-shaped embedding initialised with one prototype image per class.

    The prototype of class c is the training image whose median Euclidean distance to the other training
    images of class c is smallest (the class "medoid" under the median). The module calls
    ``initialize_from_data`` with the training split (never validation or test) at the start of the first fit
    only: a second ``fit`` of the same model continues from the trained prototypes, and a resumed or evaluated
    checkpoint restores them (with the ``initialized`` flag).

    Args:
        max_images_per_class: cap on the images per class used to pick the prototype (the first ones of
            the training split); None uses all of them, as the paper does.
    """

    learned = True
    requires_data_init = True

    def __init__(self, max_images_per_class: int | None = None) -> None:
        super().__init__()
        if max_images_per_class is not None and max_images_per_class < 2:
            raise ConfigurationError(f"max_images_per_class must be >= 2 or None, got {max_images_per_class}.")
        self.max_images_per_class = max_images_per_class
        self._image_shape: tuple[int, int, int] | None = None

    def _build(self, num_classes: int, image_shape: tuple[int, int, int]) -> None:
        self._image_shape = image_shape
        self._weight = nn.Parameter(torch.zeros(num_classes, math.prod(image_shape)))
        # Persisted so that a checkpoint carries whether the prototypes were ever set.
        self.register_buffer("initialized", torch.tensor(False))

    @property
    def weight(self) -> Tensor:
        return self._weight

    @property
    def z_shape(self) -> tuple[int, ...] | None:
        return self._image_shape

    @property
    def data_initialized(self) -> bool:
        # The buffer, not a Python flag: a checkpoint restores it with the trained prototypes.
        return bool(self.initialized)

    def forward(self, y: Tensor) -> Tensor:
        if not bool(self.initialized):
            raise ConfigurationError(
                "PrototypeEmbedding was never initialised from training data. Train with `fit` (which "
                "initialises it from the training split) or load a checkpoint with --ckpt_path."
            )
        return super().forward(y)

    @torch.no_grad()
    def initialize_from_data(self, images: Tensor, labels: Tensor) -> None:
        """Set each row to its class prototype. images: (N, C, H, W) normalised; labels: (N,)."""
        assert images.shape[1:] == self._image_shape, (
            f"images of shape {tuple(images.shape[1:])} do not match the embedding's {self._image_shape}"
        )
        flat = images.reshape(images.shape[0], -1).float()
        for c in range(self.num_classes):
            members = flat[labels == c]
            if self.max_images_per_class is not None:
                members = members[: self.max_images_per_class]
            if members.shape[0] == 0:
                raise ConfigurationError(f"PrototypeEmbedding: the training split has no image of class {c}.")
            self._weight[c] = members[medoid_index(members)].to(self._weight)
        self.initialized.fill_(True)


def medoid_index(points: Tensor, chunk_size: int = 1024) -> int:
    """Index of the row of ``points`` (n, D) with the smallest median distance to the *other* rows.

    The row's distance to itself (zero) is excluded: of the n - 1 remaining distances the lower median is
    taken, as ``torch.median`` does.
    """
    n = points.shape[0]
    if n <= 2:
        return 0
    # Sorted distances of a row start with its own 0; the lower median of the other n-1 is the
    # (1 + (n-2)//2)-th (0-based) order statistic, i.e. kthvalue k = 2 + (n-2)//2.
    k = 2 + (n - 2) // 2
    medians = torch.cat(
        [torch.cdist(points[i : i + chunk_size], points).kthvalue(k, dim=1).values for i in range(0, n, chunk_size)]
    )
    return int(medians.argmin())

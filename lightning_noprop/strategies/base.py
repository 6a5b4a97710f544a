"""The strategy interface: what every local-learning method implements.

A strategy owns the maths: it builds the blocks, returns one local loss per block for a batch, and
predicts. The LightningModule owns the mechanics: one optimizer per block (plus one for the shared
parameters), backward, stepping, clipping, logging. A strategy never touches an optimizer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, ContextManager, Literal

from torch import Tensor, nn

from lightning_noprop.errors import ConfigurationError
from lightning_noprop.nn.embeddings import ClassEmbedding, OneHotEmbedding
from lightning_noprop.nn.heads import Head, SoftmaxHead

if TYPE_CHECKING:
    from lightning_noprop.execution.streams import BlockStreams


@dataclass
class BlockLoss:
    """The local loss of one block for one batch.

    Attributes:
        block: index of the block (and of its optimizer) that this loss trains, in [0, num_local_losses).
        loss: scalar tensor to back-propagate.
        terms: detached scalar parts of the loss, for logging (e.g. ``{"ce": ..., "kl": ...}``).
        logits: detached (B, m) class scores of this block's own classifier, when it has one (BWBPF); the module
            logs their accuracy as ``<stage>/block_<i>/acc``.
        output: the block's detached output, the next block's input, when blocks form a chain (BWBPF); under
            ``block_parallel`` it is what one rank sends to the next.
    """

    block: int
    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    logits: Tensor | None = None
    output: Tensor | None = None


@dataclass
class Prediction:
    """A strategy's prediction for a batch of B images.

    Attributes:
        logits: (B, m) class scores; ``argmax`` is the predicted class.
        z: (B, d) the final label-space state (z_T, z_1) for embedding-based strategies, else None.
    """

    logits: Tensor
    z: Tensor | None = None


class Strategy(nn.Module, ABC):
    """A local-learning method: the maths of its blocks' losses and of its prediction.

    A local-learning method. Subclasses take only hyperparameters in ``__init__`` (so YAML can choose
    them with ``class_path``) and create their layers in ``_build`` once the data's shape is known."""

    #: ``__init__`` arguments that change how the strategy runs or reads out, not what it learns: a checkpoint
    #: may be evaluated or resumed with other values (every other argument must match the checkpoint's).
    execution_options: ClassVar[tuple[str, ...]] = ()
    #: The names of ``BlockLoss.terms`` (logged as ``<stage>/<term>``, and exchanged under ``block_parallel``).
    loss_terms: ClassVar[tuple[str, ...]] = ()
    #: The methods that compute a block's training loss from modules and tensors alone (no seeding, no host reads,
    #: no data-dependent Python control flow): the module's ``capture_step`` compiles each into one graph. Empty: the
    #: strategy's training step cannot be captured (the module refuses the option).
    capture_units: ClassVar[tuple[str, ...]] = ()
    #: Whether inference is a sampler: many small steps of one network (NoProp-CT/FM), where replaying the whole call
    #: as one CUDA graph pays by default (the module's ``sampler_cuda_graph``).
    sampler_inference: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.num_classes: int | None = None
        self.image_shape: tuple[int, int, int] | None = None
        # Set by the module: the random streams that block i's training draws come from (see ``random_stream``).
        self.streams: BlockStreams | None = None

    def random_stream(self, block: int) -> ContextManager[None]:
        """Wrap everything random that local loss ``block`` draws in training (noise samples, dropout): inside, the
        draws depend only on the run's seed, the block and the batch, not on where or beside what the block runs."""
        return nullcontext() if self.streams is None else self.streams.stream(block)

    @property
    def block_dependency(self) -> Literal["independent", "chain"] | None:
        """How the local losses depend on each other, for ``--trainer.strategy block_parallel``: "independent" (each
        block trains on x and y alone: NoProp-DT), "chain" (block k trains on block k - 1's detached output, so
        ranks form a pipeline: BWBPF), or None (one network, or gradients that cross blocks: not splittable)."""
        return None

    def modules_of_block(self, block: int) -> list[nn.Module]:
        """The modules whose parameters and buffers local loss ``block`` alone trains and updates (what its owner
        broadcasts under ``block_parallel``); strategies with a ``block_dependency`` implement it."""
        raise NotImplementedError(f"{type(self).__name__} does not split into blocks that train apart.")

    def chain_losses(self, h: Tensor, y: Tensor, first: int, blocks: Sequence[int]) -> Iterator[BlockLoss]:
        """For a "chain" strategy: ``local_losses`` starting at block ``first`` with its input ``h`` (the output of
        block ``first - 1``, or the images when ``first`` is 0); each BlockLoss carries its detached ``output``."""
        raise NotImplementedError(f"{type(self).__name__} is not a chain of blocks.")

    def build(self, num_classes: int, image_shape: tuple[int, int, int]) -> None:
        """Create every layer for ``num_classes`` classes and images of shape (C, H, W)."""
        if self.num_classes is not None:
            raise RuntimeError(f"{type(self).__name__} is already built; use a fresh instance per model.")
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3:
            raise ConfigurationError(f"image_shape must be (C, H, W), got {image_shape}.")
        self.num_classes, self.image_shape = int(num_classes), image_shape
        self._build(self.num_classes, image_shape)

    @abstractmethod
    def _build(self, num_classes: int, image_shape: tuple[int, int, int]) -> None: ...

    @property
    @abstractmethod
    def num_local_losses(self) -> int:
        """How many independent local losses (and so block optimizers) the method has."""

    @abstractmethod
    def block_parameters(self, block: int) -> list[nn.Parameter]:
        """The parameters trained by local loss ``block`` alone."""

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters trained by every local loss (head, learned embedding); may be empty."""
        return []

    @abstractmethod
    def block_modules(self) -> list[nn.Module]:
        """The networks that do the heavy work, each called as a unit (the module's ``compile_blocks`` compiles
        each one separately, so a graph never spans two blocks)."""

    @abstractmethod
    def local_losses(self, x: Tensor, y: Tensor, blocks: Sequence[int]) -> Iterator[BlockLoss]:
        """Yield the local loss of each block in ``blocks``, in order, for images x (B, C, H, W), labels y (B,).

        A generator, so the module can back-propagate and step each block before the next is computed
        (``backward_mode="per_block"``) or collect them all for one backward (``"joint"``). The two must
        give the same parameter updates: a loss may not depend on the parameters of another block.
        """

    @abstractmethod
    def predict(self, x: Tensor, num_steps: int | None = None) -> Prediction:
        """Class scores for images x (B, C, H, W).

        ``num_steps`` shortens inference: NoProp-DT and the backprop chain stop after that many blocks (the
        "anytime" prediction), NoProp-CT/FM integrate on a coarser grid. None runs the full inference.
        """

    @property
    def max_inference_steps(self) -> int | None:
        """The largest ``num_steps`` that ``predict`` takes: a block chain's number of blocks (NoProp-DT, backprop,
        BWBPF); None where any N >= 1 works (CT/FM's sampler grid) or it does not apply (the plain CNN)."""
        return getattr(self, "num_blocks", None)

    def check_inference_steps(self, num_steps: int | None, option: str) -> None:
        """Raise ``ConfigurationError`` unless ``predict`` takes ``num_steps`` (None: the full inference), naming
        ``option``, the setting that gives it."""
        limit = self.max_inference_steps
        if num_steps is not None and num_steps < 1:
            raise ConfigurationError(f"{option} must be >= 1 or None, got {num_steps}.")
        if num_steps is not None and limit is not None and num_steps > limit:
            raise ConfigurationError(f"{option} must be <= {limit}, the blocks of {type(self).__name__}, got {num_steps}.")

    @property
    def capture_graphs(self) -> int:
        """How many differently shaped modules the ``capture_units`` run (one graph each): 1 where every block has
        the same structure (NoProp-DT) or there is one network."""
        return 1

    def capture_refusal(self) -> str | None:
        """Why the module's ``capture_step`` cannot compile this strategy as configured, and what to change; None
        when it can (the strategy has ``capture_units`` and nothing in them breaks a compiled backward)."""
        return None

    @property
    def requires_data_init(self) -> bool:
        """True when ``initialize_from_data`` must see the training split before training starts."""
        return False

    @property
    def requires_joint_backward(self) -> bool:
        """True when a local loss depends on other blocks' parameters, so only ``backward_mode="joint"`` with
        every block trained on every batch computes its gradients correctly."""
        return False

    @property
    def data_initialized(self) -> bool:
        """False while a ``requires_data_init`` strategy has not been initialised from data yet (nor restored
        from a checkpoint); the module then initialises it at the start of fit."""
        return True

    def initialize_from_data(self, images: Tensor, labels: Tensor) -> None:
        """Data-dependent initialisation from the training split (images (N, C, H, W) normalised, labels
        (N,)), called at the start of fit when ``requires_data_init`` and not yet ``data_initialized``."""

    def describe(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be loaded into this model (compared on load)."""
        return {
            "strategy": type(self).__name__,
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape) if self.image_shape else None,
            "num_local_losses": self.num_local_losses,
        }


class EmbeddingStrategy(Strategy, ABC):
    """Base of the methods that denoise a class embedding (NoProp-DT/CT/FM and their baseline).

    Base of the methods that denoise a class embedding (NoProp-DT/CT/FM and their backprop baseline):
    holds the class embedding W_Embed and the output head, the parameters every block shares.

    Args:
        embedding: class embedding; None means one-hot (the paper's default).
        head: output head; None means the softmax head.
    """

    def __init__(self, embedding: ClassEmbedding | None = None, head: Head | None = None) -> None:
        super().__init__()
        self.embedding = embedding if embedding is not None else OneHotEmbedding()
        self.head = head if head is not None else SoftmaxHead()

    def _build(self, num_classes: int, image_shape: tuple[int, int, int]) -> None:
        self.embedding.build(num_classes, image_shape)
        self.head.build(num_classes, self.embedding.dim)
        self._build_blocks(num_classes, image_shape)

    @abstractmethod
    def _build_blocks(self, num_classes: int, image_shape: tuple[int, int, int]) -> None: ...

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters()) + (list(self.embedding.parameters()) if self.embedding.learned else [])

    @property
    def requires_data_init(self) -> bool:
        return self.embedding.requires_data_init

    @property
    def data_initialized(self) -> bool:
        return self.embedding.data_initialized

    def initialize_from_data(self, images: Tensor, labels: Tensor) -> None:
        self.embedding.initialize_from_data(images, labels)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "embedding": type(self.embedding).__name__,
            "embedding_dim": self.embedding.dim,
            "head": type(self.head).__name__,
        }


def check_parameter_partition(strategy: Strategy, groups: list[list[nn.Parameter]]) -> None:
    """Every trainable parameter must belong to exactly one optimizer group (a strategy bug otherwise)."""
    seen: dict[int, int] = {}
    for group in groups:
        for p in group:
            seen[id(p)] = seen.get(id(p), 0) + 1
    trainable = [name for name, p in strategy.named_parameters() if p.requires_grad]
    missing = [name for name, p in strategy.named_parameters() if p.requires_grad and id(p) not in seen]
    repeated = [name for name, p in strategy.named_parameters() if seen.get(id(p), 0) > 1]
    if missing or repeated:
        raise RuntimeError(
            f"{type(strategy).__name__}: its parameter groups must cover each of its {len(trainable)} trainable "
            f"parameters exactly once; missing {missing[:5]}, repeated {repeated[:5]}."
        )

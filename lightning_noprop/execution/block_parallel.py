"""``--trainer.strategy block_parallel``: each process trains its own share of the blocks, at the same time.

Built on Lightning's DDP machinery (its launchers, cluster environments such as torchrun and SLURM, and the
torch.distributed process group: gloo on CPU, NCCL on GPU); the difference from DDP is what crosses processes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import _sync_module_states
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from lightning_noprop.errors import ConfigurationError

_ONE_NETWORK = "one network whose parameters every step trains together"
# What a pipeline message's header can name: its dtype (an index here), its number of dimensions and its shape.
_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.int32]
_HEADER = 8


def block_owners(num_blocks: int, world_size: int) -> list[int]:
    """The rank that owns each block: contiguous, balanced shares (10 blocks on 3 ranks: 4, 3, 3)."""
    base, extra = divmod(num_blocks, world_size)
    return [rank for rank in range(world_size) for _ in range(base + (rank < extra))]


def check_block_parallel(module: Any, world_size: int, trainer: Any = None) -> None:
    """Refuse, saying what to use instead, a model or setting that ``block_parallel`` cannot train exactly."""
    strategy = module.strategy
    name = type(strategy).__name__
    dependency = module.executor.block_dependency(strategy)
    if dependency is None:
        if module.executor.batches_blocks:
            reason = "block_execution vmap draws every block's dropout masks in one call; set --model.block_execution loop"
        elif getattr(strategy, "detach_between_blocks", True) is False:
            reason = ("detach_between_blocks: false sends gradients back through earlier blocks; set it to true (the "
                      "paper's BWBPF) or use --trainer.strategy ddp")  # fmt: skip
        else:
            reason = f"{name} is {_ONE_NETWORK}; use --trainer.strategy ddp to split the data instead"
        raise ConfigurationError(f"--trainer.strategy block_parallel cannot train {name}: {reason}.")
    blocks = strategy.num_local_losses
    if world_size > blocks:
        raise ConfigurationError(
            f"--trainer.strategy block_parallel with {world_size} processes needs at least as many blocks, and "
            f"{name} has {blocks}: use --trainer.devices {blocks} (x num_nodes) or fewer."
        )
    if dependency == "chain" and module.hparams.block_order != "every_batch":
        raise ConfigurationError(
            "--trainer.strategy block_parallel pipelines a chain of blocks across processes, which needs every block "
            "on every batch: set --model.block_order every_batch."
        )
    if dependency == "chain" and trainer is not None and getattr(trainer, "val_check_interval", None) != 1.0:
        raise ConfigurationError(
            "--trainer.strategy block_parallel drains its pipeline of blocks at the end of each epoch, so it validates "
            "only there: drop --trainer.val_check_interval (or set it to 1.0; a time-based one neither)."
        )


class BlockParallelStrategy(DDPStrategy):
    """One process per device; the blocks of the model are shared out among the processes (``block_owners``).

    Every process sees the same batches in the same order as one process would (the training sampler is not split)
    and trains only the blocks it owns, with their optimizers. What crosses processes in training:

    - "independent" blocks (NoProp-DT): one all-reduce per batch of the shared parameters' gradients (head, a
      learned W_Embed, a learned schedule), packed with the per-block loss values that the logs show; the blocks
      themselves are never all-reduced.
    - a "chain" of blocks (BWBPF): each process receives the previous process's detached activations and labels,
      trains its blocks and sends its output on. While rank k trains on batch i, rank k + 1 trains on batch i - 1,
      a lag of one batch per rank, drained at the end of each epoch; no gradient crosses a process, so each block's
      updates are those of one process (``backward_mode`` per_block or joint).

    Before validation, test, predict and every checkpoint the owners broadcast their blocks (parameters and
    buffers) and their optimizers' states, so a checkpoint is an ordinary full checkpoint: it tests in one process
    and resumes on any number of them. Takes DDPStrategy's arguments (``process_group_backend``, ``timeout``,
    ``start_method``, ...).
    """

    strategy_name = "block_parallel"

    def __init__(self, **kwargs: Any) -> None:
        for option in ("find_unused_parameters", "static_graph", "gradient_as_bucket_view"):
            if option in kwargs:
                raise ConfigurationError(f"block_parallel does not wrap the model in DDP: drop {option}.")
        super().__init__(**kwargs)
        self._owners: list[int] = []

    # ------------------------------------------------------------------------------------------- roles
    @property
    def owners(self) -> list[int]:
        """``owners[b]``: the global rank that trains block b."""
        if not self._owners:
            self._owners = block_owners(self.lightning_module.strategy.num_local_losses, self.world_size)
        return self._owners

    def owned(self, blocks: list[int]) -> list[int]:
        """The blocks of ``blocks`` that this process trains."""
        return [b for b in blocks if self.owners[b] == self.global_rank]

    def first_block(self, rank: int | None = None) -> int:
        """The first block of ``rank`` (default: this process)."""
        return self.owners.index(self.global_rank if rank is None else rank)

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        # Every process needs every batch: no sampler splits the data between them.
        return {"num_replicas": 1, "rank": 0}

    def setup(self, trainer: Any) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            check_block_parallel(self.lightning_module, self.world_size, trainer)
        super().setup(trainer)

    def configure_ddp(self) -> None:
        # No DistributedDataParallel wrapper (it would all-reduce every block's gradient): start from one set of
        # weights, then the module reduces only the shared gradients.
        _sync_module_states(self.model)

    # ------------------------------------------------------------------------------- communication
    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over the processes, in place."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def send(self, tensors: list[Tensor], rank: int) -> list[Any]:
        """Send ``tensors`` to ``rank`` without waiting, each after a header of its dtype and shape; returns the
        pending works (wait on them before the tensors change)."""
        works = []
        for tensor in tensors:
            header = [_DTYPES.index(tensor.dtype), tensor.dim(), *tensor.shape]
            header = torch.tensor(header + [0] * (_HEADER - len(header)), dtype=torch.int64, device=tensor.device)
            works.append(dist.isend(header, rank))
            works.append(dist.isend(tensor.contiguous(), rank))
        return works

    def receive(self, rank: int, count: int = 2) -> list[Tensor]:
        """Receive the ``count`` tensors that ``send`` sent from ``rank``, in order."""
        tensors = []
        for _ in range(count):
            header = torch.empty(_HEADER, dtype=torch.int64, device=self.root_device)
            dist.recv(header, rank)
            dtype, ndim, *shape = header.tolist()
            tensor = torch.empty(shape[:ndim], dtype=_DTYPES[dtype], device=self.root_device)
            dist.recv(tensor, rank)
            tensors.append(tensor)
        return tensors

    def sync_blocks(self) -> None:
        """Each owner broadcasts its blocks' parameters and buffers, so every process holds the whole model."""
        if self.world_size == 1:
            return
        strategy = self.lightning_module.strategy
        for block, owner in enumerate(self.owners):
            tensors = [t for m in strategy.modules_of_block(block) for t in (*m.parameters(), *m.buffers())]
            for dtype in dict.fromkeys(t.dtype for t in tensors):  # one flat buffer per dtype (int BatchNorm counts)
                group = [t for t in tensors if t.dtype == dtype]
                flat = torch.cat([t.detach().flatten() for t in group])
                dist.broadcast(flat, owner)
                with torch.no_grad():
                    for t, value in zip(group, flat.split([t.numel() for t in group])):
                        t.copy_(value.view_as(t))

    # --------------------------------------------------------------- whole-model points: eval, checkpoints
    def on_validation_start(self) -> None:
        self.sync_blocks()
        super().on_validation_start()

    def on_test_start(self) -> None:
        self.sync_blocks()
        super().on_test_start()

    def on_predict_start(self) -> None:
        self.sync_blocks()
        super().on_predict_start()

    def lightning_module_state_dict(self) -> dict[str, Any]:
        self.sync_blocks()
        return super().lightning_module_state_dict()

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        """The state of ``optimizer`` as its block's owner holds it (the shared optimizer's is the same everywhere)."""
        state = super().optimizer_state(optimizer)
        index = next(i for i, o in enumerate(self.optimizers) if o is optimizer)
        if self.world_size == 1 or index >= len(self.owners):
            return state
        box = [state]
        dist.broadcast_object_list(box, src=self.owners[index])
        return box[0]

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        strategy_registry.register(cls.strategy_name, cls, description="Block-parallel local learning (popen)")
        strategy_registry.register(f"{cls.strategy_name}_spawn", cls, description="Block-parallel local learning "
                                   "(spawn)", start_method="spawn")  # fmt: skip


if BlockParallelStrategy.strategy_name not in StrategyRegistry:
    BlockParallelStrategy.register_strategies(StrategyRegistry)

"""How a training step is executed: per-block random streams, and blocks trained in parallel across processes."""

from lightning_noprop.execution.block_parallel import BlockParallelStrategy, block_owners
from lightning_noprop.execution.streams import BlockStreams

__all__ = ["BlockParallelStrategy", "BlockStreams", "block_owners"]

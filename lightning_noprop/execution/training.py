"""One training batch: forward, backward and step of every active block, in one process or block-parallel."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from lightning_noprop.errors import NonFiniteLossError
from lightning_noprop.execution.streams import BlockStreams
from lightning_noprop.strategies.base import BlockLoss

#: What a summary holds of one block on one batch: its loss, the named parts of it, and its own classifier's accuracy.
Summary = dict[int, dict[str, Tensor]]


def summarize(results: Iterable[BlockLoss], y: Tensor) -> Summary:
    """Detached per-block values for logging: ``{block: {"loss", *terms, ["acc"]}}`` (the last result per block)."""
    summary: Summary = {}
    for r in results:
        values = {"loss": r.loss.detach(), **r.terms}
        if r.logits is not None:  # a block with its own classifier: its accuracy over the batch
            values["acc"] = (r.logits.argmax(-1) == y).float().mean()
        summary[r.block] = values
    return summary


class BatchTrainer:
    """Trains a ``LocalLearningModule``'s blocks on one batch; the module owns it and calls ``train`` per batch.

    In one process every active block trains, with one summed backward (``backward_mode="joint"``) or one backward
    and step per block (``"per_block"``). Under ``BlockParallelStrategy`` this process trains only its own blocks:
    independent blocks all-reduce the shared gradients (packed with the loss values for the logs), a chain receives
    its input from the previous rank and sends its output on, one batch behind per rank. Each block draws its
    randomness from its own stream (``BlockStreams``), seeded by the run's seed, the block and the batch.
    """

    def __init__(self, module: Any, run_seed: int) -> None:
        self.module = module
        self.streams = BlockStreams(run_seed)
        module.strategy.streams = self.streams
        self.batches_trained = 0  # batches trained before the current one (checkpointed: it seeds the streams)
        self._pending_sends: list[Any] = []
        self._stepped: set[int] = set()  # the block optimizers stepped in the current training batch
        self.skipped_updates = 0  # block updates skipped for a non-finite loss (nonfinite_loss "skip") this epoch

    # ------------------------------------------------------------------------------------------ batch
    def train(self, x: Tensor, y: Tensor, batch_idx: int) -> Summary:
        """Train on images x (B, C, H, W) and labels y (B,); returns the summary of the blocks trained."""
        module = self.module
        parallel = module.block_parallel
        if parallel is None:
            blocks = module.active_blocks()
            summary = (module.executor.step_graph.run(self, x, y, blocks) if module.executor.graphs_step(module, x)
                       else self.train_all(x, y, blocks, self.batches_trained))  # fmt: skip
            self.batches_trained += 1
            self._stepped.clear()
            return summary
        optimizers = module._optimizers()
        shared = self._shared_optimizer()
        if shared is not None:
            shared.zero_grad()
        if module.executor.block_dependency(module.strategy) == "chain":
            summary = self._train_pipeline(parallel, x, y, batch_idx)
        else:
            blocks = parallel.owned(module.active_blocks())
            summary = summarize(self.train_blocks(x, y, blocks, self.batches_trained, defer_errors=True), y)
        summary = self._exchange(parallel, summary, module.strategy.shared_parameters() if shared else [])
        # Every process counts the optimizer steps one process would make on this batch, so that global_step,
        # max_steps and checkpoint names agree: the other ranks' blocks, and a pipeline's own blocks in its
        # bubble, step with no gradient (a no-op).
        for block in module.active_blocks():
            if block not in self._stepped:
                optimizers[block].step()
        if shared is not None:
            shared.step()
        self.batches_trained += 1
        self._stepped.clear()
        return summary

    def _shared_optimizer(self) -> Any:
        """The optimizer of the shared parameters (head, embedding), or None when the strategy has none."""
        optimizers, num_blocks = self.module._optimizers(), self.module.strategy.num_local_losses
        return optimizers[num_blocks] if len(optimizers) > num_blocks else None

    def optimizers_stepped(self, blocks: list[int]) -> list:
        """The optimizers one process steps on a batch that trains ``blocks``: theirs and the shared one."""
        optimizers, shared = self.module._optimizers(), self._shared_optimizer()
        return [optimizers[b] for b in blocks] + ([shared] if shared is not None else [])

    def train_all(self, x: Tensor, y: Tensor, blocks: list[int], batch: int) -> Summary:
        """One process's step on batch number ``batch``: every block of ``blocks`` forward, backward and step, then
        the shared parameters' step. (What ``StepGraph`` captures under capture_step on a GPU.)"""
        shared = self._shared_optimizer()
        if shared is not None:
            shared.zero_grad()
        summary = summarize(self.train_blocks(x, y, blocks, batch), y)
        if shared is not None:
            shared.step()
        return summary

    def _step(self, block: int) -> None:
        """Step block ``block``'s optimizer; a second step in one training batch (a pipeline draining its last
        batches) makes the same update through the bare optimizer, so Lightning counts one step a batch."""
        optimizer = self.module._optimizers()[block]
        if block not in self._stepped:
            optimizer.step()
            self._stepped.add(block)
            return
        self.module.on_before_optimizer_step(optimizer.optimizer)  # the clipping a counted step runs
        optimizer.optimizer.step()

    def train_blocks(self, h: Tensor, y: Tensor, blocks: list[int], batch: int, first: int | None = None,
                     defer_errors: bool = False) -> list[BlockLoss]:  # fmt: skip
        """Forward, backward and step each block of ``blocks`` on batch number ``batch``. ``h`` is the images, or
        for a chain started at block ``first`` that block's input. Returns the results with detached losses."""
        if not blocks:
            return []
        module, strategy = self.module, self.module.strategy
        optimizers = module._optimizers()
        with self.streams.training_batch(batch):
            losses = (module.executor.local_losses(strategy, h, y, blocks) if first is None
                      else strategy.chain_losses(h, y, first, blocks))  # fmt: skip
            if module.executor.backward_mode == "joint":
                results = list(losses)
                # One device sync per batch; inspect the blocks one by one only when something is off. A captured step
                # checks on the device every log_every_n_steps batches instead (metric_logging.log_window).
                all_finite = not module.executor.checks_every_batch or bool(
                    torch.isfinite(torch.stack([r.loss.detach() for r in results])).all())
                finite = results if all_finite else [r for r in results if self._is_finite(r, defer_errors)]
                for r in finite:
                    optimizers[r.block].zero_grad()
                if finite:
                    module.manual_backward(torch.stack([r.loss for r in finite]).sum())
                for r in finite:
                    self._step(r.block)
                return [BlockLoss(r.block, r.loss.detach(), r.terms, r.logits, r.output) for r in results]
            results = []
            for r in losses:
                if self._is_finite(r, defer_errors):
                    optimizers[r.block].zero_grad()
                    module.manual_backward(r.loss)
                    self._step(r.block)
                # Keep only the value: holding the loss would keep its graph alive past the next block.
                results.append(BlockLoss(r.block, r.loss.detach(), r.terms, r.logits, r.output))
            return results

    def _is_finite(self, result: BlockLoss, defer_error: bool = False) -> bool:
        if not self.module.executor.checks_every_batch or bool(torch.isfinite(result.loss)):
            return True
        if self.module.hparams.nonfinite_loss == "error":
            if defer_error:  # raised on every rank once the loss values are exchanged
                return False
            raise self.nonfinite_error(result.block, result.loss, result.terms)
        self.skipped_updates += 1
        return False

    def nonfinite_error(self, block: int, loss: Tensor, terms: dict[str, Tensor]) -> NonFiniteLossError:
        parts = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
        return NonFiniteLossError(
            f"Non-finite loss {float(loss)} for block {block} at epoch {self.module.current_epoch}, batch "
            f"{self.batches_trained} ({parts}). Lower the learning rate, set model.gradient_clip_val, use precision "
            "32-true, or set model.nonfinite_loss=skip."
        )

    # ---------------------------------------------------------------------------------- block-parallel
    def _train_pipeline(self, parallel: Any, x: Tensor, y: Tensor, batch_idx: int) -> Summary:
        """Rank k trains its blocks on the epoch's batch ``batch_idx - k`` (received from rank k - 1 and sent on to
        rank k + 1), and on the epoch's last batch also on the k batches still in flight."""
        rank, world = parallel.global_rank, parallel.world_size
        blocks = parallel.owned(list(range(self.module.strategy.num_local_losses)))
        epoch_start = self.batches_trained - batch_idx
        todo = [batch_idx - rank] + (list(range(batch_idx - rank + 1, batch_idx + 1)) if self._last_batch(batch_idx) else [])
        summary: Summary = {}
        for index in (i for i in todo if i >= 0):
            h, labels = (x, y) if rank == 0 else parallel.receive(rank - 1)
            trained = self.train_blocks(h, labels, blocks, epoch_start + index, first=blocks[0], defer_errors=True)
            if rank < world - 1:
                self._wait_for_sends()
                message = [trained[-1].output, labels]  # kept alive until the sends complete
                self._pending_sends = [*parallel.send(message, rank + 1), *message]
            summary.update(summarize(trained, labels))
        if self._last_batch(batch_idx):
            self._wait_for_sends()
        return summary

    def _last_batch(self, batch_idx: int) -> bool:
        """True when fit trains no further batch of this epoch after ``batch_idx`` (the epoch's end or max_steps)."""
        trainer = self.module.trainer
        max_steps = trainer.max_steps
        ends_fit = max_steps is not None and max_steps >= 0 and trainer.global_step + self.module.num_optimizers >= max_steps
        return ends_fit or batch_idx + 1 >= trainer.num_training_batches

    def _wait_for_sends(self) -> None:
        for work in self._pending_sends:
            if not isinstance(work, Tensor):
                work.wait()
        self._pending_sends = []

    def _exchange(self, parallel: Any, summary: Summary, shared: list[Tensor]) -> Summary:
        """One all-reduce (sum) of the shared gradients and of every block's loss values: each process then holds
        the one-process gradient of the shared parameters and the summary of all blocks."""
        strategy = self.module.strategy
        fields = ["loss", *strategy.loss_terms, "acc"]
        dtype = shared[0].dtype if shared else torch.float32  # the parameters' own (float64 under 64-true)
        values = torch.zeros(strategy.num_local_losses, len(fields), 2, dtype=dtype, device=parallel.root_device)
        for block, entries in summary.items():
            for j, name in enumerate(fields):
                if name in entries:
                    values[block, j, 0], values[block, j, 1] = entries[name], 1.0
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in shared]
        flat = torch.cat([g.flatten().to(dtype) for g in grads] + [values.flatten()])
        parallel.all_reduce_sum(flat)
        offset = 0
        for p, g in zip(shared, grads):
            p.grad = flat[offset : offset + g.numel()].view_as(g).to(g.dtype)
            offset += g.numel()
        values = flat[offset:].view_as(values)
        merged: Summary = {}
        for block in range(strategy.num_local_losses):
            entries = {name: values[block, j, 0] for j, name in enumerate(fields) if values[block, j, 1] > 0}
            if entries:
                merged[block] = entries
        if self.module.hparams.nonfinite_loss == "error":
            for block, entries in merged.items():
                if not torch.isfinite(entries["loss"]):
                    raise self.nonfinite_error(block, entries["loss"], {k: v for k, v in entries.items() if k != "loss"})
        return merged

"""benchmarks/step_overhead.py: the kernel floor times the convolutions each block really runs, and the script's table."""

import subprocess
import sys
from pathlib import Path

import torch

from lightning_noprop.module import LocalLearningModule
from lightning_noprop.strategies import NoPropDT

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from step_overhead import HostOnly, conv_inputs, kernel_floor


def _module(**options) -> LocalLearningModule:
    return LocalLearningModule(NoPropDT(num_blocks=2, width=8), num_classes=10, image_shape=(1, 4, 4), **options)


def test_the_floor_runs_each_convolution_on_the_input_it_sees_in_training():
    module = _module()
    block = module.strategy.blocks[0]
    recorded = conv_inputs(block, torch.randn(16, 1, 4, 4))
    convs = [m for m in block.image_encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [conv for conv, _, _ in recorded] == convs
    # conv 1 on the images; conv 2 after a 2x2 max-pool; conv 3 at the same size (the paper's encoder, Fig. 6)
    assert [tuple(inp.shape) for _, inp, _ in recorded] == [(16, 1, 4, 4), (16, 32, 2, 2), (16, 64, 2, 2)]
    assert [tuple(grad.shape) for _, _, grad in recorded] == [(16, 32, 4, 4), (16, 64, 2, 2), (16, 128, 2, 2)]
    assert all(inp.requires_grad for _, inp, _ in recorded)


def test_the_floor_steps_every_block_and_reports_its_time():
    module = _module()
    convs = [m for b in module.strategy.blocks for m in b.image_encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    before = [conv.weight.detach().clone() for conv in convs]
    result = kernel_floor(module, torch.randn(16, 1, 4, 4), batches=2, warmup=1)
    assert result["batches"] == 2 and result["ms_per_batch"] > 0
    # every block's convolutions were run backward (their gradients accumulate) and stepped by its optimizer
    assert all(conv.weight.grad.abs().sum() > 0 for conv in convs)
    assert all(not torch.equal(conv.weight, w) for conv, w in zip(convs, before))


class _Counting(HostOnly):
    def __init__(self) -> None:
        self.captures = self.replays = 0
        self.after_capture = None

    def capture(self, step, states):
        self.captures += 1
        replay = super().capture(step, states)
        self.after_capture = [p.detach().clone() for p in self.module.parameters()]

        def counted():
            self.replays += 1
            return replay()

        return counted


def test_the_replay_host_cases_go_through_the_step_graph_and_skip_the_arithmetic():
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader, TensorDataset

    module = _module(capture_step=True, compile_options={"backend": "eager"})
    backend = module.executor.step_graph.backend = _Counting()
    backend.module = module
    data = TensorDataset(torch.randn(16 * 5, 1, 4, 4), torch.arange(16 * 5) % 10)
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)  # fmt: skip
    trainer.fit(module, DataLoader(data, batch_size=16))
    # Batch 1 warms up, batch 2 is captured (the step runs once, on the host) and replayed, batches 3-5 are replayed.
    assert (backend.captures, backend.replays) == (1, 4)
    assert trainer.global_step == 5 * module.num_optimizers, "Lightning counts the replayed steps"
    for after, now in zip(backend.after_capture, module.parameters()):
        assert torch.equal(after, now), "a stubbed replay launches nothing: no arithmetic is timed"


def test_the_script_prints_the_floor_against_eager():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_overhead.py"), "--cases", "NoProp-DT eager",
                          "kernel floor", "--batches", "2", "--warmup", "1", "--rounds", "1"],
                         capture_output=True, text=True, check=True, cwd=ROOT)  # fmt: skip
    lines = out.stdout.strip().splitlines()
    assert lines[-1].startswith("kernel floor/eager: ")
    assert float(lines[-1].split(": ")[1]) > 0
    assert any(line.startswith("| kernel floor |") for line in lines)

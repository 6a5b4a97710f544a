"""block_parallel on 2 CPU ranks (gloo) against one process: the same updates, only the shared gradients (or a
chain's activations) cross processes, and checkpoints move freely between 1 and 2 processes."""

import subprocess
import sys

import pytest
import torch

from lightning_noprop.execution import block_owners
from lightning_noprop.execution.block_parallel import check_block_parallel
from lightning_noprop.errors import ConfigurationError

from ..conftest import REPO
from .harness import build, launch, load, run_job

BATCHES = 7  # 102 training images (110 minus 8 for validation): 6 batches of 16 and a last one of 6


def assert_same_training_state(ours, theirs, atol=1e-6):
    """Parameters, buffers and every optimizer state agree, and so do the step counters and the streams' position.
    (Measured: bit for bit, float32, one thread a process; the tolerance allows for a sum of the shared gradient in
    another order.)"""
    assert ours["global_step"] == theirs["global_step"] and ours["epoch"] == theirs["epoch"]
    assert ours["state_dict"].keys() == theirs["state_dict"].keys()
    for key, value in ours["state_dict"].items():
        other = theirs["state_dict"][key]
        assert torch.allclose(value.double(), other.double(), atol=atol, rtol=1e-6), key
    assert len(ours["optimizer_states"]) == len(theirs["optimizer_states"])
    for i, (mine, other) in enumerate(zip(ours["optimizer_states"], theirs["optimizer_states"])):
        assert mine["state"].keys() == other["state"].keys(), f"optimizer {i}"
        for index, entries in mine["state"].items():
            for name, value in entries.items():
                assert torch.allclose(value.double(), other["state"][index][name].double(), atol=atol, rtol=1e-6), (
                    i, index, name)  # fmt: skip
    assert ours["lightning_noprop"]["streams"] == theirs["lightning_noprop"]["streams"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process and two ranks, each running: NoProp-DT for 2 epochs; NoProp-DT for 1 epoch, resumed by the other
    side to 2 epochs; BWBPF with 2 and 4 blocks for 1 epoch (per_block, and joint on the ranks), and stopped by
    max_steps in the middle of an epoch."""
    single, double = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("double")
    first = [{"name": "dt", "model": "dt", "epochs": 2}, {"name": "dt1", "model": "dt", "epochs": 1}]
    bwbpf = [{"name": "bwbpf2", "model": "bwbpf2", "epochs": 1}, {"name": "bwbpf4", "model": "bwbpf4", "epochs": 1},
             {"name": "bwbpf2_steps", "model": "bwbpf2", "epochs": 1, "max_steps": 6}]  # 3 batches: drained there
    for job in first + bwbpf:
        run_job(job, 1, single)
    resume = {"name": "dt_resumed", "model": "dt", "epochs": 2}
    launch(first + bwbpf + [{**resume, "resume": str(single / "dt1.ckpt")},
                            {"name": "bwbpf4_joint", "model": "bwbpf4", "epochs": 1, "backward_mode": "joint"}],
           2, double)  # fmt: skip
    run_job({**resume, "resume": str(double / "dt1.ckpt")}, 1, single)
    return single, double


def test_block_owners_are_contiguous_balanced_shares():
    assert block_owners(10, 2) == [0] * 5 + [1] * 5
    assert block_owners(10, 3) == [0] * 4 + [1] * 3 + [2] * 3
    assert block_owners(4, 4) == [0, 1, 2, 3]


def test_noprop_dt_on_two_ranks_equals_one_process(runs):
    single, double = runs
    assert_same_training_state(load(double, "dt"), load(single, "dt"))
    assert load(single, "dt")["global_step"] == 2 * BATCHES * 4  # 3 blocks + the shared optimizer, every batch


def test_noprop_dt_ranks_exchange_only_the_shared_gradients(runs):
    _, double = runs
    comm = torch.load(double / "dt.comm", weights_only=True)
    module, _ = build("dt")
    shared = sum(p.numel() for p in module.strategy.shared_parameters())  # head (8 -> 10) and W_Embed (10 x 8)
    assert shared == 170
    blocks_values = 3 * len(("loss", "ce", "kl", "denoise", "acc")) * 2  # each block's logged values, with a mask
    per_batch = {}
    for batch, name, size in comm["records"]:
        per_batch.setdefault(batch, []).append((name, size))
    assert sorted(per_batch) == list(range(2 * BATCHES))
    for calls in per_batch.values():  # one all-reduce a batch, no block parameter ever
        assert calls == [("all_reduce", 4 * (shared + blocks_values))]  # float32
    blocks = sum(p.numel() for p in module.strategy.parameters()) - shared
    assert blocks > 100 * shared  # what plain DDP would all-reduce on top, every batch


@pytest.mark.parametrize("name", ["bwbpf2", "bwbpf4", "bwbpf2_steps"])
def test_pipelined_bwbpf_on_two_ranks_equals_one_process(runs, name):
    single, double = runs
    assert_same_training_state(load(double, name), load(single, name), atol=1e-9)


def test_pipelined_bwbpf_joint_equals_per_block(runs):
    single, double = runs
    assert_same_training_state(load(double, "bwbpf4_joint"), load(single, "bwbpf4"), atol=1e-9)


def test_pipelined_bwbpf_sends_each_batch_once_per_boundary(runs):
    _, double = runs
    records = torch.load(double / "bwbpf2.comm", weights_only=True)["records"]
    sends = [size for _, name, size in records if name == "isend"]
    # Rank 0 sends, per batch, a header and the block's output, a header and the labels (rank 0's records only).
    assert len(sends) == 4 * BATCHES
    module, _ = build("bwbpf2")
    with torch.no_grad():
        per_image = module.strategy.blocks[0](torch.zeros(1, 3, 32, 32)).numel()
    assert sum(sends) == BATCHES * 2 * 8 * 8 + 102 * (4 * per_image + 8)  # headers of 8 int64, float32 out, int64 y
    assert not any(name == "all_reduce" and size > 4 * 2 * 3 * 2 for _, name, size in records)  # loss values only


def test_checkpoints_move_between_one_and_two_processes(runs):
    single, double = runs
    straight = load(single, "dt")
    assert_same_training_state(load(double, "dt_resumed"), straight)  # written by 1 process, resumed on 2
    assert_same_training_state(load(single, "dt_resumed"), straight)  # written by 2 ranks, resumed in 1
    from lightning.pytorch import Trainer

    module, data = build("dt")
    (metrics,) = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False).test(
        module, data, ckpt_path=str(double / "dt.ckpt"), verbose=False)  # fmt: skip
    assert 0.0 <= metrics["test/acc"] <= 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_block_parallel_with_one_nccl_rank_equals_the_plain_loop_on_a_gpu(tmp_path):
    """The NCCL path (two NCCL ranks cannot share one GPU, so N = 1): the same updates as the single-device loop."""
    for name, parallel in (("plain", False), ("nccl", True)):
        run_job({"name": name, "model": "dt", "epochs": 1, "accelerator": "cuda", "block_parallel": parallel}, 1,
                tmp_path)  # fmt: skip
    assert_same_training_state(load(tmp_path, "nccl"), load(tmp_path, "plain"))


@pytest.mark.parametrize(("strategy", "options", "message"), [
    ("noprop_ct", {}, "use --trainer.strategy ddp"),
    ("backprop", {}, "use --trainer.strategy ddp"),
    ("bwbpf", {"detach_between_blocks": False}, "detach_between_blocks"),
    ("dt vmap", {}, "--model.block_execution loop"),
    ("dt", {"num_blocks": 1}, "--trainer.devices 1"),
], ids=["ct", "backprop", "bwbpf-attached", "dt-vmap", "too-many-ranks"])  # fmt: skip
def test_what_cannot_train_block_parallel_is_refused(strategy, options, message):
    from lightning_noprop.strategies import BWBPF, Backprop, NoPropCT, NoPropDT
    from lightning_noprop.module import LocalLearningModule
    from lightning_noprop.nn import ResNet

    make = {"noprop_ct": lambda: NoPropCT(width=8), "backprop": lambda: Backprop(num_blocks=2, width=8),
            "bwbpf": lambda: BWBPF(ResNet(18, width=4), **options),
            "dt": lambda: NoPropDT(**{"num_blocks": 2, "width": 8, **options}),
            "dt vmap": lambda: NoPropDT(num_blocks=2, width=8)}  # fmt: skip
    module_options = {"backward_mode": "per_block"}
    if options.get("detach_between_blocks") is False or strategy == "dt vmap":
        module_options = {"backward_mode": "joint", "block_execution": "vmap" if strategy == "dt vmap" else "loop"}
    module = LocalLearningModule(make[strategy](), **module_options)
    with pytest.raises(ConfigurationError, match=message):
        check_block_parallel(module, world_size=2)


SMALL_DT = ["--model.strategy.init_args.num_blocks", "2", "--model.strategy.init_args.width", "16"]


@pytest.mark.parametrize(("config", "strategy", "extra"), [
    ("configs/noprop_dt.yaml", "block_parallel", SMALL_DT),
    ("configs/bwbpf.yaml", "block_parallel", ["--model.strategy.init_args.backbone.init_args.width", "4"]),
    ("configs/noprop_dt.yaml", "ddp", SMALL_DT),  # the logs average the processes' values (test_metric_logging.py)
], ids=["noprop_dt", "bwbpf", "noprop_dt_ddp"])  # fmt: skip
def test_the_cli_trains_block_parallel_on_two_cpu_processes(config, strategy, extra, tmp_path):
    command = [sys.executable, str(REPO / "main.py"), "fit", "--config", config, "--trainer.strategy", strategy,
               "--trainer.devices", "2", "--trainer.accelerator", "cpu", "--trainer.max_epochs", "1",
               "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1", "--data.synthetic", "true",
               "--data.synthetic_size", "80", "--data.val_size", "16", "--data.batch_size", "8",
               "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false", *extra]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sync_dist" not in result.stderr, "the values logged are the run's: no advice to sync them"
    assert "seamless cloud logging" not in result.stdout + result.stderr, "Lightning's advertisement (lightning_noise.py)"
    (last,) = tmp_path.rglob("last.ckpt")
    checkpoint = torch.load(last, weights_only=True)
    assert len(checkpoint["optimizer_states"]) == checkpoint["lightning_noprop"]["num_optimizers"]
    assert all(state["state"] for state in checkpoint["optimizer_states"])  # every block's optimizer has trained


def test_a_pipelined_chain_validates_only_at_an_epochs_end():
    import types

    from lightning_noprop.module import LocalLearningModule
    from lightning_noprop.nn import ResNet
    from lightning_noprop.strategies import BWBPF

    module = LocalLearningModule(BWBPF(ResNet(18, width=4)), backward_mode="per_block")
    check_block_parallel(module, world_size=2, trainer=types.SimpleNamespace(val_check_interval=1.0))
    # a time-based interval leaves Trainer.val_check_interval unset: refused as well, not an AttributeError
    for trainer in (types.SimpleNamespace(val_check_interval=2), types.SimpleNamespace()):
        with pytest.raises(ConfigurationError, match="validates only there"):
            check_block_parallel(module, world_size=2, trainer=trainer)

"""The resumable training loader: a resumed epoch skips exactly the batches already trained, once, in the same order."""

from types import SimpleNamespace

import torch
from torch.utils.data import TensorDataset

from lightning_noprop.data.resumable import ResumableDataLoader, ResumableSampler


def _loader(trained=lambda: 0, size=20, batch_size=4, rank=0, replicas=1):
    data = TensorDataset(torch.arange(size))
    sampler = ResumableSampler(data, num_replicas=replicas, rank=rank, shuffle=True, seed=3, batch_size=batch_size)
    return ResumableDataLoader(data, sampler=sampler, batch_size=batch_size, batches_trained=trained)


def _batches(loader):
    return [batch[0].tolist() for batch in loader]


def test_a_resumed_epoch_is_the_rest_of_the_same_order_once():
    loader = _loader()
    loader.sampler.set_epoch(2)
    whole = _batches(loader)
    assert len(whole) == 5 and sorted(i for batch in whole for i in batch) == list(range(20))
    loader.load_state_dict({"batches_trained": 3})
    assert len(loader) == 5  # Lightning counts the resumed epoch's batches from where it stopped
    assert _batches(loader) == whole[3:]
    assert _batches(loader) == whole  # the next pass is a whole epoch again


def test_each_rank_skips_its_own_share():
    for rank in range(2):
        loader = _loader(size=24, rank=rank, replicas=2)
        whole = _batches(loader)
        loader.load_state_dict({"batches_trained": 1})
        assert _batches(loader) == whole[1:]


def test_the_state_is_the_batches_trained_in_this_epoch():
    """The fit loop's count of the epoch's processed batches; 0 at an epoch's end, including one that
    ``limit_train_batches`` ends before the loader's last batch (a resumed run then starts the next epoch whole)."""
    from lightning_noprop.data import ImageDataModule

    progress = SimpleNamespace(processed=2)
    data = ImageDataModule(synthetic=True, synthetic_size=64, val_size=16, batch_size=8)
    data.trainer = SimpleNamespace(distributed_sampler_kwargs=None, num_training_batches=3, current_epoch=2, fit_loop=SimpleNamespace(
        epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(current=progress))))  # fmt: skip
    data.setup("fit")
    loader = data.train_dataloader()
    assert isinstance(loader, ResumableDataLoader) and len(loader) == 6
    assert loader.sampler.epoch == 2  # the trainer's (restored) epoch from the first pass: workers begin it at once
    assert loader.state_dict() == {"batches_trained": 2}
    progress.processed = 3  # limit_train_batches=3: the epoch's end
    assert loader.state_dict() == {"batches_trained": 0}


def test_overfit_batches_trains_with_lightnings_own_sampler(tmp_path):
    """Lightning rebuilds the training loader with a sequential sampler under overfit_batches; it still trains."""
    from tests.conftest import REPO
    from tests.helpers import FAST, run

    cli = run("fit", "--config", str(REPO / "configs/noprop_dt.yaml"), "--model.strategy.init_args.num_blocks", "2",
              "--model.strategy.init_args.width", "16", *FAST, "--trainer.overfit_batches", "2",
              "--trainer.max_epochs", "1", "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
              "--trainer.default_root_dir", str(tmp_path))  # fmt: skip
    assert cli.trainer.global_step == 2 * 3  # 2 batches of 3 optimizer steps

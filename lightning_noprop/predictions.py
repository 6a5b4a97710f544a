"""``python main.py predict`` writes its predictions to a CSV file, one row per image, and prints where.

    python main.py predict --config <run>/config.yaml --ckpt_path <ckpt> [--data.predict_path IMAGE_OR_FOLDER]

Columns: ``file`` (image files, ``--data.predict_path``) or ``index`` (the position in the test split), then
``predicted`` (the class index), ``probability`` (its softmax probability) and, for the test split, ``label``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import IO, Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

from lightning_noprop.strategies.base import Prediction


class PredictionWriter(BasePredictionWriter):
    """Writes the predictions of ``predict`` to a CSV file, batch by batch.

    Writes each predict batch's rows to ``<output_dir>/<filename>`` as it is computed (Lightning's
    BasePredictionWriter) and prints the file's path at the end.

    Args:
        output_dir: folder of the CSV file; None writes it into the run's log folder (``trainer.log_dir``: the
            logger's version folder, or ``trainer.default_root_dir`` without a logger).
        filename: name of the CSV file (with several processes each writes ``<stem>_rank<r><suffix>``).
    """

    def __init__(self, output_dir: str | None = None, filename: str = "predictions.csv") -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.filename = filename
        self.path: Path | None = None
        self._file: IO[str] | None = None
        self._writer: Any = None
        self._rows = 0
        self._files: list[Path] | None = None
        self._finished = False  # on_predict_end ran: teardown says where the rows went

    def csv_path(self, trainer: Trainer) -> Path:
        folder = Path(self.output_dir if self.output_dir is not None else trainer.log_dir or trainer.default_root_dir)
        name = Path(self.filename)
        if trainer.world_size > 1:
            name = Path(f"{name.stem}_rank{trainer.global_rank}{name.suffix}")
        return folder / name

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.path = self.csv_path(trainer)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", newline="")
        self._writer = csv.writer(self._file)
        self._rows = 0
        self._files = getattr(_dataset(trainer), "files", None)
        key = "file" if self._files is not None else "index"
        self._writer.writerow([key, "predicted", "probability"] + ([] if self._files is not None else ["label"]))

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: Prediction,
                           batch_indices: list[int] | None, batch: tuple[Tensor, Tensor], batch_idx: int,
                           dataloader_idx: int = 0) -> None:  # fmt: skip
        """One row per image of the batch: ``prediction.logits`` (B, m) -> argmax class and its softmax probability."""
        probability, predicted = prediction.logits.detach().float().softmax(-1).max(-1)
        count = predicted.shape[0]
        indices = list(batch_indices) if batch_indices else list(range(self._rows, self._rows + count))
        labels = batch[1].tolist()
        for index, cls, p, label in zip(indices, predicted.tolist(), probability.tolist(), labels, strict=True):
            if self._files is not None:
                self._writer.writerow([str(self._files[index]), cls, f"{p:.6f}"])
            else:
                self._writer.writerow([index, cls, f"{p:.6f}", label])
        self._rows += count

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close()
        self._finished = True

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Said here, after the progress bar closed its line in its own on_predict_end (else it lands at the bar's end).
        if stage == "predict" and self._finished:
            self._finished = False
            images = "image" if self._rows == 1 else "images"
            print(f"predictions of {self._rows} {images} written to {self.path.resolve()}", flush=True)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._close()


def _dataset(trainer: Trainer) -> Any:
    loaders = trainer.predict_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    return getattr(loader, "dataset", None)

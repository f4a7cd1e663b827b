"""Training logs: CSV always (train_log.csv), TensorBoard when it is installed."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

log = logging.getLogger(__name__)


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "train_log.csv"
        self.columns: list[str] = []
        self.tb = None
        if enabled and self.path.exists():  # resumed run: keep what was logged
            with open(self.path, newline="") as f:
                self.columns = next(csv.reader(f), [])
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("tensorboard is not installed; logging to train_log.csv only")
            else:
                self.tb = SummaryWriter(str(Path(run_dir) / "tb"))

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after `step` (a resumed run re-does those steps)."""
        if not self.enabled or not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        kept = [r for r in rows if int(r["step"]) <= step]
        if len(kept) != len(rows):
            with open(self.path, "w", newline="") as f:
                writer = csv.DictWriter(f, self.columns)
                writer.writeheader()
                writer.writerows(kept)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        new = [k for k in row if k not in self.columns]
        if new:  # a term appeared (e.g. a method's second stage): rewrite with the wider header
            rows = []
            if self.path.exists():
                with open(self.path, newline="") as f:
                    rows = list(csv.DictReader(f))
            self.columns += new
            with open(self.path, "w", newline="") as f:
                writer = csv.DictWriter(f, self.columns)
                writer.writeheader()
                writer.writerows(rows)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

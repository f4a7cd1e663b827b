"""Training logs: CSV always (train_log.csv), TensorBoard when it is installed.

Rows are appended; the two rewrites of the whole file (dropping rows a resumed run re-does, and
widening the header when a new term appears) go through occsynth.io.atomic, so a kill during a
rewrite leaves the old file or the new one, never a cut one.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from occsynth.io.atomic import write_bytes

log = logging.getLogger(__name__)


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "train_log.csv"
        self.columns: list[str] = []
        self.tb = None
        if enabled and self.path.exists():  # resumed run: keep what was logged
            with open(self.path, newline="", encoding="utf-8") as f:
                self.columns = next(csv.reader(f), [])
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("tensorboard is not installed; logging to train_log.csv only")
            else:
                self.tb = SummaryWriter(str(Path(run_dir) / "tb"))

    def _rows(self) -> list[dict]:
        with open(self.path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def _rewrite(self, rows: list[dict]) -> None:
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, self.columns)
        writer.writeheader()
        writer.writerows(rows)
        write_bytes(self.path, buffer.getvalue().encode("utf-8"))

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after `step` (a resumed run re-does those steps)."""
        if not self.enabled or not self.path.exists():
            return
        rows = self._rows()
        kept = [r for r in rows if int(r["step"]) <= step]
        if len(kept) != len(rows):
            self._rewrite(kept)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        new = [k for k in row if k not in self.columns]
        if new:  # a term appeared (e.g. a method's second stage): rewrite with the wider header
            rows = self._rows() if self.path.exists() else []
            self.columns += new
            self._rewrite(rows)
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, self.columns).writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

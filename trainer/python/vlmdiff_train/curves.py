"""Loss curves of the training stages: <stage run_dir>/curves/<stage>.csv (RUN/ae/curves, RUN/train/curves), one row
per logged optimiser step.

Why a file per stage and not only the progress lines: a user judging convergence wants the whole curve (training
loss and the validation-normals loss side by side) next to the evaluation report, and a resumed run must continue
the same curve. The Go side renders each CSV as an SVG plot and links it from the report.

Columns: step, epoch, loss, val_loss (empty on rows without a validation pass).
"""
from __future__ import annotations

import csv
import os
from typing import Optional

__all__ = ["CurveWriter", "HEADER", "read_curve"]

HEADER = ["step", "epoch", "loss", "val_loss"]


class CurveWriter:
    """Appends rows to RUN/curves/<stage>.csv. On resume (start_step > 0) rows past start_step are dropped first,
    so a run killed between a log line and its checkpoint does not leave a doubled stretch of curve."""

    def __init__(self, run_dir: str, stage: str, start_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(run_dir, "curves", f"{stage}.csv")
        if not enabled:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        keep: list[list[str]] = []
        if start_step > 0 and os.path.exists(self.path):
            keep = [r for r in read_curve(self.path) if int(r[0]) <= start_step]
        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(HEADER)
            w.writerows(keep)
        os.replace(tmp, self.path)

    def row(self, step: int, epoch: int, loss: float, val_loss: Optional[float] = None) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow([int(step), int(epoch), f"{float(loss):.6g}",
                                    "" if val_loss is None else f"{float(val_loss):.6g}"])


def read_curve(path: str) -> list[list[str]]:
    """The data rows of a curve file (header checked)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != HEADER:
        raise RuntimeError(f"{path}: not a loss-curve file (want header {','.join(HEADER)})")
    return rows[1:]

"""Progress events on stdout: the protocol between the Python stages and the Go `vlmdiff train` runner.

The runner starts each stage as a subprocess and reads its stdout line by line. Every line that is an event is one
JSON object:

    {"event": "progress", "stage": S, "step": i, "total": n, "epoch": e, "loss": x, "eta_s": y}
    {"event": "done", "stage": S, "outputs": {...}}

Anything else a stage wants to say goes to stderr (logging), so stdout stays machine-readable. On failure a stage
exits non-zero with one clear line on stderr (see __main__.py).
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, Dict, Optional, TextIO


def _clean(x: Any) -> Any:
    """JSON has no NaN/Inf: report them as null rather than emitting invalid JSON the runner cannot parse."""
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    return x


class Progress:
    """Emits progress events for one stage and estimates the remaining time from the average step rate."""

    def __init__(self, stage: str, total: int, out: Optional[TextIO] = None, start_step: int = 0):
        self.stage = stage
        self.total = int(total)
        self.out = out if out is not None else sys.stdout
        self._t0 = time.monotonic()
        self._step0 = int(start_step)  # steps done before this process (resume) do not count towards the rate

    def step(self, step: int, loss: Optional[float] = None, epoch: Optional[int] = None, **extra: Any) -> None:
        done = step - self._step0
        elapsed = time.monotonic() - self._t0
        eta = None
        if done > 0 and self.total > 0:
            eta = max(0.0, elapsed / done * (self.total - step))
        ev: Dict[str, Any] = {"event": "progress", "stage": self.stage, "step": int(step), "total": self.total,
                              "epoch": epoch, "loss": _clean(None if loss is None else float(loss)),
                              "eta_s": None if eta is None else round(eta, 3)}
        for k, v in extra.items():
            ev[k] = _clean(v)
        self._emit(ev)

    def done(self, outputs: Dict[str, Any]) -> None:
        self._emit({"event": "done", "stage": self.stage, "outputs": outputs})

    def _emit(self, ev: Dict[str, Any]) -> None:
        self.out.write(json.dumps(ev, allow_nan=False) + "\n")
        self.out.flush()


def emit_done(stage: str, outputs: Dict[str, Any], out: Optional[TextIO] = None) -> None:
    """Emit the final event of a stage that has no step loop (export, fixture, reference)."""
    Progress(stage, 0, out=out).done(outputs)

"""Progress events on stdout: the protocol between the Python stages and the Go `vlmdiff train` runner.

The runner starts each stage as a subprocess and reads its stdout line by line. Every line that is an event is one
JSON object:

    {"event": "progress", "stage": S, "step": i, "total": n, "epoch": e, "loss": x, "eta_s": y}
    {"event": "done", "stage": S, "outputs": {...}}

Anything else a stage wants to say goes to stderr (logging), so stdout stays machine-readable. On failure a stage
exits non-zero with one clear line on stderr (see __main__.py).
"""

from __future__ import annotations

import bisect
import json
import math
import sys
import time
from typing import Any, Callable, Dict, List, Optional, TextIO


def _clean(x: Any) -> Any:
    """JSON has no NaN/Inf: report them as null rather than emitting invalid JSON the runner cannot parse."""
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    return x


class Progress:
    """Emits progress events for one stage and estimates the remaining time from the recent step rate.

    The rate is taken over the second half of the time elapsed so far, not from the stage's start: a stage's first
    steps can be much slower than the rest (likely the data loader's workers starting and the first reads of the
    images; not measured apart), and an average from the start kept them in the estimate for the whole stage
    (session 58: the taef2 train stage printed "ETA 1h50m" at step 34 of 2820 and took 34 minutes in all).
    Half the elapsed time still spans several epochs' validation passes once there are a few."""

    def __init__(self, stage: str, total: int, out: Optional[TextIO] = None, start_step: int = 0,
                 clock: Callable[[], float] = time.monotonic):
        self.stage = stage
        self.total = int(total)
        self.out = out if out is not None else sys.stdout
        self._clock = clock
        self._t0 = clock()
        self._step0 = int(start_step)  # steps done before this process (resume) do not count towards the rate
        self._times: List[float] = []  # elapsed seconds at each step() call, increasing
        self._steps: List[int] = []

    def _eta(self, step: int) -> Optional[float]:
        """Records that step is done now and returns the seconds left, from the steps made in the second half of
        the elapsed time (None before any step of this process)."""
        elapsed = self._clock() - self._t0
        self._times.append(elapsed)
        self._steps.append(int(step))
        if step - self._step0 <= 0 or self.total <= 0:
            return None
        i = bisect.bisect_left(self._times, elapsed / 2)
        t_from, s_from = (self._times[i - 1], self._steps[i - 1]) if i > 0 else (0.0, self._step0)
        if step - s_from <= 0 or elapsed - t_from <= 0:
            t_from, s_from = 0.0, self._step0
        return max(0.0, (elapsed - t_from) / (step - s_from) * (self.total - step))

    def step(self, step: int, loss: Optional[float] = None, epoch: Optional[int] = None, **extra: Any) -> None:
        eta = self._eta(step)
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

"""A DDIM step count whose uniform schedule runs past the last training step is refused by name (the Go scorer
indexed past its alphas table and panicked in calibrate on such a bundle)."""
from __future__ import annotations

import pytest

from vlmdiff_train.reference import ddim_timesteps


@pytest.mark.parametrize("steps", [3, 6, 7, 9])
def test_schedules_past_the_end_are_refused_or_fit(steps):
    c = 1000 // steps
    last = (len(range(0, 1000, c)) - 1) * c + 1
    if last >= 1000:
        with pytest.raises(RuntimeError, match=f"ddim_steps {steps}: .* divides 1000"):
            ddim_timesteps(1000, steps)
    else:
        assert ddim_timesteps(1000, steps)[-1] == last < 1000


@pytest.mark.parametrize("steps,last", [(1, 1), (4, 751), (10, 901), (50, 981)])
def test_divisors_run(steps, last):
    ts = ddim_timesteps(1000, steps)
    assert len(ts) == steps and ts[-1] == last

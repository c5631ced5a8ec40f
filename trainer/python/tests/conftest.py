"""Shared pytest setup: import path, a 2-thread torch, and where the shared data lives (tests skip without it)."""
from __future__ import annotations

import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("VLMDIFF_TORCH_THREADS", "2")))

# /work/shared (datasets, backbones) sits beside the repository; VLMDIFF_SHARED overrides it.
SHARED = pathlib.Path(os.environ.get("VLMDIFF_SHARED", str(ROOT.parents[2] / "shared")))


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    """The shared data directory, or skip the test when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED} (set VLMDIFF_SHARED)")
    return SHARED


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same RNG state, so failures reproduce."""
    torch.manual_seed(0)
    yield

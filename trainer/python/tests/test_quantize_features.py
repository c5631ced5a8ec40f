"""vlmdiff_train.quantize_features without ONNX Runtime: its calibration file is checked before anything runs
(the quantisation itself is tested end to end by trainer/cli's TestQuantizeFeatures, with the .deps/py venv)."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

from vlmdiff_train import quantize_features as qf


@pytest.mark.parametrize("array, why", [
    (np.zeros((2, 3, 8, 8), np.float64), "float32"),
    (np.zeros((3, 8, 8), np.float32), "[N,3,H,W]"),
    (np.zeros((2, 1, 8, 8), np.float32), "[N,3,H,W]"),
    (np.zeros((0, 3, 8, 8), np.float32), "[N,3,H,W]"),
    (np.full((1, 3, 4, 4), np.nan, np.float32), "NaN"),
])
def test_bad_calibration_is_refused(tmp_path: pathlib.Path, array: np.ndarray, why: str) -> None:
    p = tmp_path / "c.npy"
    np.save(p, array)
    with pytest.raises(ValueError, match=why.replace("[", r"\[").replace("]", r"\]")):
        qf.load_calibration(str(p))
    # main reports it on stderr and exits 1, before importing ONNX Runtime
    assert qf.main(["--graph", "g.onnx", "--calib", str(p), "--input", "x", "--out", str(tmp_path / "o.onnx")]) == 1


def test_batches_cover_every_input() -> None:
    data = np.arange(5 * 3 * 2 * 2, dtype=np.float32).reshape(5, 3, 2, 2)
    parts = list(qf.batches(data, 2))
    assert [p.shape[0] for p in parts] == [2, 2, 1]
    assert np.array_equal(np.concatenate(parts), data)

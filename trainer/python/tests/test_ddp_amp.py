"""The train stage under DDP (torchrun, 2 processes, gloo on the CPU) and with bf16 autocast on the CPU.

DDP: the ranks agree on the weights (the stage compares them and fails otherwise), a run stopped after 2 steps and
resumed to 4 ends where an uninterrupted 4-step run ends, and rank 0 alone writes checkpoints and the model.
AMP: bf16 autocast really runs (the result differs from fp32 by bf16 rounding, not more) and fp16 on the CPU is
refused with a clear error."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from vlmdiff_train import train_denoiser

from test_train import _train_cfg, built, dataset  # noqa: F401  (module fixtures)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _denoiser(path):
    return torch.load(path, map_location="cpu")["state"]["denoiser"]


def _max_rel(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).norm() / max(float(b[k].float().norm()), 1e-12))
               for k in a if a[k].is_floating_point())


def _torchrun(cfg: dict, tmp, name: str) -> str:
    p = tmp / f"{name}.json"
    p.write_text(json.dumps(cfg))
    torchrun = shutil.which("torchrun")
    cmd = ([torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]) + [
        # --redirects/--tee: Debian's torch 1.13 on Python >= 3.11 parses their default "0" to None and crashes
        "--standalone", "--nproc_per_node", "2", "--redirects", "1", "--tee", "1",
        "-m", "vlmdiff_train", "train", "--config", str(p)]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"torchrun failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r.stdout + r.stderr


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch without gloo")
def test_ddp_two_processes_agree_and_resume(dataset, built, tmp_path):  # noqa: F811
    base = dict(batch_size=1, lr=1e-3, save_every=1, keep=10, threads=1)
    # stopped after 2 steps, then resumed to 4
    run_a = tmp_path / "a"
    log1 = _torchrun(_train_cfg(dataset, built, run_a, max_steps=2, **base), tmp_path, "a1")
    assert "DDP: 2 ranks agree on the weights" in log1
    ckpts = sorted(os.listdir(run_a / "checkpoints"))
    assert ckpts == ["step-00000001.pt", "step-00000002.pt"], ckpts
    # every checkpoint is whole (one writer: two ranks writing the same file would tear or double it)
    for c in ckpts:
        assert int(torch.load(run_a / "checkpoints" / c, map_location="cpu")["step"]) == int(c[5:13])
    log2 = _torchrun(_train_cfg(dataset, built, run_a, max_steps=4, **base), tmp_path, "a2")
    assert log2.count("at step 2") == 2, log2[-3000:]  # both ranks resumed from the same checkpoint
    assert "DDP: 2 ranks agree on the weights" in log2
    # the same 4 steps without a stop
    run_b = tmp_path / "b"
    _torchrun(_train_cfg(dataset, built, run_b, max_steps=4, **base), tmp_path, "b")
    a, b = _denoiser(run_a / "model-trained.pt"), _denoiser(run_b / "model-trained.pt")
    assert _max_rel(a, b) < 1e-5, "a resumed DDP run differs from an uninterrupted one"
    # and the 4 steps changed the model (the comparison above is not between two untouched copies)
    assert _max_rel(a, _denoiser(built)) > 1e-4
    # only rank 0 wrote: the run directory holds one model, the checkpoints and one loss curve, nothing
    # rank-suffixed, and the curve has each logged step once (a second writer would double the rows)
    assert sorted(os.listdir(run_a)) == ["checkpoints", "curves", "model-trained.pt"]
    assert os.listdir(run_a / "curves") == ["train.csv"]
    steps = [line.split(",")[0] for line in (run_a / "curves" / "train.csv").read_text().splitlines()[1:]]
    assert len(steps) == len(set(steps)), steps


def test_bf16_autocast_on_cpu(dataset, built, tmp_path):  # noqa: F811
    outs = {}
    for amp in ("none", "bf16"):
        r = train_denoiser.run(_train_cfg(dataset, built, tmp_path / amp, max_steps=3, amp=amp, batch_size=2))
        assert r["steps"] == 3
        outs[amp] = _denoiser(r["model"])
    for k, v in outs["bf16"].items():
        assert torch.isfinite(v.float()).all(), k
    # bf16 has an 8-bit mantissa: the 3 steps do not land on the fp32 result (autocast really ran), but they move
    # the weights the same way (Adam's near-sign updates flip for the smallest gradients, so compare directions)
    base = _denoiser(built)
    keys = [k for k, v in base.items() if v.is_floating_point()]
    d16 = torch.cat([(outs["bf16"][k].float() - base[k].float()).flatten() for k in keys])
    d32 = torch.cat([(outs["none"][k].float() - base[k].float()).flatten() for k in keys])
    cos = float(torch.nn.functional.cosine_similarity(d16, d32, dim=0))
    assert float(d32.norm()) > 0 and not torch.equal(d16, d32)
    assert cos > 0.5, f"bf16 training moved the weights another way than fp32 (cosine {cos:.3f})"


def test_fp16_on_cpu_is_refused(dataset, built, tmp_path):  # noqa: F811
    with pytest.raises(RuntimeError, match="fp16 needs device cuda"):
        train_denoiser.run(_train_cfg(dataset, built, tmp_path, max_steps=1, amp="fp16"))

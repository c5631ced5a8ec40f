"""The sd15 GPU check: the paper's full-width networks, a few training steps, export, reference scoring speed.

    python3 -m vlmdiff_train.gpu_check --out /tmp/gpu-check                       # CUDA, full-width sd15
    python3 -m vlmdiff_train.gpu_check --out /tmp/gpu-check --device cpu --tiny --frames 4   # smoke test

What it does, each step timed, in at most ~10 minutes on one CUDA GPU:
  1. a synthetic 16-image dataset (index.jsonl + PNGs) at the preset's size;
  2. build: the preset's networks with random weights (no checkpoint can be downloaded), the SG network
     initialised from the UNet encoder as the build stage does, a small learnt tokenizer;
  3. train: the real train stage (train_denoiser.run) for --steps steps at --batch, bf16 autocast on CUDA;
  4. export: a DINO ViT-S/8 feature graph from nets/dino.py (random weights) and the real export stage, with the
     parity probes written (check them with `vlmdiff bundle parity BUNDLE PROBES` where ONNX Runtime is);
  5. scoring: the PyTorch reference scorer (reference.Scorer: DDIM reconstruction, features through onnx_torch,
     the anomaly map) on the device, --frames frames at batch 1 and at batch 16 (fp32), after one warm-up batch.
It prints one JSON line with the step times, frames/s at batch 1 and 16 and the peak GPU memory of training and
of scoring, and writes it to OUT/gpu_check.json. --tiny uses the sd15-mini preset (sd15's structure at test widths)
so the script itself can be checked on a CPU. Needs PyTorch with CUDA for --device cuda (Debian's is CPU-only).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Dict

import numpy as np
import torch

from . import presets
from .checkpoints import init_sgn_from_unet
from .dino_export import export_dino_onnx
from .export import run_export
from .model_file import load_nets
from .reference import Scorer, anomaly_map, pooled_score, read_conditioning, read_manifest, smooth
from .tokenizer import learn_merges
from .train_denoiser import run as run_train
from .train_denoiser import save_model

log = logging.getLogger(__name__)


def _dataset(root: str, size: int, n: int = 16) -> str:
    from PIL import Image
    os.makedirs(root, exist_ok=True)
    recs = []
    for i in range(n):
        rng = np.random.default_rng(i)
        yy, xx = np.mgrid[0:size, 0:size]
        img = np.stack([(xx * 3 + 11 * i) % 256, (yy * 2) % 256, np.full_like(xx, 80 + 5 * i)], -1)
        img = np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(root, f"img{i:02d}.png"))
        recs.append({"path": f"img{i:02d}.png", "mask": "", "class": "widget", "split": "train", "label": 0})
    p = os.path.join(root, "index.jsonl")
    with open(p, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in recs))
    return p


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(out: str, device_name: str = "cuda", tiny: bool = False, steps: int = 3, batch: int = 4,
        frames: int = 200, threads: int = 8) -> Dict:
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("gpu_check: --device cuda but this PyTorch sees no GPU (use --device cpu --tiny to "
                           "check the script itself)")
    torch.set_num_threads(threads)
    name = "sd15-mini" if tiny else "sd15"
    p = presets.get_preset(name)
    size = p.input_size
    os.makedirs(out, exist_ok=True)
    times: Dict[str, float] = {}
    res: Dict = {"preset": name, "device": str(device), "torch": torch.__version__, "size": size,
                 "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else ""}

    t0 = time.time()
    index = _dataset(os.path.join(out, "data"), size)
    times["data_s"] = time.time() - t0

    t0 = time.time()
    nets = presets.build(name, with_dino=False, seed=0)
    init_sgn_from_unet(nets.sgn, nets.unet.state_dict())
    merges = [list(m) for m in learn_merges(["a photo of a widget"], 40)]
    model = os.path.join(out, "model.pt")
    save_model(model, name, nets.vae, nets.denoiser, nets.text_encoder, merges, {"stage": "gpu_check"})
    del nets
    times["build_s"] = time.time() - t0

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.time()
    tr = run_train({"run_dir": os.path.join(out, "train"), "model": model, "index": index, "height": size,
                    "width": size, "batch_size": batch, "max_steps": steps, "save_every": steps, "lr": 1e-5,
                    "device": device.type, "amp": "bf16" if device.type == "cuda" else "none",
                    "default_caption": "a photo of a widget", "seed": 0, "threads": threads})
    _sync(device)
    times["train_s"] = time.time() - t0
    res["train_steps"], res["train_batch"] = int(tr["steps"]), batch
    if device.type == "cuda":
        res["train_peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30

    t0 = time.time()
    dino = os.path.join(out, "dino.onnx")
    export_dino_onnx(dino, None, size, p.dino.to_dict(), opset=17)
    bundle, probes = os.path.join(out, "bundle"), os.path.join(out, "probes")
    run_export({"run_dir": os.path.join(out, "export"), "model": tr["model"], "out": bundle, "probes": probes,
                "features_onnx": dino, "feature_layers": [["tokens", 1.0]], "classes": ["widget"],
                "name": "gpu-check", "version": "0.0.0", "threads": threads})
    times["export_s"] = time.time() - t0
    res["bundle"], res["probes"] = bundle, probes

    # Scoring with the PyTorch reference on the device.
    m = read_manifest(bundle)
    rn = load_nets(tr["model"], bundle, m)
    rn.vae.to(device)
    rn.denoiser = rn.denoiser.to(device)  # the reference makes its timesteps on the input's device
    rn.hint = rn.hint.to(device) if isinstance(rn.hint, torch.nn.Module) else rn.hint
    rn.features = rn.features.to(device)
    cond = {k: v.to(device) for k, v in read_conditioning(bundle, m).items()}
    scorer = Scorer(m, rn, cond)
    f, mp, sc = m["features"], m["map"], m["score"]
    lat = m["latent"]
    shape = (int(lat["channels"]), size // int(lat["downsample"]), size // int(lat["downsample"]))
    g = torch.Generator().manual_seed(0)

    def score_batch(b: int) -> list:
        x = torch.randn(b, 3, size, size, generator=g).to(device)
        pn, sn = torch.randn(b, *shape, generator=g).to(device), torch.randn(b, *shape, generator=g).to(device)
        with torch.no_grad():
            rec = scorer.reconstruct(x, pn, sn, "widget")
            fi, fr = rn.features(scorer.feature_input(x)), rn.features(scorer.feature_input(rec))
            amap = anomaly_map(fi, fr, f["layers"], size, size, bool(f.get("tokens"))).float().cpu().numpy()
        return [pooled_score(smooth(a, float(mp["sigma"]), float(mp.get("truncate", 4.0))), int(sc["pool_kernel"]),
                             int(sc["pool_repeat"])) for a in amap]

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for b in (1, 16):
        score_batch(b)  # warm-up (cuDNN autotune, allocator)
        _sync(device)
        t0 = time.time()
        done, scores = 0, []
        while done < frames:
            n = min(b, frames - done)
            scores += score_batch(n)
            done += n
        _sync(device)
        dt = time.time() - t0
        if not all(np.isfinite(scores)):
            raise RuntimeError(f"gpu_check: non-finite scores at batch {b}")
        res[f"fps_batch{b}"] = frames / dt
        times[f"score_batch{b}_s"] = dt
    if device.type == "cuda":
        res["score_peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    res["frames"], res["times"] = frames, {k: round(v, 2) for k, v in times.items()}
    with open(os.path.join(out, "gpu_check.json"), "w", encoding="utf-8") as fh:
        json.dump(res, fh, indent=1)
    return res


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(prog="python3 -m vlmdiff_train.gpu_check")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="sd15-mini instead of sd15 (a CPU smoke test)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--threads", type=int, default=8)
    a = ap.parse_args(argv)
    try:
        r = run(a.out, a.device, a.tiny, a.steps, a.batch, a.frames, a.threads)
    except Exception as e:
        if os.environ.get("VLMDIFF_TRACEBACK"):
            log.exception("gpu_check failed")
        print(f"gpu_check: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command line of the Python training stages, called by the Go `vlmdiff train` runner (or by hand).

    python3 -m vlmdiff_train STAGE --config CONFIG.json          STAGE: finetune-ae | build | train | export
    python3 -m vlmdiff_train fixture --out DIR --weights FILE.pt [--probes DIR] [--expected DIR]
    python3 -m vlmdiff_train reference --bundle DIR --weights FILE.pt --noise NOISE.f32 --out OUTDIR [--class K] IMG...

stdout carries only progress events, one JSON object per line (progress.py):
    {"event":"progress","stage":S,"step":i,"total":n,"epoch":e,"loss":x,"eta_s":y}
    {"event":"done","stage":S,"outputs":{...}}
Logs go to stderr. On failure the process exits 1 (2 for bad usage) with one line on stderr:
    vlmdiff_train STAGE: error: WHAT FAILED: WHY

CONFIG.json (one object; unknown keys are refused so a typo cannot silently fall back to a default). Keys by stage:

  common:      run_dir (str, required: where checkpoints/outputs go), seed (int, 0), device ("cpu"|"cuda", "cpu"),
               threads (int, 2: torch CPU threads)
  data (finetune-ae, train):
               index (str, required: index.jsonl of the Go index stage), captions (str: captions.json),
               classes ([str]: restrict to these classes), split ("train"), default_caption (str, "": used when
               an image has no caption; "{cls}" is replaced by the class name), augment (bool, false),
               height, width (int, 256), mean, std ([3]float, ImageNet), num_workers (int, 0)
  finetune-ae: preset (str, "tiny"), init (str: AE checkpoint, kl-f8 or a previous finetune; absent = from
               scratch), perceptual_onnx (str: ONNX backbone for the perceptual term, e.g.
               resnet50v2_stage1to3.onnx), perceptual_layers ([str]), perceptual_weight (float, 1.0),
               kl_weight (float, 1e-6), lr (float, 4.5e-6 * batch_size), batch_size (int, 1),
               accumulate (int, 1), max_steps (int, required), save_every (int, 500), log_every (int, 10)
               -> outputs {"autoencoder": RUN/ae.pt}
  build:       preset (str, required), autoencoder (str: finetune-ae output), sd_checkpoint (str: SD1.5 ckpt for
               sd15), out (str, RUN/model.pt) -> outputs {"model": PATH}
  train:       model (str, required: build output), lr (float, 1e-5), weight_decay (float, 0.01),
               batch_size (int, 1), accumulate (int, 1), max_steps (int) or epochs (int), save_every (int, 100),
               keep (int, 2: checkpoints kept), log_every (int, 1), amp ("none"|"bf16"|"fp16", "none"; fp16 GPU only),
               grad_clip (float, 0 = off), posterior ("sample"|"mean", "sample")
               -> outputs {"model": RUN/model-trained.pt, "checkpoint": last}
  export:      model (str, required), out (str, required: bundle dir), name, version, description (str),
               features_onnx (str: ONNX backbone copied into the bundle) and feature_layers ([[name, weight]]),
               or the model's torch feature net; classes ([str]: one conditioning entry per class),
               prompt_template (str, "a photo of a {cls}"), probes (str: parity probe dir), posterior, sigma,
               guidance_scale, ddim_steps, start_step (manifest overrides), dataset (str: provenance),
               input_size (int: the square size trained at, when it differs from the preset's),
               features_random ({"seed": int, "widths": [3 ints]}: a seeded random-weight conv net as the
               feature graph, layers layer1 (/4) and layer2 (/8); for redistributable bundles such as the demo)
               -> outputs {"bundle": DIR, "manifest": DIR/bundle.json, "probes": DIR}
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import List, Optional

STAGES = ("finetune-ae", "build", "train", "export", "reference", "fixture")


class UsageError(Exception):
    pass


def load_config(path: Optional[str]) -> dict:
    if not path:
        raise UsageError("--config CONFIG.json is required for this stage")
    try:
        with open(path, "r", encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise RuntimeError(f"reading config {path}: {e}") from e
    if not isinstance(cfg, dict):
        raise RuntimeError(f"config {path}: want a JSON object")
    return cfg


def _setup_torch(cfg: dict) -> None:
    import torch
    torch.set_num_threads(int(cfg.get("threads", 2)))


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("VLMDIFF_LOG", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python3 -m vlmdiff_train")
    p.add_argument("stage", choices=STAGES)
    p.add_argument("--config")
    p.add_argument("--out")
    p.add_argument("--weights")
    p.add_argument("--probes")
    p.add_argument("--expected")
    p.add_argument("--bundle")
    p.add_argument("--noise")
    p.add_argument("--class", dest="cls")
    p.add_argument("images", nargs="*")
    try:
        a = p.parse_intermixed_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    stage = a.stage
    try:
        from .progress import emit_done
        if stage == "fixture":
            if not a.out or not a.weights:
                raise UsageError("fixture needs --out DIR and --weights FILE.pt")
            _setup_torch({})
            from .fixture import build_fixture
            emit_done(stage, build_fixture(a.out, a.weights, a.probes, expected_dir=a.expected))
        elif stage == "reference":
            if not (a.bundle and a.weights and a.noise and a.out):
                raise UsageError("reference needs --bundle DIR --weights FILE.pt --noise NOISE.f32 --out OUTDIR IMG...")
            _setup_torch({})
            from .reference import run_reference
            emit_done(stage, run_reference(a.bundle, a.weights, a.noise, a.out, a.images, a.cls))
        else:
            cfg = load_config(a.config)
            _setup_torch(cfg)
            if stage == "finetune-ae":
                from .train_ae import run as run_stage
            elif stage == "build":
                from .train_denoiser import run_build as run_stage
            elif stage == "train":
                from .train_denoiser import run as run_stage
            else:
                from .export import run_export as run_stage
            emit_done(stage, run_stage(cfg))
    except UsageError as e:
        print(f"vlmdiff_train {stage}: usage: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vlmdiff_train {stage}: error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line for the runner; the traceback only when asked for
        if os.environ.get("VLMDIFF_TRACEBACK"):
            logging.exception("stage %s failed", stage)
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"vlmdiff_train {stage}: error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command line of the Python training stages, called by the Go `vlmdiff train` runner (or by hand).

    python3 -m vlmdiff_train STAGE --config CONFIG.json          STAGE: finetune-ae | build | train | export
    python3 -m vlmdiff_train fixture --out DIR --weights FILE.pt [--probes DIR] [--expected DIR]
    python3 -m vlmdiff_train reference --bundle DIR --weights FILE.pt --noise NOISE.f32 --out OUTDIR [--class K] IMG...
    python3 -m vlmdiff_train schema       (JSON: every stage's keys, types and defaults; the shared constants)
    python3 -m vlmdiff_train check-stages --config CONFIGS.json   ({stage: config}: each parsed as its stage would
                                          parse it, keys, types and ranges, without torch unless build.control_levels
                                          is set; the runner's check line, before any stage runs)

stdout carries only progress events, one JSON object per line (progress.py):
    {"event":"progress","stage":S,"step":i,"total":n,"epoch":e,"loss":x,"eta_s":y}
    {"event":"done","stage":S,"outputs":{...}}
Logs go to stderr. On failure the process exits 1 (2 for bad usage) with one line on stderr:
    vlmdiff_train STAGE: error: WHAT FAILED: WHY

CONFIG.json is one object; unknown keys are refused so a typo cannot silently fall back to a default. The keys of
each stage, with types, defaults and docs, are defined once in stage_config.py (one dataclass per stage) and
listed by `python3 -m vlmdiff_train --help`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import List, Optional

STAGES = ("finetune-ae", "build", "train", "export", "reference", "fixture", "schema", "check-stages")


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


def _setup_torch(threads: int = 2) -> None:
    import torch
    torch.set_num_threads(int(threads))


def _check_control_levels(c) -> None:
    """build.control_levels against its preset's UNet levels, the one setting whose range is the preset's (the
    only check-stages step that imports torch, through presets.py, and only when the key is set)."""
    from .presets import get_preset

    try:
        levels = len(get_preset(c.preset).unet.channel_mult)
    except ValueError as e:
        raise RuntimeError(f"build config: preset: {e}") from None
    if c.control_levels > levels:
        raise RuntimeError(f"build config: control_levels: {c.control_levels} is above the {levels} UNet levels "
                           f"of preset {c.preset}")


def schema() -> dict:
    """Every stage's keys (stage_config.schema) and the constants the Go side must agree with."""
    from . import constants, presets
    from .stage_config import STAGES, schema as stage_schema

    return {
        "stages": {name: stage_schema(cls) for name, cls in STAGES.items()},
        "constants": {
            "latent_scale": constants.LATENT_SCALE,
            "imagenet_mean": list(constants.IMAGENET_MEAN),
            "imagenet_std": list(constants.IMAGENET_STD),
            "presets": {n: {"input_size": p.input_size, "latent_channels": p.latent_channels,
                            "latent_size": p.latent_size, "downsample": p.downsample}
                        for n, p in presets.PRESETS.items()},
        },
    }


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("VLMDIFF_LOG", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .stage_config import describe, parse_stage

    p = argparse.ArgumentParser(prog="python3 -m vlmdiff_train", epilog=describe(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
        if stage == "schema":
            json.dump(schema(), sys.stdout, indent=1)
            sys.stdout.write("\n")
        elif stage == "check-stages":
            problems = []
            for name, cfg in load_config(a.config).items():
                try:
                    c = parse_stage(name, cfg)
                    if name == "build" and c.control_levels is not None:
                        _check_control_levels(c)
                except RuntimeError as e:
                    problems.append(str(e))
            if problems:
                raise RuntimeError("; ".join(problems))
        elif stage == "fixture":
            if not a.out or not a.weights:
                raise UsageError("fixture needs --out DIR and --weights FILE.pt")
            _setup_torch()
            from .fixture import build_fixture
            emit_done(stage, build_fixture(a.out, a.weights, a.probes, expected_dir=a.expected))
        elif stage == "reference":
            if not (a.bundle and a.weights and a.noise and a.out):
                raise UsageError("reference needs --bundle DIR --weights FILE.pt --noise NOISE.f32 --out OUTDIR IMG...")
            _setup_torch()
            from .reference import run_reference
            emit_done(stage, run_reference(a.bundle, a.weights, a.noise, a.out, a.images, a.cls))
        else:
            raw = load_config(a.config)
            # checked here, before torch loads, so a bad key fails fast; the stage parses the dict again itself
            _setup_torch(parse_stage(stage, raw).threads)
            if stage == "finetune-ae":
                from .train_ae import run as run_stage
            elif stage == "build":
                from .train_denoiser import run_build as run_stage
            elif stage == "train":
                from .train_denoiser import run as run_stage
            else:
                from .export import run_export as run_stage
            emit_done(stage, run_stage(raw))
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

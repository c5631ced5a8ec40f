"""The settings of the Python training stages, each defined once: one dataclass per stage.

A field is an allowed key of that stage's CONFIG.json: its annotation is the type, its default the default, and
its metadata the one-line doc, whether it is required and the values it accepts (a minimum, a maximum, a list of
choices). Everything else reads from here: parse() refuses unknown keys by name, values of the wrong type and
values out of range, then runs the class's own check() for rules that join two keys; `vlmdiff train --check`
runs parse() on every stage's settings before any stage does (`check-stages`), so a bad value is refused in a
second, not after the autoencoder stage; the stages read attributes instead of cfg.get(key, default),
`python3 -m vlmdiff_train --help` lists the keys, and `python3 -m vlmdiff_train schema` dumps them as JSON for the
Go runner's test that checks every config it writes (trainer/run/schema_test.go).

Imports only the standard library and constants.py, so any module may import it.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Type, TypeVar

from .constants import IMAGENET_MEAN, IMAGENET_STD, MAX_ENSEMBLE

T = TypeVar("T")

# the training stages' memory_format key (finetune-ae and train), documented once
MEMORY_FORMAT_DOC = ("auto | channels_last | contiguous: the networks' and images' layout (auto: channels_last on "
                     "the CPU, faster there; layout.py)")


# the values of memory_format (layout.py) and of posterior (train: what the denoiser learns on; export: the manifest's)
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
POSTERIORS = ("sample", "mean")
# the values of build.latent_scale
LATENT_SCALES = ("auto", "measured", "preset")


def key(default: Any = None, doc: str = "", *, required: bool = False, minimum: Optional[float] = None,
        maximum: Optional[float] = None, choices: Optional[tuple] = None) -> Any:
    """A stage setting: default, one-line doc, whether the stage refuses to run without it, and the values it
    accepts (minimum and maximum inclusive, for a number or each number of a list; choices, for a string)."""
    md = {"doc": doc, "required": required, "minimum": minimum, "maximum": maximum,
          "choices": list(choices) if choices else None}
    if isinstance(default, (list, dict, tuple)):
        d = list(default) if isinstance(default, tuple) else default
        return field(default_factory=lambda: copy.deepcopy(d), metadata=md)
    return field(default=default, metadata=md)


@dataclass
class Common:
    """Keys every stage accepts."""
    run_dir: str = key("", "where checkpoints and outputs go", required=True)
    seed: int = key(0, "seeds weights, data order and noise")
    device: str = key("cpu", "cpu | cuda | cuda:N")
    threads: int = key(2, "torch CPU threads", minimum=1)

    def check(self, stage: str) -> None:
        """The rules a field's range cannot say (subclasses extend it)."""
        d = self.device
        if not (d in ("cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit())):
            raise RuntimeError(f"{stage} config: device: {d!r} is not one of cpu, cuda, cuda:N")


@dataclass
class DataKeys:
    """The training images (the stages that read the Go index stage's output)."""
    index: str = key("", "index.jsonl of the Go index stage", required=True)
    captions: Optional[str] = key(None, "captions.json of the caption stage")
    classes: Optional[List[str]] = key(None, "restrict to these classes")
    split: str = key("train", "index split to train on")
    default_caption: str = key("", 'caption of an image without one; "{cls}" is replaced by the class name')
    augment: bool = key(False, "light augmentation (flip, brightness); off in the paper")
    height: int = key(256, "training image height, pixels", minimum=8)
    width: int = key(256, "training image width, pixels", minimum=8)
    mean: List[float] = key(IMAGENET_MEAN, "normalisation mean (RGB)")
    std: List[float] = key(IMAGENET_STD, "normalisation std (RGB)")
    num_workers: int = key(0, "accepted for compatibility; images load in the main process")


@dataclass
class FinetuneAEConfig(DataKeys, Common):
    """finetune-ae: the autoencoder finetune -> outputs {"autoencoder": RUN/ae.pt}."""
    height: Optional[int] = key(None, "training image height (default: the preset's input size)", minimum=8)
    width: Optional[int] = key(None, "training image width (default: the preset's input size)", minimum=8)
    preset: str = key("tiny", "network preset (presets.py)")
    init: Optional[str] = key(None, "AE checkpoint to start from (kl-f8 or a previous finetune); absent: scratch")
    trusted: bool = key(False, "allow checkpoints that need the unsafe pickle loader")
    perceptual_onnx: Optional[str] = key(None, "ONNX backbone of the perceptual term")
    perceptual_layers: Optional[List[str]] = key(None, "outputs of perceptual_onnx used by the perceptual term")
    perceptual_weight: float = key(1.0, "weight of the perceptual term", minimum=0)
    kl_weight: float = key(1e-6, "weight of the KL term", minimum=0)
    lr: Optional[float] = key(None, "Adam learning rate (default 4.5e-6 * batch_size)", minimum=0)
    batch_size: int = key(1, "images per micro-batch", minimum=1)
    accumulate: int = key(1, "micro-batches per optimiser step", minimum=1)
    max_steps: int = key(0, "optimiser steps", required=True, minimum=0)
    save_every: int = key(500, "checkpoint every N steps", minimum=1)
    log_every: int = key(10, "progress event every N steps", minimum=1)
    keep: int = key(2, "checkpoints kept", minimum=1)
    memory_format: str = key("auto", MEMORY_FORMAT_DOC, choices=MEMORY_FORMATS)
    full_res_blocks: Optional[int] = key(None, "ResnetBlocks at the autoencoder's full resolution, encoder and "
                                               "decoder each; -1: LDM's layout (num_res_blocks and one more). "
                                               "Absent: init's layout, else the preset's for a new autoencoder "
                                               "(small: 0, 0.87x a frame at batch 1 on 2 CPU cores; the others "
                                               "LDM's). Recorded in ae.pt; the build stage follows it", minimum=-1)

    def check(self, stage: str) -> None:
        """The rules that join two keys."""
        super().check(stage)
        if self.max_steps == 0 and not self.init:
            # nothing to finetune from nothing: an untrained autoencoder would go on to the build stage
            raise RuntimeError(f"{stage} config: max_steps 0 keeps the autoencoder as init gives it; "
                               "without init give max_steps >= 1")


@dataclass
class BuildConfig(Common):
    """build: assemble the model file -> outputs {"model": PATH}."""
    preset: str = key("", "network preset (presets.py)", required=True)
    autoencoder: Optional[str] = key(None, "the finetune-ae output")
    sd_checkpoint: Optional[str] = key(None, "SD1.5 checkpoint (required for sd15)")
    tokenizer: Optional[str] = key(None, "CLIP vocabulary (directory or bpe .gz); absent: merges learnt from the texts")
    trusted: bool = key(False, "allow checkpoints that need the unsafe pickle loader")
    index: Optional[str] = key(None, "index.jsonl: its class names join the tokenizer's texts")
    captions: Optional[str] = key(None, "captions.json: the tokenizer's texts")
    classes: Optional[List[str]] = key(None, "class names for the tokenizer's texts")
    prompt_template: str = key("a photo of a {cls}", "class prompt template")
    default_caption: str = key("", "accepted for symmetry with the data keys; unused")
    num_merges: int = key(400, "BPE merges learnt when no tokenizer is given", minimum=0)
    control_levels: Optional[int] = key(None, "UNet levels, from the bottom, whose decoder skips get the SG "
                                              "branch's controls: 1 = DiAD's only-mid control (the presets' "
                                              "default), the UNet's level count = every skip", minimum=1)
    res_blocks: Optional[int] = key(None, "ResBlocks per level of the UNet and the SG branch (the preset's "
                                          "num_res_blocks unless set; 1 takes about a third of the small "
                                          "preset's denoiser operators away)", minimum=1)
    latent_norm: bool = key(False, "normalise each latent channel to zero mean and unit spread, measured on the "
                                   "training normals (deterministic autoencoders: taef presets)")
    latent_scale: str = key("auto", "the diffusion latent scale: measured = 1/std of the autoencoder's latents on "
                                    "the training normals (the unit variance the schedule assumes); preset = the "
                                    "preset's (SD's 0.18215 for KL autoencoders, made for kl-f8's latents); auto = "
                                    "measured, except the preset's when the UNet starts from sd_checkpoint (SD's "
                                    "UNet learnt on latents scaled by 0.18215) or no index is given",
                            choices=LATENT_SCALES)
    out: Optional[str] = key(None, "model file to write (default RUN/model.pt)")

    def check(self, stage: str) -> None:
        """The rules that join two keys."""
        super().check(stage)
        if self.latent_scale == "measured" and not self.index:
            raise RuntimeError(f"{stage} config: latent_scale measured needs the index to measure the latents on")


@dataclass
class TrainConfig(DataKeys, Common):
    """train: train the denoiser -> outputs {"model": RUN/model-trained.pt, "checkpoint": last}."""
    model: str = key("", "the build stage's model file", required=True)
    lr: float = key(1e-5, "AdamW learning rate", minimum=0)
    weight_decay: float = key(0.01, "AdamW weight decay", minimum=0)
    batch_size: int = key(1, "images per micro-batch", minimum=1)
    accumulate: int = key(1, "micro-batches per optimiser step", minimum=1)
    max_steps: Optional[int] = key(None, "optimiser steps (or give epochs)", minimum=1)
    epochs: Optional[int] = key(None, "epochs, when max_steps is not given", minimum=1)
    save_every: int = key(100, "checkpoint every N steps", minimum=1)
    keep: int = key(2, "checkpoints kept", minimum=1)
    log_every: int = key(1, "progress event every N steps", minimum=1)
    amp: str = key("none", "none | bf16 | fp16 (GPU only)", choices=("none", "bf16", "fp16"))
    memory_format: str = key("auto", MEMORY_FORMAT_DOC, choices=MEMORY_FORMATS)
    grad_clip: float = key(0.0, "gradient norm clip (0 = off)", minimum=0)
    posterior: str = key("sample", "sample | mean: the latent the denoiser learns on", choices=POSTERIORS)
    linear_start: float = key(0.00085, "beta schedule start", minimum=0, maximum=1)
    linear_end: float = key(0.012, "beta schedule end", minimum=0, maximum=1)
    train_steps: int = key(1000, "diffusion steps T", minimum=2)
    val_every: int = key(0, "validation loss every N optimiser steps (0: once per epoch)", minimum=0)
    val_images: int = key(32, "validation normals (the index's val split) in the validation loss; 0: none",
                          minimum=0)
    select: str = key("last", "last | best_val: the weights saved as the model (best_val: lowest validation loss)",
                      choices=("last", "best_val"))
    early_stop_patience: int = key(0, "stop after N validations without improvement (0: off)", minimum=0)
    snapshot_every: int = key(0, "write a model file every N epochs into RUN/snapshots, the candidates the select "
                                 "stage scores on synthetic defects (0: none)", minimum=0)

    def check(self, stage: str) -> None:
        """The rules that join two keys."""
        super().check(stage)
        if not self.max_steps and not self.epochs:
            raise RuntimeError(f"{stage} config: give max_steps or epochs")
        if self.amp == "fp16" and not self.device.startswith("cuda"):
            # fp16 needs the GPU's GradScaler path; the CPU autocasts to bf16 only
            raise RuntimeError(f"{stage} config: amp fp16 needs device cuda (use amp bf16 on the CPU)")


@dataclass
class ExportConfig(Common):
    """export: write the bundle -> outputs {"bundle": DIR, "manifest": DIR/bundle.json, "probes": DIR}."""
    seed: int = key(1234, "seed of the parity probes' inputs")
    model: str = key("", "the model file to export", required=True)
    out: str = key("", "bundle directory", required=True)
    name: str = key("vlmdiff", "bundle name")
    version: str = key("0.0.0", "bundle version")
    description: str = key("", "bundle description")
    dataset: str = key("", "provenance: the training data")
    features_onnx: Optional[str] = key(None, "ONNX feature backbone copied into the bundle")
    feature_layers: Optional[List[list]] = key(None, "[[name, weight], ...] of the feature graph")
    keep_outputs: Optional[List[str]] = key(None, "outputs of features_onnx kept in the bundle's feature graph "
                                                  "beside feature_layers, unmapped: the nearest-normal term's "
                                                  "layers, which the scorer then takes from the feature graph")
    feature_match: Optional[Dict[str, int]] = key(None, "{name: radius}: compare a layer's features with the "
                                                        "reconstruction's best match within radius cells "
                                                        "(manifest features.layers[].match; 0..3)")
    features_random: Optional[dict] = key(None, '{"seed": int, "widths": [3 ints]}: seeded random conv features '
                                                "(layer1 /4, layer2 /8), for redistributable bundles")
    classes: Optional[List[str]] = key(None, "one conditioning entry per class")
    prompt_template: str = key("a photo of a {cls}", "class prompt template")
    probes: Optional[str] = key(None, "directory for the parity probes")
    posterior: str = key("mean", "manifest latent.posterior: sample | mean", choices=POSTERIORS)
    sigma: Optional[float] = key(None, "manifest map.sigma override", minimum=0)
    guidance_scale: Optional[float] = key(None, "manifest diffusion.guidance_scale override")
    ddim_steps: Optional[int] = key(None, "manifest diffusion.ddim_steps override", minimum=1)
    start_step: Optional[int] = key(None, "manifest diffusion.start_step override", minimum=0)
    sampler_from_start_step: Optional[bool] = key(None, "manifest diffusion.sampler_from_start_step: run only the "
                                                        "DDIM steps at or below start_step (SDEdit-style)")
    ensemble: Optional[int] = key(None, "manifest diffusion.ensemble: start noises per frame, whose maps are "
                                        "averaged (default 1); the default static graphs cover its multiples",
                                    minimum=1, maximum=MAX_ENSEMBLE)
    input_size: Optional[int] = key(None, "square input size trained at, when not the preset's", minimum=8)
    denoiser_static_batches: Optional[List[int]] = key(None, "batch sizes of the static-shape denoiser graphs "
                                                             "(context baked in; default [1, 2, 4]; [] for none)",
                                                            minimum=1)
    overwrite: bool = key(True, "replace a bundle already in out")


STAGES: Dict[str, type] = {"finetune-ae": FinetuneAEConfig, "build": BuildConfig, "train": TrainConfig,
                           "export": ExportConfig}


def _check(v: Any, tp: Any) -> bool:
    """Whether a JSON value fits a field type (None is handled by the caller)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        return any(_check(v, a) for a in args if a is not type(None))
    if tp is Any:
        return True
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if tp is str:
        return isinstance(v, str)
    if tp in (list, List) or origin is list:
        return isinstance(v, list) and (not args or all(_check(x, args[0]) for x in v))
    if tp in (dict, Dict) or origin is dict:
        return isinstance(v, dict)
    raise TypeError(f"stage_config: unsupported field type {tp!r}")


def type_name(tp: Any) -> str:
    """The schema's name of a field type: str, int, float, bool, dict, list[...] (Optional[X] is X)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        return type_name(next(a for a in args if a is not type(None)))
    if origin is list or tp in (list, List):
        return f"list[{type_name(args[0])}]" if args else "list"
    if origin is dict or tp in (dict, Dict):
        return "dict"
    return tp.__name__


def _nullable(tp: Any) -> bool:
    return typing.get_origin(tp) is typing.Union and type(None) in typing.get_args(tp)


def _out_of_range(v: Any, md: dict) -> Optional[str]:
    """Why v (already of its field's type) is outside the values its field accepts, or None."""
    choices, lo, hi = md.get("choices"), md.get("minimum"), md.get("maximum")
    if choices and isinstance(v, str) and v not in choices:
        return f"{v!r} is not one of {', '.join(choices)}"
    for x in (v if isinstance(v, list) else [v]):
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            continue
        if lo is not None and x < lo:
            return f"{x!r} is below its minimum {lo}"
        if hi is not None and x > hi:
            return f"{x!r} is above its maximum {hi}"
    return None


def check_values(c: Any, stage: str) -> None:
    """Refuses (RuntimeError naming the key) a field of the config c outside its accepted values, then runs the
    class's own check() for the rules that join two keys."""
    for f in dataclasses.fields(c):
        v = getattr(c, f.name)
        why = None if v is None else _out_of_range(v, f.metadata)
        if why:
            raise RuntimeError(f"{stage} config: {f.name}: {why}")
    extra = getattr(c, "check", None)
    if extra is not None:
        extra(stage)


def parse(cls: Type[T], cfg: Any, stage: str) -> T:
    """cfg (a dict, or already a cls) as a cls. Unknown keys, missing required keys, wrong types and values out of
    range raise RuntimeError naming the key; absent or null keys take their default."""
    if isinstance(cfg, cls):
        check_values(cfg, stage)
        return cfg
    if not isinstance(cfg, dict):
        raise RuntimeError(f"{stage} config: want a JSON object, got {type(cfg).__name__}")
    fs = dataclasses.fields(cls)
    allowed = {f.name for f in fs}
    bad = sorted(set(cfg) - allowed)
    if bad:
        raise RuntimeError(f"{stage} config: unknown keys {bad} (allowed: {sorted(allowed)})")
    hints = typing.get_type_hints(cls)
    kw = {}
    for f in fs:
        v = cfg.get(f.name)
        if v is None or (v == "" and f.metadata.get("required")):
            if f.metadata.get("required"):
                raise RuntimeError(f"{stage} config: {f.name!r} is required")
            continue
        if not _check(v, hints[f.name]):
            raise RuntimeError(f"{stage} config: {f.name}: want {type_name(hints[f.name])}, got {v!r}")
        kw[f.name] = v
    c = cls(**kw)
    check_values(c, stage)
    return c


def parse_stage(stage: str, cfg: Any):
    """The typed config of a Python stage (finetune-ae, build, train, export)."""
    try:
        cls = STAGES[stage]
    except KeyError:
        raise RuntimeError(f"no stage config for {stage!r} (have {sorted(STAGES)})") from None
    return parse(cls, cfg, stage)


def schema(cls: type) -> Dict[str, dict]:
    """{key: {"type", "nullable", "required", "default", "doc", "minimum", "maximum", "choices"}} of a stage config
    class (the last three null where the field takes any value of its type)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        d = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        md = f.metadata
        out[f.name] = {"type": type_name(hints[f.name]), "nullable": _nullable(hints[f.name]),
                       "required": bool(md.get("required")), "default": d, "doc": md.get("doc", ""),
                       "minimum": md.get("minimum"), "maximum": md.get("maximum"), "choices": md.get("choices")}
    return out


def _accepts(f: dict) -> str:
    """What a schema field accepts beyond its type, for --help: "", ", >= 1", ", 1..16", ", one of a|b"."""
    lo, hi, ch = f["minimum"], f["maximum"], f["choices"]
    if ch:
        return ", one of " + "|".join(ch)
    if lo is not None and hi is not None:
        return f", {lo}..{hi}"
    if lo is not None:
        return f", >= {lo}"
    if hi is not None:
        return f", <= {hi}"
    return ""


def describe() -> str:
    """The keys of every stage, for --help."""
    lines = ["CONFIG.json keys by stage (unknown keys are refused; absent or null keys take the default):"]
    for stage, cls in STAGES.items():
        lines.append("")
        lines.append(f"  {(cls.__doc__ or stage).strip()}")
        for name, f in schema(cls).items():
            dflt = "required" if f["required"] else f"default {f['default']!r}"
            lines.append(f"    {name} ({f['type']}{_accepts(f)}, {dflt}): {f['doc']}")
    return "\n".join(lines)

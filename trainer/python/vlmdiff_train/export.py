"""Writing a model bundle (models/manifest.go is the contract) from torch networks.

A bundle directory holds bundle.json, one ONNX graph per role (vae_encoder, hint, denoiser, vae_decoder, features)
with the fixed tensor names of models/manifest.go, and conditioning.bin (the text encoder's outputs, precomputed so
the agent needs no text encoder). Every file except bundle.json is listed in the manifest with its sha256 and size.

Beside the bundle this module writes:
  - parity probes for the Go side's ONNX Runtime check (there is no Python onnxruntime here): per role,
    <role>.json = {"inputs": {name: {"file", "shape", "type"}}, "outputs": {name: {"file", "shape", "type"}}}
    with raw little-endian files beside it, computed by torch at batch 2 on seeded random inputs.
The torch state the reference scorer rebuilds the networks from is a model file (model_file.py).

Graphs larger than 2 GB (the sd15 denoiser) are stored with their weights in one external data file
<role>.onnx.data, which is listed in the manifest like any other file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import torch

log = logging.getLogger(__name__)

from .constants import IMAGENET_MEAN, IMAGENET_STD, LATENT_SCALE

OPSET = 17  # torch 1.13 exports up to 17


# ---------------------------------------------------------------------------------------------------------------
# Role wrappers: give each graph its fixed signature and tensor names
# ---------------------------------------------------------------------------------------------------------------

class VAEEncoderGraph(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, image):
        return self.vae.encode_moments(image)


class VAEDecoderGraph(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent):
        return self.vae.decode(latent)


class HintGraph(torch.nn.Module):
    """image -> hint features. `fn` is the hint block (e.g. sgn.hint_features)."""

    def __init__(self, owner: torch.nn.Module, fn_name: str = "hint_features"):
        super().__init__()
        self.owner = owner
        self.fn_name = fn_name

    def forward(self, image):
        return getattr(self.owner, self.fn_name)(image)


class DenoiserGraph(torch.nn.Module):
    def __init__(self, denoiser):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x, t, context, hint):
        return self.denoiser(x, t, context, hint)


class StaticDenoiserGraph(torch.nn.Module):
    """The denoiser specialised for one batch size and one constant text context (issue 14, the overhead lever).

    The context is a buffer, so the exported graph has no context input, and with every shape static the
    exporter's constant folding removes what a dynamic-batch graph recomputes at every step: the Shape, Gather,
    Concat and Unsqueeze chains that rebuild reshape targets from the batch size, and the cross-attention keys and
    values of the context (to_k(context), to_v(context) become constants, computed once at export)."""

    def __init__(self, denoiser, context: torch.Tensor, batch: int):
        super().__init__()
        self.denoiser = denoiser
        self.register_buffer("context", context.expand(batch, -1, -1).contiguous().clone())

    def forward(self, x, t, hint):
        return self.denoiser(x, t, self.context, hint)


class FeaturesGraph(torch.nn.Module):
    """image -> one output per layer, in the manifest's layer order."""

    def __init__(self, features, layers: Sequence[str]):
        super().__init__()
        self.features = features
        self.layers = list(layers)

    def forward(self, image):
        out = self.features(image)
        return tuple(out[n] for n in self.layers)


# ---------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------

def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_files(bundle_dir: str) -> Dict[str, Dict[str, Any]]:
    """sha256 and size of every file under bundle_dir except bundle.json (paths relative, '/'-separated)."""
    files = {}
    for root, _, names in os.walk(bundle_dir):
        for n in sorted(names):
            p = os.path.join(root, n)
            rel = os.path.relpath(p, bundle_dir).replace(os.sep, "/")
            if rel == "bundle.json" or rel.endswith(".tmp"):
                continue
            files[rel] = {"sha256": sha256_file(p), "size": os.path.getsize(p)}
    return dict(sorted(files.items()))


def write_manifest(bundle_dir: str, manifest: dict) -> str:
    """Writes bundle.json atomically (temp file + rename), so a reader never sees half a manifest."""
    path = os.path.join(bundle_dir, "bundle.json")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def rewrite_calibration(bundle_dir: str, calibration: dict) -> dict:
    """The calibrate stage's hook: replace the manifest's calibration section and re-hash the bundle's files."""
    path = os.path.join(bundle_dir, "bundle.json")
    with open(path, "r", encoding="utf-8") as f:
        m = json.load(f)
    if "global" not in calibration:
        raise RuntimeError("calibration: missing 'global' section")
    m["calibration"] = calibration
    m["files"] = hash_files(bundle_dir)
    write_manifest(bundle_dir, m)
    return m


def default_calibration(layer_weights: Sequence[float]) -> dict:
    """Placeholder thresholds until the calibrate stage measures normal scores. 1-cos lies in [0,2] per layer, so
    the raw score lies in [0, 2*sum(w)]; the default threshold is the middle of the lower half."""
    s = float(sum(layer_weights))
    return {"method": "uncalibrated",
            "global": {"threshold": 0.5 * s, "min": 0.0, "max": 2.0 * s, "pixel_threshold": 0.5 * s}}


def _np_type(t: torch.Tensor) -> str:
    return {torch.float32: "float32", torch.int64: "int64", torch.float16: "float16"}[t.dtype]


def _spec(name: str, t: torch.Tensor) -> dict:
    return {"name": name, "type": _np_type(t), "shape": [-1] + [int(s) for s in t.shape[1:]]}


# ---------------------------------------------------------------------------------------------------------------
# ONNX export
# ---------------------------------------------------------------------------------------------------------------

# PyTorch 2.9 made the dynamo exporter torch.onnx.export's default. Every graph here is written by the tracing
# exporter (opset 14-17, dynamic_axes, the operator set onnx_torch and the Go pipeline were checked against), so
# a newer PyTorch that has the switch is asked for it by name; 1.13 (Debian's) has no switch and only traces.
TRACING_EXPORT = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def export_graph(module: torch.nn.Module, args: Tuple[torch.Tensor, ...], in_names: List[str],
                 out_names: List[str], path: str, opset: int = OPSET, dynamic: bool = True) -> None:
    """torch.onnx.export (at opset) with a dynamic batch axis on every input and output (none with dynamic
    False: every shape is then the example's, and constant folding removes the shape computations), then
    onnx.checker.

    Graphs over 2 GB come out of torch with one external file per tensor; they are re-saved with a single
    <file>.data so the bundle stays a short list of files.
    """
    module = module.eval()
    dyn = {n: {0: "batch"} for n in in_names + out_names} if dynamic else None
    tmpdir = tempfile.mkdtemp(prefix="export-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        tmp = os.path.join(tmpdir, os.path.basename(path))
        with torch.no_grad():
            torch.onnx.export(module, args, tmp, input_names=in_names, output_names=out_names, dynamic_axes=dyn,
                              opset_version=opset, do_constant_folding=True, **TRACING_EXPORT)
        extra = [n for n in os.listdir(tmpdir) if n != os.path.basename(path)]
        if not extra:
            os.replace(tmp, path)
        else:
            model = onnx.load(tmp)  # loads the external tensors
            data = os.path.basename(path) + ".data"
            onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data, size_threshold=1024)
    except Exception as e:
        raise RuntimeError(f"exporting {os.path.basename(path)}: {e}") from e
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    try:
        onnx.checker.check_model(path)
    except Exception as e:
        raise RuntimeError(f"onnx checker on {path}: {e}") from e


def fuse_groupnorms(path: str) -> int:
    """onnx_fuse.groupnorm_per_channel on an exported graph file, rewritten in place when it changed anything;
    returns how many GroupNorms became one InstanceNormalization each. The bundle's probes, computed with torch,
    check the rewritten graph through ONNX Runtime whenever the bundle is opened."""
    from .onnx_fuse import groupnorm_per_channel

    if os.path.exists(path + ".data"):  # graphs over 2 GB (sd15's UNet) are not the ones this is for
        return 0
    model = onnx.load(path)
    before = len(model.graph.node)
    n = groupnorm_per_channel(model)
    if n:
        onnx.checker.check_model(model)
        onnx.save(model, path)
        log.info("%s: %d GroupNorms with one channel per group made InstanceNormalizations (%d -> %d operators)",
                 os.path.basename(path), n, before, len(model.graph.node))
    return n


def default_static_batches(denoiser: torch.nn.Module, ensemble: int = 1) -> Tuple[int, ...]:
    """The denoiser rows of 1, 2 and 4 frames (each frame is `ensemble` rows, one per start noise) for a denoiser
    under 256 M parameters (each static graph is a copy of its weights); none for larger ones (sd15's 5.3 GB
    denoiser is not worth tripling; a GPU runs it without this overhead)."""
    k = max(int(ensemble), 1)
    return tuple(k * b for b in (1, 2, 4)) if sum(p.numel() for p in denoiser.parameters()) < 256_000_000 else ()


TIME_SPLITS = ("conv_bias", "inputs", "none")
MAX_MATCH = 3  # models.MaxMatch
TIME_FILE = "denoiser_time.onnx"


def export_static_denoisers(out_dir: str, denoiser, context: torch.Tensor, key: str, batches: Sequence[int],
                            latent_shape: Tuple[int, int, int], hint1: torch.Tensor,
                            gen: torch.Generator, fold: bool = True,
                            time_split: str = "inputs", fuse: bool = True) -> Tuple[List[dict], Optional[dict]]:
    """Exports denoiser_b<B>.onnx for each batch size: StaticDenoiserGraph with the context of conditioning key
    `key` ([tokens, dim]), inputs x [B,C,h,w], t [B], hint [B,...] and output eps, all shapes fixed; then, with
    fold, onnx_fold.fold_constants (the shape chains and the context's keys and values that torch's folding
    leaves), onnx_fold.remove_noop_casts (float32 -> float32) and onnx_affine.fold_affine_into_conv (a GroupNorm's
    affine into the 1x1 convolution after it); then, with fuse, onnx_fuse.fuse_attention (each attention one
    MultiHeadAttention) and onnx_fuse.affine_to_batchnorm (the other GroupNorm affines one BatchNormalization).

    With time_split other than "none" (and fold), everything that depends only on t moves into one time graph,
    denoiser_time.onnx (onnx_time.split_time): input t [1], outputs the time tensors TIME_PREFIX<i>; each static
    graph then takes those tensors in place of t ("time_inputs"), one row broadcast over its batch, so its rows
    share one timestep. "conv_bias" also folds each ResBlock's embedding into its convolution's bias; that costs
    more than the Add it saves on a CPU, because ONNX Runtime gives a convolution whose bias is a graph input no
    NCHWc kernel (docs/operations.md), so "inputs" is the default. The time
    graph is cut from the batch-1 graph (exported for the cut when 1 is not among batches) and every batch
    size's graph must have the same time tensors.

    Returns the manifest's graphs.denoiser.static entries and its graphs.denoiser.time entry (None without a
    time graph)."""
    if time_split not in TIME_SPLITS:
        raise RuntimeError(f"denoiser time split {time_split!r}: want one of {TIME_SPLITS}")
    split = fold and time_split != "none"
    want = sorted({int(v) for v in batches})
    for b in want:
        if b < 1:
            raise RuntimeError(f"denoiser_static_batches: {b} is not a batch size")
    specs = []
    time_spec: Optional[dict] = None
    time_sources: Optional[List[str]] = None
    tmp_b1 = split and 1 not in want
    for b in ([1] if tmp_b1 else []) + want:
        fname = f"denoiser_b{b}.onnx"
        ins = {"x": torch.randn(b, *latent_shape, generator=gen),
               "t": torch.full((b,), 500, dtype=torch.int64),
               "hint": hint1[:1].expand(b, *hint1.shape[1:]).contiguous()}
        path = os.path.join(out_dir, fname)
        export_graph(StaticDenoiserGraph(denoiser, context[None], b), tuple(ins.values()), list(ins), ["eps"],
                     path, dynamic=False)
        if fold:
            from .onnx_affine import fold_affine_into_conv
            from .onnx_fold import fold_constants, remove_noop_casts
            model = onnx.load(path)
            n = fold_constants(model)
            casts = remove_noop_casts(model)
            affine = fold_affine_into_conv(model)
            log.info("static denoiser %s: %d constant nodes folded, %d no-op casts removed, %d affines folded "
                     "into 1x1 convolutions, %d nodes left", fname, n, casts, affine, len(model.graph.node))
            if fuse:
                from .onnx_fuse import affine_to_batchnorm, fuse_attention
                attn, bn = fuse_attention(model), affine_to_batchnorm(model)
                log.info("static denoiser %s: %d attentions fused into MultiHeadAttention, %d GroupNorm affines "
                         "made BatchNormalization, %d nodes left", fname, attn, bn, len(model.graph.node))
            if split:
                from .onnx_time import split_time
                parts = split_time(model, conv_bias=time_split == "conv_bias")
                if time_sources is None:  # batch 1, first
                    onnx.checker.check_model(parts.time)
                    onnx.save(parts.time, os.path.join(out_dir, TIME_FILE))
                    time_sources = parts.sources
                    time_spec = {"file": TIME_FILE, "outputs": [{"name": nm, "type": "float32", "shape": sh}
                                                                for nm, sh in zip(parts.names, parts.shapes)]}
                    log.info("denoiser time graph %s: %d nodes, %d time tensors", TIME_FILE,
                             len(parts.time.graph.node), len(parts.names))
                elif parts.sources != time_sources:
                    raise RuntimeError(f"static denoiser {fname}: its timestep tensors differ from the batch-1 "
                                       "graph's; the time graph cannot serve it")
                model = parts.step
                log.info("static denoiser %s: %d nodes after the time split", fname, len(model.graph.node))
            onnx.checker.check_model(model)
            onnx.save(model, path)
        if tmp_b1 and b == 1 and not specs:
            os.remove(path)  # exported only to cut the time graph from
            tmp_b1 = False
            continue
        spec = {"file": fname, "batch": b, "context": key}
        if split:
            spec["time_inputs"] = True
        specs.append(spec)
    return specs, time_spec


def write_feature_graph(src: str, layers: Sequence[str], dst: str) -> None:
    """Writes the backbone file src to dst cut to the part that computes `layers` (onnx_prune): ONNX Runtime runs
    every node of a graph whatever is fetched, and a backbone file usually offers deeper layers than a bundle maps
    (the small preset's MobileNetV2: 30% of its multiply-adds). A graph that cannot be cut (control flow) is
    copied as it is."""
    from .onnx_prune import prune_to_outputs
    model = onnx.load(src)
    try:
        cut, removed = prune_to_outputs(model, layers)
    except RuntimeError as e:
        log.warning("feature graph %s: copied whole: %s", os.path.basename(src), e)
        shutil.copyfile(src, dst)
        return
    if removed == 0:
        shutil.copyfile(src, dst)
        return
    onnx.checker.check_model(cut)
    onnx.save(cut, dst)
    log.info("feature graph %s: cut to %s: %d of %d nodes removed", os.path.basename(src), ", ".join(layers),
             removed, len(model.graph.node))


def onnx_io_names(path: str) -> Tuple[List[str], List[str]]:
    m = onnx.load(path, load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    return [i.name for i in m.graph.input if i.name not in inits], [o.name for o in m.graph.output]


# ---------------------------------------------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------------------------------------------

def write_probe(probe_dir: str, role: str, inputs: Dict[str, torch.Tensor], outputs: Dict[str, torch.Tensor]) -> str:
    """Writes <role>.json and its raw little-endian tensor files."""
    os.makedirs(probe_dir, exist_ok=True)
    doc: Dict[str, Dict[str, Any]] = {"inputs": {}, "outputs": {}}
    for kind, tensors in (("inputs", inputs), ("outputs", outputs)):
        for name, t in tensors.items():
            t = t.detach().contiguous()
            fname = f"{role}.{kind[:-1]}.{name}.bin"
            arr = t.numpy()
            arr.astype(arr.dtype.newbyteorder("<")).tofile(os.path.join(probe_dir, fname))
            doc[kind][name] = {"file": fname, "shape": [int(s) for s in t.shape], "type": _np_type(t)}
    p = os.path.join(probe_dir, f"{role}.json")
    with open(p, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    return p


# ---------------------------------------------------------------------------------------------------------------
# Bundle
# ---------------------------------------------------------------------------------------------------------------

def export_bundle(out_dir: str, *, vae, denoiser, features: Optional[torch.nn.Module], layers: Sequence[Tuple[str, float]],
                  layer_match: Optional[Dict[str, int]] = None,
                  conditioning: Sequence[Tuple[str, str, np.ndarray]], latent_channels: int, downsample: int,
                  hint_owner: Optional[torch.nn.Module] = None, hint_fn: str = "hint_features",
                  feature_onnx: Optional[str] = None, feature_input: str = "image",
                  keep_outputs: Sequence[str] = (),
                  feature_mean: Optional[Sequence[float]] = None, feature_std: Optional[Sequence[float]] = None,
                  height: int = 256, width: int = 256, mean: Sequence[float] = IMAGENET_MEAN,
                  std: Sequence[float] = IMAGENET_STD, name: str = "vlmdiff", version: str = "0.0.0",
                  description: str = "", provenance: Optional[dict] = None, diffusion: Optional[dict] = None,
                  latent: Optional[dict] = None, map_spec: Optional[dict] = None, score: Optional[dict] = None,
                  calibration: Optional[dict] = None, default_key: str = "", unconditional_key: str = "",
                  created: Optional[str] = None, probe_dir: Optional[str] = None, probe_seed: int = 1234,
                  denoiser_static_batches: Sequence[int] = (), fold_static: bool = True,
                  static_time: str = "inputs", fuse_static: bool = True, fuse_vae: bool = True,
                  overwrite: bool = False) -> dict:
    """Exports the networks into a bundle directory and returns the manifest written.

    conditioning: (key, prompt, array [tokens, dim]) per entry; it must contain the unconditional key.
    features: a torch module returning {layer: tensor}, or None with feature_onnx naming an ONNX backbone file that
    is copied into the bundle (its input normalisation must match the bundle's input, or give feature_mean/std).
    denoiser_static_batches: batch sizes for which a static-shape denoiser with the unconditional context baked in
    is exported beside the dynamic one (graphs.denoiser.static; StaticDenoiserGraph).
    static_time: how the static graphs take the timestep (export_static_denoisers): "inputs" or "conv_bias"
    (a time graph, graphs.denoiser.time, computes the t-only tensors once per timestep) or "none" (t as input).
    fuse_static: the operator fusions of onnx_fuse on the static graphs (off only for A/B runs).
    fuse_vae: onnx_fuse.groupnorm_per_channel on the autoencoder's graphs (off only for A/B runs).
    keep_outputs: outputs of feature_onnx that the bundle's feature graph keeps beside the layers, declared in
    graphs.features.outputs but not mapped (features.layers): the nearest-normal term's layers, so the scorer
    can feed the term from the feature graph whatever layers the map weighs. Names the file lacks are ignored.
    The feature graph is cut to the layers and these (write_feature_graph).
    """
    if os.path.exists(os.path.join(out_dir, "bundle.json")) and not overwrite:
        raise RuntimeError(f"bundle directory {out_dir} already holds a bundle (overwrite not requested)")
    os.makedirs(out_dir, exist_ok=True)
    for n in os.listdir(out_dir):  # a rebuilt bundle must not keep stale files that the manifest would then list
        p = os.path.join(out_dir, n)
        if os.path.isfile(p):
            os.remove(p)
    keys = [c[0] for c in conditioning]
    if len(set(keys)) != len(keys):
        raise RuntimeError(f"conditioning keys are not unique: {keys}")
    for k in (unconditional_key, default_key):
        if k not in keys:
            raise RuntimeError(f"conditioning key {k!r} is missing (have {keys})")
    cond = np.stack([np.asarray(c[2], dtype=np.float32) for c in conditioning])
    if cond.ndim != 3 or not np.all(np.isfinite(cond)):
        raise RuntimeError(f"conditioning must be finite [entries, tokens, dim], got shape {cond.shape}")
    cond.astype("<f4").tofile(os.path.join(out_dir, "conditioning.bin"))

    gen = torch.Generator().manual_seed(probe_seed)
    h, w = height // downsample, width // downsample
    image1 = torch.randn(1, 3, height, width, generator=gen)
    image2 = torch.randn(2, 3, height, width, generator=gen)
    graphs: Dict[str, dict] = {}
    probes: Dict[str, Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]] = {}
    T = int((diffusion or {}).get("train_steps", 1000))

    def run(module, ins: Dict[str, torch.Tensor], out_names: List[str]) -> Dict[str, torch.Tensor]:
        with torch.no_grad():
            o = module.eval()(*ins.values())
        if not isinstance(o, (tuple, list)):
            o = (o,)
        return dict(zip(out_names, o))

    def add(role: str, module, ins1: Dict[str, torch.Tensor], ins2: Dict[str, torch.Tensor], out_names: List[str]):
        fname = f"{role}.onnx"
        export_graph(module, tuple(ins1.values()), list(ins1), out_names, os.path.join(out_dir, fname))
        if fuse_vae and role in ("vae_encoder", "vae_decoder"):
            fuse_groupnorms(os.path.join(out_dir, fname))
        outs1 = run(module, ins1, out_names)
        graphs[role] = {"file": fname, "inputs": [_spec(n, t) for n, t in ins1.items()],
                        "outputs": [_spec(n, t) for n, t in outs1.items()]}
        probes[role] = (ins2, run(module, ins2, out_names))
        log.info("exported %s: %s", role, graphs[role])

    add("vae_encoder", VAEEncoderGraph(vae), {"image": image1}, {"image": image2}, ["moments"])
    if hint_owner is not None:
        hg = HintGraph(hint_owner, hint_fn)
        add("hint", hg, {"image": image1}, {"image": image2}, ["hint"])
        hint1, hint2 = run(hg, {"image": image1}, ["hint"])["hint"], probes["hint"][1]["hint"]
    else:
        hint1, hint2 = image1, image2
    tokens, dim = cond.shape[1], cond.shape[2]
    den_in = lambda b, hint: {"x": torch.randn(b, latent_channels, h, w, generator=gen),  # noqa: E731
                              "t": torch.randint(0, T, (b,), generator=gen, dtype=torch.int64),
                              "context": torch.randn(b, tokens, dim, generator=gen), "hint": hint}
    add("denoiser", DenoiserGraph(denoiser), den_in(1, hint1), den_in(2, hint2), ["eps"])
    if denoiser_static_batches:
        static, time_graph = export_static_denoisers(
            out_dir, denoiser, torch.from_numpy(cond[keys.index(unconditional_key)]), unconditional_key,
            denoiser_static_batches, (latent_channels, h, w), hint1, torch.Generator().manual_seed(probe_seed + 1),
            fold_static, static_time, fuse_static)
        graphs["denoiser"]["static"] = static
        if time_graph is not None:
            graphs["denoiser"]["time"] = time_graph
    add("vae_decoder", VAEDecoderGraph(vae), {"latent": torch.randn(1, latent_channels, h, w, generator=gen)},
        {"latent": torch.randn(2, latent_channels, h, w, generator=gen)}, ["image"])

    layer_names = [n for n, _ in layers]
    if features is not None:
        add("features", FeaturesGraph(features, layer_names), {feature_input: image1}, {feature_input: image2},
            layer_names)
    else:
        if not feature_onnx:
            raise RuntimeError("export: give either a torch feature network or feature_onnx")
        from .onnx_torch import OnnxModule
        ins, outs = onnx_io_names(feature_onnx)
        missing = [n for n in layer_names if n not in outs]
        if missing:
            raise RuntimeError(f"feature graph {feature_onnx}: layers {missing} are not outputs (has {outs})")
        feature_input = ins[0]
        # unmapped outputs kept for the nearest-normal term (keep_outputs), those the file has
        kept = [n for n in dict.fromkeys(keep_outputs) if n in outs and n not in layer_names]
        write_feature_graph(feature_onnx, layer_names + kept, os.path.join(out_dir, "features.onnx"))
        ft = OnnxModule.load(feature_onnx, outputs=layer_names + kept)
        with torch.no_grad():
            o1 = ft.eval()(image1)
        graphs["features"] = {"file": "features.onnx", "inputs": [_spec(feature_input, image1)],
                              "outputs": [_spec(n, o1[n]) for n in layer_names + kept]}
        with torch.no_grad():
            o2 = ft(image2)
        probes["features"] = ({feature_input: image2}, {n: o2[n] for n in layer_names})

    weights = [float(wt) for _, wt in layers]
    d = {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012, "train_steps": 1000,
         "ddim_steps": 10, "start_step": 999, "eta": 0.0, "guidance_scale": 9.0, "seed": 0, "seed_policy": "fixed"}
    d.update(diffusion or {})
    from .reference import ddim_timesteps
    ddim_timesteps(int(d["train_steps"]), int(d["ddim_steps"]))  # refuses a schedule the scorers cannot run
    lat = {"channels": int(latent_channels), "downsample": int(downsample), "scale_factor": LATENT_SCALE,
           "posterior": "mean", "logvar_clamp_lo": -30.0, "logvar_clamp_hi": 20.0}
    lat.update(latent or {})
    # The paper's smoothing (sigma 5) and pooling (8 passes of an 8x8 mean) are defined on 256 px maps. Scale
    # them with the input size so every bundle sees the same relative neighbourhood: unscaled, a 64 px bundle's
    # ~57 px pooling window would average the whole map and drown a small defect. At 256 px nothing changes.
    rel = min(int(height), int(width)) / 256.0
    mp = {"upsample": "bilinear_align_corners", "sigma": round(5.0 * rel, 4), "truncate": 4.0}
    mp.update(map_spec or {})
    sc = {"pool_kernel": max(1, int(round(8 * rel))), "pool_repeat": 8, "reduce": "max"}
    sc.update(score or {})
    feats: Dict[str, Any] = {"input": feature_input, "layers": [{"name": n, "weight": float(wt)} for n, wt in layers]}
    for ly in feats["layers"]:
        if int((layer_match or {}).get(ly["name"], 0)) > 0:
            ly["match"] = int(layer_match[ly["name"]])
    # A ViT's outputs are tokens [B,1+N,D] (CLS first), a CNN's maps [B,C,h,w]; the map code needs to know which.
    ranks = {len(o["shape"]) for o in graphs["features"]["outputs"]}
    if ranks == {3}:
        feats["tokens"] = True
        if any(ly.get("match") for ly in feats["layers"]):
            raise RuntimeError("export: feature_match is for map features; this feature graph outputs ViT tokens")
    elif ranks != {4}:
        raise RuntimeError(f"feature graph outputs {graphs['features']['outputs']}: want all [B,C,h,w] maps or all "
                           "[B,1+N,D] ViT tokens")
    if feature_mean is not None and feature_std is not None:
        feats["mean"], feats["std"] = [float(v) for v in feature_mean], [float(v) for v in feature_std]
    if created is None:
        created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    prov = {"trainer": f"vlmdiff-trainer 0.1 (torch {torch.__version__.split('+')[0]})"}
    prov.update(provenance or {})
    manifest = {
        "format": 1, "name": name, "version": version, "created": created, "description": description,
        "provenance": prov,
        "input": {"height": int(height), "width": int(width), "channel_order": "RGB", "resize": "pil_bilinear",
                  "mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        "latent": lat, "diffusion": d,
        "conditioning": {"file": "conditioning.bin", "tokens": int(tokens), "dim": int(dim),
                         "entries": [{"key": k, "prompt": p} for k, p, _ in conditioning],
                         "unconditional": unconditional_key, "default": default_key},
        "features": feats, "map": mp, "score": sc,
        "calibration": calibration or default_calibration(weights),
        "graphs": dict(sorted(graphs.items())),
        "files": hash_files(out_dir),
    }
    write_manifest(out_dir, manifest)
    if probe_dir:
        for role, (ins, outs) in probes.items():
            write_probe(probe_dir, role, ins, outs)
    return manifest


def verify_bundle(bundle_dir: str) -> List[str]:
    """Returns a list of problems (empty when the files match the manifest and every graph passes the checker)."""
    problems = []
    with open(os.path.join(bundle_dir, "bundle.json"), encoding="utf-8") as f:
        m = json.load(f)
    actual = hash_files(bundle_dir)
    for name, fe in m["files"].items():
        if name not in actual:
            problems.append(f"{name}: missing")
        elif actual[name] != fe:
            problems.append(f"{name}: sha256/size mismatch")
    for name in actual:
        if name not in m["files"]:
            problems.append(f"{name}: not listed in the manifest")
    for role, g in m["graphs"].items():
        p = os.path.join(bundle_dir, g["file"])
        try:
            onnx.checker.check_model(p)
        except Exception as e:
            problems.append(f"{role}: onnx checker: {e}")
            continue
        try:
            ins, outs = onnx_io_names(p)
        except Exception as e:  # the checker's C++ parser forgives trailing bytes that protobuf >= 5 refuses
            problems.append(f"{role}: reading {g['file']}: {e}")
            continue
        for t in g["inputs"]:
            if t["name"] not in ins:
                problems.append(f"{role}: input {t['name']} not in graph {ins}")
        for t in g["outputs"]:
            if t["name"] not in outs:
                problems.append(f"{role}: output {t['name']} not in graph {outs}")
        tg = g.get("time")
        if tg:
            names = [o["name"] for o in tg["outputs"]]
            try:
                onnx.checker.check_model(os.path.join(bundle_dir, tg["file"]))
                tins, touts = onnx_io_names(os.path.join(bundle_dir, tg["file"]))
            except Exception as e:
                problems.append(f"{role}: time graph: {e}")
                continue
            if tins != ["t"] or touts != names:
                problems.append(f"{role}: time graph takes {tins} and gives {touts}, want ['t'] and {names}")
            for sg in g.get("static", []):
                if sg.get("time_inputs") and onnx_io_names(os.path.join(bundle_dir, sg["file"]))[0][2:] != names:
                    problems.append(f"{role}: static graph {sg['file']} does not take the time tensors {names}")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# The `export` stage
# ---------------------------------------------------------------------------------------------------------------

def run_export(cfg) -> dict:
    """Export a trained model file into a bundle; cfg is an ExportConfig (stage_config.py) or a dict of its keys."""
    from .model_file import encode_prompts, latent_scale, load_model_file, rebuild
    from .stage_config import parse_stage

    c = parse_stage("export", cfg)
    out = c.out
    blob = load_model_file(c.model)
    nets, tok = rebuild(blob)
    nets.eval()
    b = blob["builder"]
    if b["kind"] == "preset":
        from . import presets
        p = presets.get_preset(b["name"])
        size, channels, ds, preset_name = p.input_size, p.latent_channels, p.downsample, p.name
        default_layers = list(zip(p.features.layers, p.features.weights)) if p.features.kind == "onnx" else []
    else:
        spec = b["spec"]
        size, channels = int(spec["height"]), int(spec["vae"]["embed_dim"])
        ds, preset_name, default_layers = 2 ** (len(spec["vae"]["ch_mult"]) - 1), "fixture", []
    if c.input_size:
        # The networks are convolutional: a model trained at another square size than its preset's (e.g. a
        # dataset of 128 px images scored at its native size) exports at the size it was trained at.
        size = int(c.input_size)
        if size % ds:
            raise RuntimeError(f"export config: input_size {size} is not a multiple of the VAE downsample {ds}")
    if c.features_random:
        # A seeded random-weight conv net as the feature extractor: for bundles that must be redistributable
        # (the committed demo), since no pretrained third-party backbone may ship with them. Random conv
        # features still describe local colour and texture, which is what small synthetic defects disturb.
        from .model_file import TinyFeatures
        fr = c.features_random
        g = torch.Generator().manual_seed(int(fr.get("seed", 0)))
        feats = TinyFeatures(tuple(fr.get("widths", (16, 24, 32))))
        with torch.no_grad():
            for prm in feats.parameters():
                prm.copy_(torch.randn(prm.shape, generator=g) * (0.5 if prm.dim() == 1 else (2.0 / prm[0].numel()) ** 0.5))
        nets.features = feats.eval()
        default_layers = [("layer1", 1.0), ("layer2", 1.0)]
    layers = [(str(n), float(w)) for n, w in (c.feature_layers or default_layers)]
    match = dict(c.feature_match or {})
    for n, r in match.items():
        if not isinstance(r, int) or isinstance(r, bool) or not 0 <= r <= MAX_MATCH:
            raise RuntimeError(f"export config: feature_match[{n!r}] {r!r}: want a radius of 0..{MAX_MATCH} cells")
    feature_onnx = c.features_onnx
    if feature_onnx is None and nets.features is None:
        raise RuntimeError("export config: the model has no torch feature net; give features_onnx "
                           "(e.g. resnet50v2_stage1to3.onnx) and feature_layers")
    if not layers:
        raise RuntimeError("export config: feature_layers is required for this model")
    classes = list(c.classes or [])
    tmpl = c.prompt_template
    entries = [("", "")] + [(k, tmpl.replace("{cls}", k.replace("_", " "))) for k in classes]
    if nets.text is None or tok is None:
        raise RuntimeError("export: the model file has no text encoder/tokenizer to compute the conditioning")
    ctx = encode_prompts(nets.text, tok, [pr for _, pr in entries], torch.device("cpu")).numpy()
    diffusion = {k: getattr(c, k) for k in ("guidance_scale", "ddim_steps", "start_step", "sampler_from_start_step",
                                            "ensemble")
                 if getattr(c, k) is not None}
    m = export_bundle(
        out, vae=nets.vae, denoiser=nets.denoiser, features=None if feature_onnx else nets.features,
        layers=layers, layer_match=match, conditioning=[(k, pr, ctx[i]) for i, (k, pr) in enumerate(entries)],
        latent_channels=channels, downsample=ds, hint_owner=nets.denoiser.sgn, feature_onnx=feature_onnx,
        keep_outputs=list(c.keep_outputs or []), height=size, width=size, name=c.name, version=c.version,
        description=c.description,
        provenance={"preset": preset_name, "dataset": c.dataset, "classes": classes},
        latent={"posterior": c.posterior, "scale_factor": latent_scale(b)}, diffusion=diffusion,
        map_spec={"sigma": float(c.sigma)} if c.sigma is not None else None, probe_dir=c.probes,
        probe_seed=int(c.seed), overwrite=c.overwrite,
        denoiser_static_batches=default_static_batches(nets.denoiser, c.ensemble or 1) if c.denoiser_static_batches is None
        else c.denoiser_static_batches)
    # the reference weights of this bundle are the model file itself
    return {"bundle": out, "manifest": os.path.join(out, "bundle.json"), "probes": c.probes or "",
            "graphs": sorted(m["graphs"])}

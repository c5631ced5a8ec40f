"""An independent PyTorch reference of the bundle's scoring recipe (docs/algorithm.md §1).

The Go pipeline scores frames through ONNX Runtime from bundle.json. This module scores the same frames with the
torch networks the bundle was exported from, reading every number from the same manifest, so a Go test can check
the whole chain (preprocessing, sampler, map, smoothing, pooling) against an implementation that shares no code
with it. It deliberately follows the public DiAD/VLMDiff code's operations (PIL resize, torch cosine similarity,
F.interpolate with align_corners=True, scipy's gaussian_filter, repeated avg_pool2d) rather than re-deriving them.

CLI (see __main__.py):

    python3 -m vlmdiff_train reference --bundle DIR --weights FILE.pt --noise NOISE.f32 --out OUTDIR
        [--class KEY] IMG...

NOISE.f32 is little-endian float32 [N_images, K, 2, C, h, w], K = diffusion.ensemble (1 without it): per start
noise, index 0 is the posterior noise (used only when the manifest says posterior == "sample"), index 1 the
q_sample start noise. Outputs: OUTDIR/scores.json
([{"image": path, "raw_score": float}]) and OUTDIR/maps.f32 (float32 [N, H, W], the smoothed anomaly maps before
pooling).
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter, uniform_filter

from .model_file import Nets, load_nets


# ---------------------------------------------------------------------------------------------------------------
# Manifest access
# ---------------------------------------------------------------------------------------------------------------

def read_manifest(bundle_dir: str) -> dict:
    path = os.path.join(bundle_dir, "bundle.json")
    try:
        with open(path, "r", encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        raise RuntimeError(f"reading bundle manifest {path}: {e}") from e
    if m.get("format") != 1:
        raise RuntimeError(f"bundle manifest {path}: format {m.get('format')!r} is not 1")
    return m


def read_conditioning(bundle_dir: str, manifest: dict) -> Dict[str, torch.Tensor]:
    """Returns key -> context [1, tokens, dim] from the bundle's raw conditioning file."""
    c = manifest["conditioning"]
    path = os.path.join(bundle_dir, c["file"])
    n, tok, dim = len(c["entries"]), int(c["tokens"]), int(c["dim"])
    raw = np.fromfile(path, dtype="<f4")
    if raw.size != n * tok * dim:
        raise RuntimeError(f"conditioning file {path}: {raw.size} floats, want {n}x{tok}x{dim}={n * tok * dim}")
    arr = raw.reshape(n, tok, dim)
    return {e["key"]: torch.from_numpy(arr[i].copy()).unsqueeze(0) for i, e in enumerate(c["entries"])}


def read_reference(bundle_dir: str, manifest: dict) -> Dict[str, np.ndarray]:
    """map.reference: class -> its mean normal map [H,W] float32 ("" is the global row); {} without one."""
    r = manifest.get("map", {}).get("reference")
    if not r:
        return {}
    path = os.path.join(bundle_dir, r["file"])
    h, w, classes = int(r["height"]), int(r["width"]), list(r["classes"])
    raw = np.fromfile(path, dtype="<f4")
    if raw.size != len(classes) * h * w:
        raise RuntimeError(f"map reference {path}: {raw.size} floats, want {len(classes)}x{h}x{w}")
    arr = raw.reshape(len(classes), h, w)
    return {c: arr[i].copy() for i, c in enumerate(classes)}


def read_pixel(bundle_dir: str, manifest: dict) -> Tuple[Dict[str, np.ndarray], float]:
    """map.pixel: (class -> its mean normal frame [3,H,W] float32, "" the global row; the term's weight), or
    ({}, 0.0) without the term."""
    t = manifest.get("map", {}).get("pixel")
    if not t:
        return {}, 0.0
    path = os.path.join(bundle_dir, t["file"])
    h, w, classes = int(t["height"]), int(t["width"]), list(t["classes"])
    raw = np.fromfile(path, dtype="<f4")
    if raw.size != len(classes) * 3 * h * w:
        raise RuntimeError(f"mean frames {path}: {raw.size} floats, want {len(classes)}x3x{h}x{w}")
    arr = raw.reshape(len(classes), 3, h, w)
    return {c: arr[i].copy() for i, c in enumerate(classes)}, float(t.get("weight", 0.0))


class KnnTerm:
    """map.knn (docs/algorithm.md §1.9, "the nearest-normal term"): the knn graph's features (run with torch ops
    through onnx_torch, not ONNX Runtime), each class's bank, and the term's weight."""

    def __init__(self, bundle_dir: str, t: dict):
        from .onnx_torch import OnnxModule

        self.features = OnnxModule.load(os.path.join(bundle_dir, t["graph"]), ["features"]).eval()
        self.weight = float(t.get("weight", 0.0))
        n, d, classes = int(t["size"]), int(t["dims"]), list(t["classes"])
        raw = np.fromfile(os.path.join(bundle_dir, t["bank"]), dtype="<f4")
        if raw.size != len(classes) * n * d:
            raise RuntimeError(f"knn bank {t['bank']}: {raw.size} floats, want {len(classes)}x{n}x{d}")
        arr = raw.reshape(len(classes), n, d)
        self.banks = {c: torch.from_numpy(arr[i].astype(np.float64)) for i, c in enumerate(classes)}
        # map.knn.ks: how many nearest vectors each class's distance averages (absent: the nearest alone)
        ks = t.get("ks") or [1] * len(classes)
        if len(ks) != len(classes):
            raise RuntimeError(f"map.knn.ks has {len(ks)} values for {len(classes)} classes")
        self.ks = {c: int(k) for c, k in zip(classes, ks)}

    @torch.no_grad()
    def distance(self, x: torch.Tensor, cls: Optional[str], height: int, width: int) -> np.ndarray:
        """[H,W]: each position's mean Euclidean distance to the k nearest vectors of cls's bank (the global one
        when it has none; k its map.knn.ks, 1 without), in float64, upsampled bilinearly with aligned corners to
        the map's size. Go twin: pipeline.knnDistances and the map plan's knn layer."""
        f = self.features(x)["features"][0].double()                            # [D, h, w]
        q = f.flatten(1).T                                                      # [h*w, D]
        c = cls if cls and cls in self.banks else ""
        k = self.ks[c]
        d = torch.cdist(q, self.banks[c]).topk(k, dim=1, largest=False).values.mean(1).reshape(1, 1, *f.shape[1:])
        return F.interpolate(d, size=(height, width), mode="bilinear", align_corners=True)[0, 0].numpy()


def read_knn(bundle_dir: str, manifest: dict) -> Optional[KnnTerm]:
    """map.knn as a KnnTerm, or None without the term."""
    t = manifest.get("map", {}).get("knn")
    return KnnTerm(bundle_dir, t) if t else None


def pixel_distance(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """The mean-frame term's distance (docs/algorithm.md §1.9): sqrt of the sum over the 3 channels of the squared
    difference between the preprocessed frame x [3,H,W] and its class's mean frame, in float64. Go twin:
    pipeline.pixelDistanceRows."""
    d = x.astype(np.float64) - mean.astype(np.float64)
    return np.sqrt((d * d).sum(axis=0))


# ---------------------------------------------------------------------------------------------------------------
# The recipe's pieces (each testable on its own)
# ---------------------------------------------------------------------------------------------------------------

def load_image(path: str, height: int, width: int, mean: Sequence[float], std: Sequence[float],
               resize: str = "pil_bilinear") -> torch.Tensor:
    """docs/algorithm.md §1.1: RGB, PIL bilinear resize (antialiased, uint8 fixed point), /255, normalise. -> [3,H,W]."""
    if resize != "pil_bilinear":
        raise RuntimeError(f"reference scorer supports resize 'pil_bilinear' only, manifest says {resize!r}")
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (width, height):
            im = im.resize((width, height), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    return normalize_uint8(arr, mean, std)


def normalize_uint8(arr: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """HWC uint8 -> CHW float32 normalised exactly as torchvision ToTensor + Normalize do (float32 throughout)."""
    x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float().div(255.0)
    m = torch.tensor(list(mean), dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


def alphas_cumprod(linear_start: float, linear_end: float, steps: int, schedule: str = "linear") -> np.ndarray:
    """SD's "linear" schedule in float64: betas = linspace(sqrt(start), sqrt(end), T)**2, abar = cumprod(1-beta)."""
    if schedule != "linear":
        raise RuntimeError(f"beta schedule {schedule!r} is not supported (only 'linear')")
    betas = np.linspace(linear_start ** 0.5, linear_end ** 0.5, steps, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas, axis=0)


def sampler_plan(d: dict):
    """(DDIM timesteps visited, step the latent is noised to) for a manifest's diffusion section.

    The paper's code runs every DDIM step (from 901) whatever start_step is and noises the latent to start_step;
    with sampler_from_start_step only the steps at or below start_step run, on a latent noised to the first of
    them (SDEdit-style). Go twin: pipeline.samplerPlan.
    """
    ts = ddim_timesteps(int(d["train_steps"]), int(d["ddim_steps"]))
    start = int(d["start_step"])
    if not d.get("sampler_from_start_step"):
        return ts, start
    kept = ts[ts <= start]
    if len(kept) == 0:
        raise RuntimeError(f"diffusion.sampler_from_start_step: start_step {start} is below the first DDIM step "
                           f"{int(ts[0])}")
    return kept, int(kept[-1])


def ddim_timesteps(train_steps: int, ddim_steps: int) -> np.ndarray:
    """make_ddim_timesteps("uniform"): range(0, T, T // steps) + 1, in ascending order (visited descending)."""
    c = train_steps // ddim_steps
    if c < 1:
        raise RuntimeError(f"ddim_steps {ddim_steps} exceeds train_steps {train_steps}")
    ts = np.asarray(list(range(0, train_steps, c)), dtype=np.int64) + 1
    if ts[-1] >= train_steps:  # e.g. 3 of 1000: 1, 334, 667, 1000, one past the schedule's last step
        raise RuntimeError(f"ddim_steps {ddim_steps}: the uniform schedule reaches timestep {ts[-1]}, past the last "
                           f"of {train_steps} steps; use a ddim_steps that divides {train_steps} (e.g. 4, 5, 10)")
    return ts


def posterior_latent(moments: torch.Tensor, channels: int, scale: float, clamp_lo: float, clamp_hi: float,
                     posterior: str, noise: Optional[torch.Tensor]) -> torch.Tensor:
    """docs/algorithm.md §1.3: split moments into mean/logvar, clamp logvar, optionally sample, scale."""
    mean, logvar = moments[:, :channels], moments[:, channels:2 * channels]
    if posterior == "sample":
        logvar = torch.clamp(logvar, clamp_lo, clamp_hi)
        z = mean + torch.exp(0.5 * logvar) * noise
    elif posterior == "mean":
        z = mean
    else:
        raise RuntimeError(f"latent posterior {posterior!r} is not 'mean' or 'sample'")
    return scale * z


def layer_distance(f_in: torch.Tensor, f_rec: torch.Tensor, tokens: bool = False, match: int = 0) -> torch.Tensor:
    """1 - cosine similarity over channels (eps 1e-8). Maps [B,D,h,w] -> [B,1,h,w]; tokens [B,1+N,D] drop CLS.
    match > 0 (features.layers[].match, maps only): the smallest distance to the reconstruction's feature at any
    position within `match` cells (a square window clipped to the map)."""
    if match > 0:
        if tokens:
            raise RuntimeError("a match radius is for map features, not ViT tokens")
        return match_distance(f_in, f_rec, match)
    if tokens:
        b, n1, d = f_in.shape
        side = int(round((n1 - 1) ** 0.5))
        if side * side != n1 - 1:
            raise RuntimeError(f"token features {tuple(f_in.shape)}: {n1 - 1} patch tokens is not a square")
        f_in = f_in[:, 1:].transpose(1, 2).reshape(b, d, side, side)
        f_rec = f_rec[:, 1:].transpose(1, 2).reshape(b, d, side, side)
    return (1.0 - F.cosine_similarity(f_in, f_rec, dim=1, eps=1e-8)).unsqueeze(1)


def match_distance(f_in: torch.Tensor, f_rec: torch.Tensor, r: int) -> torch.Tensor:
    """Go matchDistanceRows' twin: per position of f_in [B,D,h,w], min over displacements (dy, dx) in [-r, r]^2
    that stay inside the map of 1 - dot / max(sqrt(|a|^2 |b|^2), 1e-8), in float64. -> [B,1,h,w]."""
    a, b = f_in.double(), f_rec.double()
    _, _, h, w = a.shape
    na = (a * a).sum(1)
    best = torch.full_like(na, float("inf"))
    for dy in range(-r, r + 1):
        ya, yb = max(0, -dy), min(h, h - dy)
        for dx in range(-r, r + 1):
            xa, xb = max(0, -dx), min(w, w - dx)
            if ya >= yb or xa >= xb:
                continue
            av, bv = a[:, :, ya:yb, xa:xb], b[:, :, ya + dy:yb + dy, xa + dx:xb + dx]
            den = torch.sqrt(na[:, ya:yb, xa:xb] * (bv * bv).sum(1)).clamp_min(1e-8)
            d = 1.0 - (av * bv).sum(1) / den
            best[:, ya:yb, xa:xb] = torch.minimum(best[:, ya:yb, xa:xb], d)
    return best.float().unsqueeze(1)


def anomaly_map(feats_in: Dict[str, torch.Tensor], feats_rec: Dict[str, torch.Tensor],
                layers: Sequence[dict], height: int, width: int, tokens: bool = False) -> torch.Tensor:
    """Weighted sum over layers of the upsampled (bilinear, align_corners=True) 1-cos maps. -> [B,H,W]."""
    total = None
    for layer in layers:
        name, w = layer["name"], float(layer["weight"])
        if name not in feats_in or name not in feats_rec:
            raise RuntimeError(f"feature layer {name!r} is not an output of the feature network")
        d = layer_distance(feats_in[name], feats_rec[name], tokens, int(layer.get("match", 0) or 0))
        d = F.interpolate(d, size=(height, width), mode="bilinear", align_corners=True)
        d = d * w
        total = d if total is None else total + d
    if total is None:
        raise RuntimeError("manifest lists no feature layers")
    return total[:, 0]


def smooth(amap: np.ndarray, sigma: float, truncate: float) -> np.ndarray:
    """scipy.ndimage.gaussian_filter, mode 'reflect', as the public test.py does; sigma 0 means no smoothing."""
    amap = np.asarray(amap, dtype=np.float32)
    if sigma <= 0:
        return amap.copy()
    return gaussian_filter(amap, sigma=sigma, mode="reflect", truncate=truncate).astype(np.float32)


def pooled_score(amap: np.ndarray, kernel: int, repeat: int, reduce: str = "max") -> float:
    """docs/algorithm.md §1.10: avg_pool2d(k, stride 1, no padding) `repeat` times, then the max."""
    if reduce != "max":
        raise RuntimeError(f"score reduce {reduce!r} is not supported (only 'max')")
    t = torch.from_numpy(np.asarray(amap, dtype=np.float32))[None, None]
    for _ in range(repeat):
        t = F.avg_pool2d(t, kernel_size=kernel, stride=1)
    return float(t.max())


def pooled(amap: np.ndarray, kernel: int, repeat: int) -> torch.Tensor:
    """The pooled map itself (for tests of its size)."""
    t = torch.from_numpy(np.asarray(amap, dtype=np.float32))[None, None]
    for _ in range(repeat):
        t = F.avg_pool2d(t, kernel_size=kernel, stride=1)
    return t[0, 0]


def guided_filter(p: np.ndarray, guide: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter of the map p with the grey guide (map.guided; Go's guidedInput.filter): box means
    over (2 radius + 1)^2 windows, borders reflected; a = cov(guide, p) / (var(guide) + eps), b = mean(p) - a
    mean(guide), out = mean(a) guide + mean(b). float64 throughout."""
    size = 2 * radius + 1
    box = lambda v: uniform_filter(v, size=size, mode="reflect")  # noqa: E731
    g, p = guide.astype(np.float64), p.astype(np.float64)
    mg, mp = box(g), box(p)
    a = (box(g * p) - mg * mp) / (np.maximum(box(g * g) - mg * mg, 0) + eps)
    return box(a) * g + box(mp - a * mg)


def luminance(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The guide of map.guided: the frame's BT.601 luminance in [0, 1], from one preprocessed frame x [3,H,W]
    with the bundle's input normalisation undone."""
    w = (0.299, 0.587, 0.114)
    x = x.astype(np.float64)
    return sum(w[c] * (x[c] * float(np.float32(std[c])) + float(np.float32(mean[c]))) for c in range(3))


# ---------------------------------------------------------------------------------------------------------------
# The scorer
# ---------------------------------------------------------------------------------------------------------------


class Scorer:
    """Scores preprocessed images with torch networks following a manifest."""

    def __init__(self, manifest: dict, nets: Nets, conditioning: Dict[str, torch.Tensor],
                 reference: Optional[Dict[str, np.ndarray]] = None,
                 pixel: Optional[Tuple[Dict[str, np.ndarray], float]] = None, knn: Optional[KnnTerm] = None):
        self.m = manifest
        self.knn = knn
        self.reference = reference or {}
        self.mean_frames, self.pixel_weight = pixel or ({}, 0.0)
        self.nets = nets.eval()
        self.cond = conditioning
        d = manifest["diffusion"]
        if float(d.get("eta", 0.0)) != 0.0:
            raise RuntimeError(f"diffusion eta {d['eta']} is not supported (only 0)")
        self.abar = alphas_cumprod(float(d["linear_start"]), float(d["linear_end"]), int(d["train_steps"]),
                                   d.get("beta_schedule", "linear"))
        self.start_step = int(d["start_step"])
        self.ts, self.noise_step = sampler_plan(d)
        self.guidance = float(d.get("guidance_scale", 1.0))

    def contexts(self, key: Optional[str]):
        c = self.m["conditioning"]
        k = c.get("default", "") if key is None else key
        if k not in self.cond:
            raise RuntimeError(f"conditioning key {k!r} is not in the bundle (have {sorted(self.cond)})")
        u = c.get("unconditional", "")
        if u not in self.cond:
            raise RuntimeError(f"unconditional conditioning key {u!r} is not in the bundle")
        return self.cond[k], self.cond[u]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, post_noise: torch.Tensor, start_noise: torch.Tensor,
                    key: Optional[str] = None) -> torch.Tensor:
        """x: [B,3,H,W] normalised, one row per start noise. Returns the reconstructions in the same space."""
        lat = self.m["latent"]
        C = int(lat["channels"])
        moments = self.nets.vae.encode_moments(x)
        z = posterior_latent(moments, C, float(lat["scale_factor"]), float(lat["logvar_clamp_lo"]),
                             float(lat["logvar_clamp_hi"]), lat["posterior"], post_noise)
        a_T = self.abar[self.noise_step]
        xt = float(np.sqrt(a_T)) * z + float(np.sqrt(1.0 - a_T)) * start_noise
        hint = self.nets.hint(x) if self.nets.hint is not None else x
        ctx_c, ctx_u = self.contexts(key)
        use_cfg = not torch.equal(ctx_c, ctx_u)
        b = x.shape[0]
        ctx_c = ctx_c.expand(b, -1, -1)
        ctx_u = ctx_u.expand(b, -1, -1)
        for i in range(len(self.ts) - 1, -1, -1):
            t = torch.full((b,), int(self.ts[i]), dtype=torch.int64, device=x.device)
            a = self.abar[self.ts[i]]
            a_prev = self.abar[self.ts[i - 1]] if i > 0 else self.abar[0]
            e = self.nets.denoiser(xt, t, ctx_c, hint)
            if use_cfg:
                e_u = self.nets.denoiser(xt, t, ctx_u, hint)
                e = e_u + self.guidance * (e - e_u)
            x0 = (xt - float(np.sqrt(1.0 - a)) * e) / float(np.sqrt(a))
            xt = float(np.sqrt(a_prev)) * x0 + float(np.sqrt(1.0 - a_prev)) * e
        return self.nets.vae.decode(xt / float(lat["scale_factor"]))

    def feature_input(self, x: torch.Tensor) -> torch.Tensor:
        """Renormalise from the bundle's input space into the backbone's when the manifest asks for it."""
        f = self.m["features"]
        if not f.get("mean") or not f.get("std"):
            return x
        inp = self.m["input"]
        m_in = torch.tensor(inp["mean"], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        s_in = torch.tensor(inp["std"], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        m = torch.tensor(f["mean"], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        s = torch.tensor(f["std"], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return ((x * s_in + m_in) - m) / s

    def ensemble(self) -> int:
        """diffusion.ensemble: the start noises each frame is reconstructed from (at least 1)."""
        return max(int(self.m["diffusion"].get("ensemble", 0) or 0), 1)

    @torch.no_grad()
    def score(self, x: torch.Tensor, post_noise: torch.Tensor, start_noise: torch.Tensor,
              key: Optional[str] = None, ref_class: Optional[str] = None):
        """Returns (raw_score, smoothed map [H,W] float32) for one image x [1,3,H,W]. post_noise and start_noise
        are [K,C,h,w], one draw per start noise of the ensemble (K = diffusion.ensemble): the map is the mean of
        the K smoothed maps, each against its own reconstruction, plus, with the mean-frame term (map.pixel), its
        weight times the smoothed distance of x to ref_class's mean frame, and with the nearest-normal term (map.knn) its
        weight times the smoothed distance to ref_class's bank. With a map reference, the row of
        ref_class (the global row "" when it has none) is subtracted before pooling, as the Go scorer does."""
        inp, f, mp, sc = self.m["input"], self.m["features"], self.m["map"], self.m["score"]
        k = self.ensemble()
        if start_noise.shape[0] != k or (self.m["latent"]["posterior"] == "sample" and post_noise.shape[0] != k):
            raise RuntimeError(f"score: {start_noise.shape[0]} start noise(s) for diffusion.ensemble {k}")
        rec = self.reconstruct(x.expand(k, -1, -1, -1), post_noise, start_noise, key)
        fi = self.nets.features(self.feature_input(x))
        fr = self.nets.features(self.feature_input(rec))
        fi = {n: v.expand(k, *v.shape[1:]) for n, v in fi.items()}
        amap = anomaly_map(fi, fr, f["layers"], int(inp["height"]), int(inp["width"]), bool(f.get("tokens")))
        sigma, trunc = float(mp["sigma"]), float(mp.get("truncate", 4.0))
        sm = np.mean([smooth(amap[j].numpy(), sigma, trunc).astype(np.float64) for j in range(k)], axis=0)
        if self.mean_frames and self.pixel_weight != 0:
            mean = self.mean_frames.get(ref_class or "", self.mean_frames[""])
            d = pixel_distance(x[0].numpy(), mean)
            # the term's own sigma (map.pixel.sigma; absent: the map's), as Go's pixelInput.sigma
            ps = float(mp.get("pixel", {}).get("sigma", sigma))
            sm = sm + self.pixel_weight * (gaussian_filter(d, sigma=ps, mode="reflect", truncate=trunc) if ps > 0 else d)
        if self.knn is not None and self.knn.weight != 0:
            d = self.knn.distance(x, ref_class, int(inp["height"]), int(inp["width"]))
            # the term's own sigma (map.knn.sigma; absent: the map's), as Go's knnInput.sigma
            ks = float(mp["knn"].get("sigma", sigma))
            sm = sm + self.knn.weight * (gaussian_filter(d, sigma=ks, mode="reflect", truncate=trunc) if ks > 0 else d)
        if mp.get("guided"):  # every term filtered with the frame's luminance as guide (Go: mapScratch.guide)
            g = mp["guided"]
            sm = guided_filter(sm, luminance(x[0].numpy(), inp["mean"], inp["std"]), int(g["radius"]), float(g["eps"]))
        if self.reference:
            ref = self.reference.get(ref_class or "", self.reference[""])
            sm = sm - ref.astype(np.float64)
        sm = sm.astype(np.float32)
        return pooled_score(sm, int(sc["pool_kernel"]), int(sc["pool_repeat"]), sc.get("reduce", "max")), sm


def read_noise(path: str, n_images: int, channels: int, h: int, w: int, ensemble: int = 1) -> np.ndarray:
    """NOISE.f32: little-endian float32 [N_images, K, 2, C, h, w] (K = diffusion.ensemble; [N, 2, C, h, w] with
    one noise)."""
    raw = np.fromfile(path, dtype="<f4")
    want = n_images * ensemble * 2 * channels * h * w
    if raw.size != want:
        raise RuntimeError(f"noise file {path}: {raw.size} floats, want [{n_images},{ensemble},2,{channels},{h},{w}]"
                           f"={want}")
    arr = raw.reshape(n_images, ensemble, 2, channels, h, w)
    if not np.all(np.isfinite(arr)):
        raise RuntimeError(f"noise file {path}: contains NaN or Inf")
    return arr


def run_reference(bundle: str, weights: str, noise_path: str, out_dir: str, images: List[str],
                  key: Optional[str] = None) -> dict:
    """The `reference` stage: score images, write scores.json and maps.f32, return the outputs."""
    if not images:
        raise RuntimeError("reference: no images given")
    m = read_manifest(bundle)
    nets = load_nets(weights, bundle, m)
    scorer = Scorer(m, nets, read_conditioning(bundle, m), read_reference(bundle, m), read_pixel(bundle, m),
                    read_knn(bundle, m))
    inp, lat = m["input"], m["latent"]
    H, W, C, ds = int(inp["height"]), int(inp["width"]), int(lat["channels"]), int(lat["downsample"])
    noise = read_noise(noise_path, len(images), C, H // ds, W // ds, scorer.ensemble())
    os.makedirs(out_dir, exist_ok=True)
    scores, maps = [], np.zeros((len(images), H, W), dtype=np.float32)
    for i, p in enumerate(images):
        try:
            x = load_image(p, H, W, inp["mean"], inp["std"], inp.get("resize", "pil_bilinear"))[None]
        except OSError as e:
            raise RuntimeError(f"reading image {p}: {e}") from e
        # the class picks the conditioning and, as in the Go scorer, the reference and mean-frame rows
        s, sm = scorer.score(x, torch.from_numpy(noise[i, :, 0].copy()), torch.from_numpy(noise[i, :, 1].copy()), key, key)
        scores.append({"image": p, "raw_score": s})
        maps[i] = sm
    with open(os.path.join(out_dir, "scores.json"), "w", encoding="utf-8") as f:
        json.dump(scores, f, indent=1)
    maps.astype("<f4").tofile(os.path.join(out_dir, "maps.f32"))
    return {"scores": os.path.join(out_dir, "scores.json"), "maps": os.path.join(out_dir, "maps.f32"),
            "n": len(images), "height": H, "width": W}

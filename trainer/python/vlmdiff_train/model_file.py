"""The model file: the one format the Python stages hand each other, and the networks it rebuilds.

A model file (torch.save of a dict, format REF_WEIGHTS_FORMAT) holds the state of a VAE, a denoiser and
optionally a text encoder and a torch feature net, plus a "builder" that says how to rebuild the modules:
{"kind": "fixture", "spec": {...}} (build_nets) or {"kind": "preset", "name": ...} (build_preset_nets). The
build and train stages write it, the train, export and reference stages and the reference scorer read it.

This is a leaf module: it imports only torch, numpy, the standard library and (inside functions) nets, presets,
tokenizer and onnx_torch, so every other module can import it without a cycle. Nets is the shared bundle of
networks by role.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn

REF_WEIGHTS_FORMAT = "vlmdiff-reference-weights/1"


@dataclass
class Nets:
    """The torch networks a bundle was exported from, by role.

    vae must have encode_moments(x) and decode(z); hint maps the image to hint features (None: the denoiser takes
    the image itself); denoiser(x, t, context, hint) -> eps; features(x) -> {layer name: tensor}.
    """
    vae: torch.nn.Module
    denoiser: torch.nn.Module
    features: Optional[Callable[[torch.Tensor], Dict[str, torch.Tensor]]]
    hint: Optional[torch.nn.Module] = None
    text: Optional[torch.nn.Module] = None  # the frozen text encoder (training/export only; scoring uses the bundle's)

    def eval(self) -> "Nets":
        for m in (self.vae, self.denoiser, self.features, self.hint, self.text):
            if isinstance(m, torch.nn.Module):
                m.eval()
        return self


class TinyFeatures(nn.Module):
    """A small conv feature net with two named outputs: layer1 at /4 and layer2 at /8 of the input."""

    def __init__(self, widths=(16, 24, 32)):
        super().__init__()
        w0, w1, w2 = widths
        self.stem = nn.Sequential(nn.Conv2d(3, w0, 3, stride=2, padding=1), nn.ReLU())
        self.layer1 = nn.Sequential(nn.Conv2d(w0, w1, 3, stride=2, padding=1), nn.ReLU(),
                                    nn.Conv2d(w1, w1, 3, padding=1))
        self.layer2 = nn.Sequential(nn.ReLU(), nn.Conv2d(w1, w2, 3, stride=2, padding=1), nn.ReLU(),
                                    nn.Conv2d(w2, w2, 3, padding=1))

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        l1 = self.layer1(self.stem(x))
        return {"layer1": l1, "layer2": self.layer2(l1)}


class HintOf(nn.Module):
    """The hint role of a denoiser: sgn.hint_features(image)."""

    def __init__(self, denoiser):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, image):
        return self.denoiser.sgn.hint_features(image)


def build_nets(spec: dict) -> Nets:
    """Networks of the fixture's structure, initialised from spec["seed"] (deterministic)."""
    from .nets.autoencoder import AutoencoderKL, DDConfig
    from .nets.sgn import ControlledUnetModel, SemanticGuidedNetwork, VLMDiffDenoiser
    from .nets.unet import UNetConfig

    torch.manual_seed(int(spec["seed"]))
    v = dict(spec["vae"])
    embed_dim = int(v.pop("embed_dim"))
    v = {k: tuple(x) if isinstance(x, list) else x for k, x in v.items()}
    dd = DDConfig(double_z=True, resolution=int(spec["height"]), in_channels=3, out_ch=3, **v)
    vae = AutoencoderKL(dd, embed_dim=embed_dim)
    u = {k: tuple(x) if isinstance(x, list) else x for k, x in spec["unet"].items()}
    cfg = UNetConfig(**u)
    sgn = SemanticGuidedNetwork(cfg, hint_channels=3, hint_hidden=tuple(spec["hint_hidden"]))
    unet = ControlledUnetModel(cfg, only_mid_control=True)
    den = VLMDiffDenoiser(sgn, unet)
    feats = TinyFeatures(tuple(spec["features"]["widths"]))
    g = torch.Generator().manual_seed(int(spec["seed"]) + 1)
    std, gain = float(spec.get("perturb_std", 0.05)), float(spec.get("perturb_gain", 1.0))
    for m in (vae, den):
        perturb_zero_params(m, g, std, gain)
    return Nets(vae=vae, denoiser=den, features=feats, hint=HintOf(den)).eval()


def perturb_zero_params(module: nn.Module, g: torch.Generator, std: float, gain: float = 1.0) -> None:
    """Give every all-zero weight (zero convs, SFF, hint output, ResBlock/transformer outputs) random values.

    Weights get N(0, (gain/sqrt(fan_in))^2) values so activations stay O(1); biases get small values.
    """
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.numel() == 0 or bool(torch.any(p != 0)):
                continue
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (gain / math.sqrt(fan_in)))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def build_preset_nets(name: str, overrides: Optional[dict] = None) -> Nets:
    """Networks of a named preset (presets.build), for model files written by the training stages."""
    from . import presets  # H1's module

    built = presets.build(name, with_dino=False, **(overrides or {}))
    return Nets(vae=built.vae, denoiser=built.denoiser, features=None, hint=HintOf(built.denoiser),
                text=built.text_encoder)


# ---------------------------------------------------------------------------------------------------------------
# Reference weights: what reference.py rebuilds the torch networks from
# ---------------------------------------------------------------------------------------------------------------

def save_reference_weights(path: str, builder: dict, nets, features_kind: str = "torch",
                           tokenizer: Optional[list] = None, extra: Optional[dict] = None) -> None:
    """Writes a model file: what the training stages hand each other and what the reference scorer rebuilds the
    torch networks from.

    builder names how to rebuild the modules: {"kind": "fixture", "spec": {...}} (fixture.build_nets) or
    {"kind": "preset", "name": ...} (presets.build). features_kind "onnx" means the reference runs the bundle's
    features.onnx through onnx_torch instead of a stored torch module. tokenizer is the BPE merge list of the text
    encoder's tokenizer (None when the networks carry no text encoder)."""
    state = {"vae": _half_safe(nets.vae.state_dict()), "denoiser": _half_safe(nets.denoiser.state_dict())}
    if features_kind == "torch":
        state["features"] = _half_safe(nets.features.state_dict())
    if getattr(nets, "text", None) is not None:
        state["text"] = _half_safe(nets.text.state_dict())
    blob = {"format": REF_WEIGHTS_FORMAT, "builder": builder, "features": features_kind, "state": state}
    if tokenizer is not None:
        blob["tokenizer"] = [list(m) for m in tokenizer]
    if extra:
        blob["extra"] = extra
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    try:
        torch.save(blob, tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise RuntimeError(f"writing model file {path}: {e}") from e


def _half_safe(sd: dict) -> dict:
    # contiguous whatever layout the networks trained in (layout.py): a model file is the same either way
    return {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in sd.items()}


def load_nets(weights: str, bundle_dir: str, manifest: dict):
    """Rebuilds the torch networks of a bundle from reference weights (see save_reference_weights)."""
    try:
        blob = torch.load(weights, map_location="cpu")
    except Exception as e:
        raise RuntimeError(f"reading reference weights {weights}: {e}") from e
    if not isinstance(blob, dict) or blob.get("format") != REF_WEIGHTS_FORMAT:
        raise RuntimeError(f"reference weights {weights}: not a {REF_WEIGHTS_FORMAT} file")
    b = blob["builder"]
    if b.get("kind") == "fixture":
        nets = build_nets(b["spec"])
    elif b.get("kind") == "preset":
        nets = build_preset_nets(b["name"], b.get("overrides") or {})
    else:
        raise RuntimeError(f"reference weights {weights}: unknown builder {b!r}")
    st = blob["state"]
    try:
        nets.vae.load_state_dict(st["vae"])
        nets.denoiser.load_state_dict(st["denoiser"])
        if blob.get("features", "torch") == "torch":
            nets.features.load_state_dict(st["features"])
    except (RuntimeError, KeyError) as e:
        raise RuntimeError(f"reference weights {weights}: state does not fit the rebuilt networks: {e}") from e
    if blob.get("features") == "onnx":
        from .onnx_torch import OnnxModule
        g = manifest["graphs"]["features"]
        nets.features = OnnxModule.load(os.path.join(bundle_dir, g["file"]),
                                        outputs=[l["name"] for l in manifest["features"]["layers"]])
    return nets.eval()


# ---------------------------------------------------------------------------------------------------------------
# Model files
# ---------------------------------------------------------------------------------------------------------------

def latent_scale(builder: dict) -> float:
    """The diffusion latent scale of a model file's networks: the one the build stage measured (deterministic
    autoencoders), else the preset's (SD's 0.18215 for KL VAEs, TAEF2_SCALE for taef2); fixtures use SD's."""
    if builder.get("latent_scale"):  # measured by the build stage (train_denoiser.measured_latent_scale)
        return float(builder["latent_scale"])
    if builder.get("kind") == "preset":
        from . import presets
        return float(presets.get_preset(builder["name"]).scale_factor)
    from .constants import LATENT_SCALE
    return LATENT_SCALE


def make_tokenizer(merges: List[List[str]]):
    from .tokenizer import SOT, EOT, CLIPTokenizer, base_vocab
    ms = [tuple(m) for m in merges]
    vocab = base_vocab() + ["".join(m) for m in ms] + [SOT, EOT]
    return CLIPTokenizer({t: i for i, t in enumerate(vocab)}, ms)


def load_model_file(path: str) -> dict:
    try:
        blob = torch.load(path, map_location="cpu")
    except Exception as e:
        raise RuntimeError(f"reading model file {path}: {e}") from e
    if not isinstance(blob, dict) or blob.get("format") != REF_WEIGHTS_FORMAT:
        raise RuntimeError(f"model file {path}: not a {REF_WEIGHTS_FORMAT} file")
    return blob


def rebuild(blob: dict):
    """(Nets, tokenizer or None) from a model file's blob."""
    b = blob["builder"]
    nets = build_nets(b["spec"]) if b["kind"] == "fixture" else build_preset_nets(b["name"], b.get("overrides"))
    st = blob["state"]
    nets.vae.load_state_dict(st["vae"])
    nets.denoiser.load_state_dict(st["denoiser"])
    if nets.text is not None and "text" in st:
        nets.text.load_state_dict(st["text"])
    if nets.features is not None and "features" in st:
        nets.features.load_state_dict(st["features"])
    tok = make_tokenizer(blob["tokenizer"]) if blob.get("tokenizer") else None
    return nets, tok


def encode_prompts(text_encoder, tokenizer, prompts: List[str], device) -> torch.Tensor:
    """Frozen text encoder outputs [N, tokens, dim] for prompts."""
    with torch.no_grad():
        ids = tokenizer(prompts).to(device)
        return text_encoder(ids).float()

"""Training datasets read from the Go index stage's output.

index.jsonl holds one JSON object per line: {"path", "mask", "class", "split", "label"} with split "train", "val"
or "test" and label 0 (normal) or 1 (anomalous). Relative paths are relative to the index file's directory.
captions.json maps an image path (as written in the index) to its caption.

Preprocessing is the scorer's, to the bit (reference.load_image: PIL bilinear resize, /255, normalise), because
the networks must see in training exactly what the agent feeds them. Augmentation is off by default (the paper
trains without any, docs/algorithm.md §2.2); the optional light augmentation works on the uint8 image before normalising.
"""

from __future__ import annotations

import json
import os
import random
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .constants import IMAGENET_MEAN, IMAGENET_STD
from .reference import normalize_uint8
from .stage_config import DataKeys, parse


def read_index(path: str, split: Optional[str] = None, classes: Optional[Sequence[str]] = None,
               label: Optional[int] = None) -> List[dict]:
    """Reads index.jsonl and filters it. Each record's "path" (and "mask") is made absolute."""
    base = os.path.dirname(os.path.abspath(path))
    out = []
    try:
        f = open(path, "r", encoding="utf-8")
    except OSError as e:
        raise RuntimeError(f"reading index {path}: {e}") from e
    with f:
        for ln, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except ValueError as e:
                raise RuntimeError(f"index {path} line {ln}: not JSON: {e}") from e
            for k in ("path", "class", "split", "label"):
                if k not in r:
                    raise RuntimeError(f"index {path} line {ln}: missing field {k!r}")
            if r["split"] not in ("train", "val", "test"):
                raise RuntimeError(f"index {path} line {ln}: split {r['split']!r} is not train/val/test")
            if r["label"] not in (0, 1):
                raise RuntimeError(f"index {path} line {ln}: label {r['label']!r} is not 0 or 1")
            if split is not None and r["split"] != split:
                continue
            if classes and r["class"] not in classes:
                continue
            if label is not None and r["label"] != label:
                continue
            r = dict(r)
            r["key"] = r["path"]  # the caption key: the path as the index wrote it
            r["path"] = r["path"] if os.path.isabs(r["path"]) else os.path.join(base, r["path"])
            if r.get("mask"):
                r["mask"] = r["mask"] if os.path.isabs(r["mask"]) else os.path.join(base, r["mask"])
            out.append(r)
    return out


def read_captions(path: Optional[str]) -> Dict[str, str]:
    if not path:
        return {}
    try:
        with open(path, "r", encoding="utf-8") as f:
            caps = json.load(f)
    except (OSError, ValueError) as e:
        raise RuntimeError(f"reading captions {path}: {e}") from e
    if not isinstance(caps, dict) or not all(isinstance(v, str) for v in caps.values()):
        raise RuntimeError(f"captions {path}: want an object of path -> caption string")
    return caps


class ImageDataset(torch.utils.data.Dataset):
    """Yields {"image": [3,H,W] normalised float32, "caption", "class", "path", "label"}.

    The caption is looked up by the index's path, then by the absolute path; missing captions fall back to
    `default_caption` (the empty prompt unless a template is given, e.g. "a photo of a {cls}").
    """

    def __init__(self, records: List[dict], height: int = 256, width: int = 256,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 captions: Optional[Dict[str, str]] = None, default_caption: str = "", augment: bool = False,
                 seed: int = 0):
        if not records:
            raise RuntimeError("dataset is empty (no index records matched)")
        self.records = records
        self.h, self.w = int(height), int(width)
        self.mean, self.std = tuple(mean), tuple(std)
        self.captions = captions or {}
        self.default_caption = default_caption
        self.augment = augment
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.records)

    def caption(self, r: dict) -> str:
        c = self.captions.get(r.get("key", r["path"]), self.captions.get(r["path"]))
        if c is None:
            c = self.default_caption.replace("{cls}", r["class"].replace("_", " "))
        return c

    def load_uint8(self, path: str) -> np.ndarray:
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if im.size != (self.w, self.h):
                    im = im.resize((self.w, self.h), Image.BILINEAR)
                return np.asarray(im, dtype=np.uint8)
        except OSError as e:
            raise RuntimeError(f"reading image {path}: {e}") from e

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        arr = self.load_uint8(r["path"])
        if self.augment:
            arr = self._augment(arr)
        return {"image": normalize_uint8(arr, self.mean, self.std), "caption": self.caption(r),
                "class": r["class"], "path": r["path"], "label": int(r["label"])}

    def _augment(self, arr: np.ndarray) -> np.ndarray:
        """Light, label-preserving: horizontal flip and a +-8% brightness change."""
        if self.rng.random() < 0.5:
            arr = arr[:, ::-1]
        f = 1.0 + self.rng.uniform(-0.08, 0.08)
        return np.clip(arr.astype(np.float32) * f + 0.5, 0, 255).astype(np.uint8)


def collate(batch: List[dict]) -> dict:
    return {"image": torch.stack([b["image"] for b in batch]), "caption": [b["caption"] for b in batch],
            "class": [b["class"] for b in batch], "path": [b["path"] for b in batch],
            "label": torch.tensor([b["label"] for b in batch], dtype=torch.int64)}


def train_dataset(cfg, seed: Optional[int] = None) -> ImageDataset:
    """The normal training images of a stage config: an object with the data keys (stage_config.DataKeys and the
    stage configs that include them) or a dict of those keys. seed seeds the augmentation (default cfg.seed or 0)."""
    if isinstance(cfg, dict):
        cfg = dict(cfg)
        seed = cfg.pop("seed", 0) if seed is None else seed
        cfg = parse(DataKeys, cfg, "data")
    if seed is None:
        seed = getattr(cfg, "seed", 0)
    recs = read_index(cfg.index, split=cfg.split, classes=cfg.classes, label=0)
    return ImageDataset(recs, cfg.height, cfg.width, cfg.mean, cfg.std, read_captions(cfg.captions),
                        cfg.default_caption, cfg.augment, int(seed))

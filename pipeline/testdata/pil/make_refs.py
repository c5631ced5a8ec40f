"""Rebuilds the PIL resize references used by pipeline's TestResizePIL:
    /usr/bin/python3 pipeline/testdata/pil/make_refs.py
Random RGB images, resized with PIL's BILINEAR filter exactly as the reference's torchvision Resize does."""
import os
import numpy as np
from PIL import Image

here = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(0)
for (w, h, W, H) in [(37, 53, 64, 64), (300, 90, 64, 48), (64, 64, 128, 96), (129, 17, 64, 64)]:
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(a).save(os.path.join(here, f"in_{w}x{h}.png"))
    Image.fromarray(a).resize((W, H), Image.BILINEAR).save(os.path.join(here, f"out_{w}x{h}_{W}x{H}.png"))

"""Numbers the trainer, the bundle and the Go scorer must agree on, defined once on the Python side.

The Go side defines its copies once too (trainer/run/presets.go); trainer/run's constants test compares both
through `python3 -m vlmdiff_train schema`, and the committed fixture bundle's manifest carries the same values.
Preset sizes (input size, latent channels and size) are defined by presets.py.
"""

from __future__ import annotations

# Stable Diffusion's latent scale: z = LATENT_SCALE * posterior sample, decode(z / LATENT_SCALE). It makes the
# kl-f8 latents roughly unit-variance, which the noise schedule assumes.
LATENT_SCALE = 0.18215

# ImageNet normalisation (torchvision's): the input space of the bundles and of the feature backbones.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The most start noises a bundle may average per frame (manifest diffusion.ensemble; Go: models.MaxEnsemble).
MAX_ENSEMBLE = 16

"""The memory layout the training stages keep their convolution networks and images in.

On the CPU, PyTorch's oneDNN convolutions run their blocked kernels on channels-last tensors without reordering
every activation in and out of NCHW, and the small preset's denoiser is a stack of narrow 3x3 convolutions where
those reorders are a large share of a step. Measured on 2 AVX2 cores (session 40, one training step of the small
denoiser at batch 8 with its hint branch, medians of 15-20 steps, alternated runs): PyTorch 2.15 0.27-0.29 s
contiguous against 0.196-0.205 s channels-last; Debian's PyTorch 1.13 0.39-0.43 s against 0.31-0.33 s; the
small autoencoder's finetune step (batch 4, with the perceptual backbone) 0.55-0.60 s against 0.51 s. On a GPU
the gain depends on the precision and the card, unmeasured here, so "auto" leaves CUDA runs as they were.

The layout changes only how tensors sit in memory, not what is computed: the weights differ from a contiguous
run's by float rounding (the kernels sum in another order), and the files the stages write hold contiguous
tensors either way (model_file._half_safe), so nothing downstream sees the layout.
"""

from __future__ import annotations

import torch

from .stage_config import MEMORY_FORMATS as CHOICES  # the values, defined once


def memory_format(name: str, device: torch.device, stage: str) -> torch.memory_format:
    """The torch memory format for a stage's memory_format setting on device; stage names the config in errors."""
    if name == "auto":
        return torch.channels_last if device.type == "cpu" else torch.contiguous_format
    if name == "channels_last":
        return torch.channels_last
    if name == "contiguous":
        return torch.contiguous_format
    raise RuntimeError(f"{stage} config: memory_format {name!r} is not one of {', '.join(CHOICES)}")

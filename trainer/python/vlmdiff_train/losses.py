"""Losses of the two training stages (docs/algorithm.md §2.2 and §2.3).

The autoencoder loss follows LDM's LPIPSWithDiscriminator with the GAN term off (it never starts within the
author's 25k steps): nll = sum over pixels of (|x - x_rec| + w_p * perceptual) per sample, plus 1e-6 * KL summed
per sample, both averaged over the batch. The sums matter: they set the KL weight's strength. LPIPS's learned
linear heads are not available offline, so the perceptual term is LPIPS's structure (unit-normalised channels,
squared difference, spatial mean, sum over layers) on a frozen backbone without the learned weights.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F


def kl_per_sample(moments: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, var) || N(0, I)) summed over latent dims, per sample; logvar clamped like LDM."""
    mean, logvar = torch.chunk(moments, 2, dim=1)
    logvar = torch.clamp(logvar, -30.0, 20.0)
    return 0.5 * torch.sum(mean.pow(2) + logvar.exp() - 1.0 - logvar, dim=[1, 2, 3])


def _unit(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return f / (torch.sqrt(torch.sum(f * f, dim=1, keepdim=True)) + eps)


class PerceptualLoss(torch.nn.Module):
    """LPIPS-shaped distance on a frozen feature net (a torch module or onnx_torch.OnnxModule) -> [B]."""

    def __init__(self, net: Callable[[torch.Tensor], Dict[str, torch.Tensor]], layers: Optional[Sequence[str]] = None):
        super().__init__()
        self.net = net
        if isinstance(net, torch.nn.Module):
            net.eval()
            for p in net.parameters():
                p.requires_grad_(False)
        self.layers = list(layers) if layers else None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self.net(x), self.net(y)
        names = self.layers or list(fx)
        total = x.new_zeros(x.shape[0])
        for n in names:
            d = (_unit(fx[n]) - _unit(fy[n])).pow(2).sum(dim=1)
            total = total + d.mean(dim=[1, 2])
        return total


def autoencoder_loss(x: torch.Tensor, rec: torch.Tensor, moments: torch.Tensor,
                     perceptual: Optional[PerceptualLoss], perceptual_weight: float = 1.0,
                     kl_weight: float = 1e-6) -> Dict[str, torch.Tensor]:
    """Returns {"loss", "l1", "perceptual", "kl"}; loss is what is minimised (LDM's per-sample sums)."""
    b = x.shape[0]
    l1 = (x - rec).abs()
    per_pixel = l1.sum(dim=[1, 2, 3])
    p = perceptual(x, rec) if perceptual is not None and perceptual_weight > 0 else x.new_zeros(b)
    nll = (per_pixel + perceptual_weight * p * l1[0].numel()).sum() / b
    kl = kl_per_sample(moments).sum() / b
    return {"loss": nll + kl_weight * kl, "l1": l1.mean(), "perceptual": p.mean(), "kl": kl}


def eps_mse(eps_pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """docs/algorithm.md §2.2: plain mean MSE (logvar 0, no ELBO term)."""
    return F.mse_loss(eps_pred.float(), eps.float())

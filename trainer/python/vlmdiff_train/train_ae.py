"""The `finetune-ae` stage: the autoencoder finetune of docs/algorithm.md §2.3.

From kl-f8 (or any AE checkpoint, via checkpoints.load_autoencoder) when `init` is given, else from scratch for
the small presets. Inputs are ImageNet-normalised train images (the space the scorer works in), loss
L1 + perceptual + 1e-6 * KL with the GAN term off (it never starts within the author's 25k steps), Adam(0.5, 0.9)
at lr = batch * 4.5e-6 by default. The perceptual net is a frozen ONNX backbone run through onnx_torch (LPIPS's
VGG weights are not available offline). Checkpoints every save_every steps with resume from the latest; the output
RUN/ae.pt is a {"state_dict": ...} file that checkpoints.load_autoencoder (the build stage) reads; a layout choice
(full_res_blocks) goes with it under "overrides" (checkpoints.autoencoder_layout).
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
from typing import Optional

import torch

from . import data as D
from .layout import memory_format
from .nets.autoencoder import DDConfig
from .losses import PerceptualLoss, autoencoder_loss
from .curves import CurveWriter
from .progress import Progress
from .stage_config import FinetuneAEConfig, parse_stage
from .train_denoiser import latest_checkpoint

log = logging.getLogger(__name__)


def run(cfg) -> dict:
    """The finetune-ae stage; cfg is a FinetuneAEConfig or a dict of its keys."""
    c: FinetuneAEConfig = parse_stage("finetune-ae", cfg)
    from . import presets
    from .checkpoints import load_autoencoder, read_object

    run_dir = c.run_dir
    total = int(c.max_steps)
    seed = int(c.seed)
    torch.manual_seed(seed)
    device = torch.device(c.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("finetune-ae config: device 'cuda' requested but torch sees no GPU")
    p, init = presets.get_preset(c.preset), None
    if c.init:  # a KL autoencoder's file is read once, for its layout record and its weights
        kl = isinstance(p.vae, DDConfig)  # a taef init is a directory or the published encoder file: load_taef
        init = read_object(c.init, trusted=c.trusted) if kl and os.path.isfile(c.init) else c.init
    n = _full_res_blocks(c, p, init)
    p = presets.with_ae_full_res_blocks(p, n)  # None keeps the preset's definition, LDM's layout
    layout = {} if n is None else {"ae_full_res_blocks": n}
    record = {"overrides": layout} if layout else {}  # written with every checkpoint and with ae.pt
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = presets.make_autoencoder(p)
    deterministic = bool(getattr(vae, "deterministic", False))
    if c.init:
        load_autoencoder(vae, init, trusted=c.trusted, what=f"finetune-ae init {c.init}")
    del init  # an SD checkpoint as init holds gigabytes the finetune no longer needs
    fmt = memory_format(c.memory_format, device, "finetune-ae")
    vae.to(device, memory_format=fmt).train()
    perc: Optional[PerceptualLoss] = None
    if c.perceptual_onnx:
        from .onnx_torch import OnnxModule
        net = OnnxModule.load(c.perceptual_onnx, outputs=c.perceptual_layers).to(device, memory_format=fmt)
        perc = PerceptualLoss(net, c.perceptual_layers)
    bs, acc = int(c.batch_size), int(c.accumulate)
    lr = float(c.lr if c.lr is not None else 4.5e-6 * bs)
    opt = torch.optim.Adam(vae.parameters(), lr=lr, betas=(0.5, 0.9))
    ds = D.train_dataset(dataclasses.replace(c, height=c.height or p.input_size, width=c.width or p.input_size))

    ckpt_dir = os.path.join(run_dir, "ae-checkpoints")
    os.makedirs(ckpt_dir, exist_ok=True)
    step, micro = 0, 0
    gen = torch.Generator().manual_seed(seed + 17)
    last = latest_checkpoint(ckpt_dir)
    if last:
        st = torch.load(last, map_location="cpu")
        had = (st.get("overrides") or {}).get("ae_full_res_blocks")
        if had != n:
            # a checkpoint of another layout would fail in load_state_dict with a list of keys; say why instead
            raise RuntimeError(f"finetune-ae: checkpoint {last} was trained with {_say(had)}, the config asks for "
                               f"{_say(n)}: set finetune_ae.extra.full_res_blocks: "
                               f"{presets.LDM_FULL_RES if had is None else had} to resume it, or remove {ckpt_dir} "
                               f"to train the new layout from the start")
        vae.load_state_dict(st["state_dict"])
        opt.load_state_dict(st["optimizer"])
        gen.set_state(st["generator"])
        torch.set_rng_state(st["torch_rng"])
        step, micro = int(st["step"]), int(st["micro"])
        log.info("resumed finetune-ae from %s at step %d", last, step)
    prog = Progress("finetune-ae", total, start_step=step)
    curve = CurveWriter(run_dir, "finetune-ae", start_step=step)
    pw, kw = float(c.perceptual_weight), float(c.kl_weight)
    save_every, log_every, keep = int(c.save_every), int(c.log_every), int(c.keep)
    n = len(ds)
    shown = 0.0
    while step < total:
        epoch = (micro * bs) // n
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        idx = [order[(micro * bs + j) % n] for j in range(bs)]
        x = D.collate([ds[i] for i in idx])["image"].to(device, memory_format=fmt)
        moments = vae.encode_moments(x)
        mean, logvar = torch.chunk(moments, 2, dim=1)
        noise = torch.randn(mean.shape, generator=gen).to(device)
        if deterministic:  # a pretrained tiny autoencoder: no posterior, so no sampling and no KL term
            z = mean
        else:
            z = mean + torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0)) * noise
        rec = vae.decode(z)
        parts = autoencoder_loss(x, rec, moments, perc, pw, 0.0 if deterministic else kw)
        if not torch.isfinite(parts["loss"]):
            raise RuntimeError(f"finetune-ae: loss is {float(parts['loss'])} at step {step} (lower lr)")
        (parts["loss"] / acc).backward()
        shown += float(parts["l1"]) / acc
        micro += 1
        if micro % acc:
            continue
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step % log_every == 0 or step == total:
            prog.step(step, loss=shown, epoch=epoch, perceptual=float(parts["perceptual"]), kl=float(parts["kl"]))
            curve.row(step, epoch, shown)
        shown = 0.0
        if step % save_every == 0 or step == total:
            _save(ckpt_dir, step, micro, vae, opt, gen, keep, record)
    out = os.path.join(run_dir, "ae.pt")
    tmp = out + ".tmp"
    torch.save({"state_dict": {k: v.detach().cpu().contiguous() for k, v in vae.state_dict().items()}, "preset": p.name,
                "step": step, **record}, tmp)
    os.replace(tmp, out)
    return {"autoencoder": out, "steps": step}


def _full_res_blocks(c: FinetuneAEConfig, p, init) -> Optional[int]:
    """The autoencoder's ResnetBlocks at full resolution (None: LDM's layout): the config's full_res_blocks when
    set, else the init's (its ae.pt record; none means LDM's, as every file written before the record), else the
    preset's for a new autoencoder (small: 0). A config that asks for another layout than the init was trained
    with is refused here, by name, rather than in load_state_dict with a list of keys."""
    from . import presets
    from .checkpoints import autoencoder_layout
    asked = presets.fresh_ae_full_res(p, c.full_res_blocks)
    if not c.init:
        return asked
    had = autoencoder_layout(init, trusted=c.trusted, name=c.init).get("ae_full_res_blocks")
    if c.full_res_blocks is not None and asked != had:
        raise RuntimeError(f"finetune-ae config: full_res_blocks {c.full_res_blocks} asks for {_say(asked)}, but "
                           f"init {c.init} was trained with {_say(had)}: drop the key to finetune the init's "
                           f"layout, or remove init to train the new layout from scratch")
    return had


def _say(n: Optional[int]) -> str:
    """A full-resolution block count as the refusals name it."""
    return "LDM's layout (no layout record)" if n is None else f"{n} full-resolution ResnetBlock(s)"


def _save(ckpt_dir, step, micro, vae, opt, gen, keep, record):
    path = os.path.join(ckpt_dir, f"step-{step:08d}.pt")
    tmp = path + ".tmp"
    try:
        torch.save({"step": step, "micro": micro, "state_dict": vae.state_dict(), "optimizer": opt.state_dict(),
                    "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), **record}, tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise RuntimeError(f"saving checkpoint {path}: {e}") from e
    for p in sorted(glob.glob(os.path.join(ckpt_dir, "step-*.pt")))[:-max(1, keep)]:
        os.remove(p)

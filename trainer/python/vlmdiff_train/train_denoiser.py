"""The `build` and `train` stages: assemble the model, then train the denoiser (docs/algorithm.md §2.1, §2.2, §2.4).

build: a preset's networks; for sd15 the SD1.5 checkpoint (UNet, CLIP, VAE) with the finetuned AE, for the small
presets fresh seeded weights with the finetuned AE when given; in both cases the SG network starts as a copy of the
UNet encoder (build_model.py). The tokenizer is the user's CLIP vocabulary when given, else BPE merges learnt from
the run's captions and class prompts (small presets train their own frozen-random text encoder; only "different
text gives different context" matters there). Output: a model file (model_file.py) that
the train, export and reference stages rebuild the networks from.

train: eps-MSE with t ~ U{0..T-1}, z = scale * posterior sample of the frozen VAE, hint = the clean normalised
image, context = frozen text encoder(caption), precomputed once per unique caption. Trainable: the SG network +
UNet output_blocks + out; AdamW(lr, wd 0.01). Gradient accumulation, seeded data order and noise, a checkpoint
every save_every optimiser steps with resume from the latest (data position and RNG states included, so a resumed
run continues the same sequence), DDP through torchrun when WORLD_SIZE > 1 (gloo on the CPU, nccl on GPUs; only
rank 0 writes; the ranks' weights are compared at the end), AMP: bf16 autocast on the CPU or GPU, fp16 (with a
GradScaler) on GPU only.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import math
import os
import re
from typing import Dict, List, Optional

import numpy as np
import torch

from . import data as D
from .curves import CurveWriter
from .model_file import Nets, encode_prompts, latent_scale, load_model_file, rebuild, save_reference_weights
from .layout import memory_format
from .losses import eps_mse
from .progress import Progress
from .constants import LATENT_SCALE
from .reference import alphas_cumprod
from .stage_config import BuildConfig, TrainConfig, parse_stage

log = logging.getLogger(__name__)


def run_build(cfg) -> dict:
    """The build stage; cfg is a BuildConfig or a dict of its keys."""
    c: BuildConfig = parse_stage("build", cfg)
    from . import presets
    from .checkpoints import autoencoder_layout, build_vlmdiff, init_sgn_from_unet, load_autoencoder
    from .tokenizer import CLIPTokenizer, learn_merges

    run_dir = c.run_dir
    name = c.preset
    os.makedirs(run_dir, exist_ok=True)
    overrides: dict = {}
    if c.control_levels is not None:
        overrides["control_levels"] = int(c.control_levels)
    if c.res_blocks is not None:
        overrides["res_blocks"] = int(c.res_blocks)
    if c.autoencoder:
        overrides.update(autoencoder_layout(c.autoencoder, trusted=c.trusted))
    else:  # an untrained autoencoder: the layout a new one of the preset gets, recorded in the model file
        full_res = presets.fresh_ae_full_res(presets.get_preset(name))
        if full_res is not None:
            overrides["ae_full_res_blocks"] = full_res
    nets = presets.build(name, with_dino=False, seed=int(c.seed), **overrides)
    trusted = c.trusted
    if c.sd_checkpoint:
        build_vlmdiff(nets.model, c.sd_checkpoint, c.autoencoder, trusted=trusted)
    else:
        if name == "sd15":
            raise RuntimeError("build config: preset sd15 needs sd_checkpoint (SD1.5 v1-5-pruned.ckpt)")
        if c.autoencoder:
            load_autoencoder(nets.vae, c.autoencoder, trusted=trusted)
        init_sgn_from_unet(nets.sgn, nets.unet.state_dict())
    # tokenizer: the user's CLIP vocabulary, else merges learnt from this run's texts
    if c.tokenizer:
        t = c.tokenizer
        tok = CLIPTokenizer.from_dir(t) if os.path.isdir(t) else CLIPTokenizer.from_bpe_gz(t)
        merges = [list(k) for k, _ in sorted(tok.bpe_ranks.items(), key=lambda kv: kv[1])]
    else:
        texts = list(D.read_captions(c.captions).values())
        tmpl = c.prompt_template
        texts += [tmpl.replace("{cls}", k.replace("_", " ")) for k in (c.classes or [])]
        if c.index:
            recs = D.read_index(c.index)
            texts += [tmpl.replace("{cls}", k.replace("_", " ")) for k in sorted({r["class"] for r in recs})]
        merges = [list(m) for m in learn_merges(texts or ["a photo"], int(c.num_merges))]
    vocab = 256 * 2 + len(merges) + 2
    if nets.text_encoder is not None and vocab > nets.text_encoder.cfg.vocab_size:
        raise RuntimeError(f"build: tokenizer vocabulary {vocab} exceeds the text encoder's {nets.text_encoder.cfg.vocab_size}")
    out = c.out or os.path.join(run_dir, "model.pt")
    # overrides travel in the model file, so train, export and the reference scorer rebuild the same networks
    builder: dict = {"overrides": overrides} if overrides else {}
    if c.latent_norm:
        if not (getattr(nets.vae, "deterministic", False) and hasattr(nets.vae, "set_latent_norm")) or not c.index:
            raise RuntimeError(f"build: latent_norm needs a deterministic autoencoder (taef presets; {name} has "
                               f"{type(nets.vae).__name__}) and the index to measure on")
        shift, spread = measured_latent_channels(nets.vae, c.index, presets.get_preset(name).input_size)
        nets.vae.set_latent_norm(shift, spread)
        log.info("latent normalisation per channel: shifts %.3g..%.3g, spreads %.3g..%.3g", float(shift.min()),
                 float(shift.max()), float(spread.min()), float(spread.max()))
    # auto measures unless SD's UNet is loaded: it learnt on kl-f8 latents times 0.18215 and keeps that scale.
    # A UNet trained here assumes unit-variance latents, and a from-scratch KL autoencoder's are near 1, not
    # kl-f8's 5.5 (session 60: std 0.86-1.27 on PIPED, so 0.18215 gave 0.16-0.23). Measured led SD's constant on
    # every metric of PIPED's full recipe, painted and test (session 61, docs/training.md).
    if c.index and (c.latent_scale == "measured" or (c.latent_scale == "auto" and not c.sd_checkpoint)):
        builder["latent_scale"] = measured_latent_scale(nets.vae, c.index, presets.get_preset(name).input_size)
        log.info("latent scale %.4g: 1/std of the autoencoder's latents on the training images",
                 builder["latent_scale"])
    save_model(out, name, nets.vae, nets.denoiser, nets.text_encoder, merges, {"stage": "build"}, builder)
    return {"model": out, "preset": name, "merges": len(merges),
            **{k: v for k, v in builder.items() if k != "overrides"}, **overrides}


def spread_sample(items: list, n: int) -> list:
    """Up to n of items, evenly spaced from the first (all of them when there are n or fewer)."""
    k = min(n, len(items))
    return [items[i * len(items) // k] for i in range(k)]


def _training_latents(vae, index: str, size: int, n_max: int, raw: bool = False) -> torch.Tensor:
    """Latents of up to n_max training normals taken evenly along the index, so that every class of a
    multi-class index is measured (the index lists class after class: its first 32 are one or two classes)."""
    recs = spread_sample(D.read_index(index, split="train", label=0), n_max)
    if not recs:
        raise RuntimeError(f"build: {index} has no training images to measure the latents on")
    ds = D.ImageDataset(recs, size, size)
    enc = vae._raw_latent if raw else vae.encode
    with torch.no_grad():
        return torch.cat([enc(D.collate([ds[j] for j in range(i, min(i + 8, len(ds)))])["image"])
                          for i in range(0, len(ds), 8)])


def measured_latent_channels(vae, index: str, size: int, n_max: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of the autoencoder's raw latents over up to n_max training images
    (every position of every image), for TinyAutoencoder.set_latent_norm. A channel that never varies is refused:
    it would divide by zero."""
    z = _training_latents(vae, index, size, n_max, raw=True)
    flat = z.transpose(0, 1).reshape(z.shape[1], -1).double()
    mean, std = flat.mean(1), flat.std(1)
    if not bool(torch.isfinite(mean).all()) or not bool((std > 1e-6).all()):
        raise RuntimeError(f"build: latent channels {torch.nonzero(~(std > 1e-6)).flatten().tolist()} do not vary "
                           "on the training images")
    return mean.float(), std.float()


def measured_latent_scale(vae, index: str, size: int, n_max: int = 32) -> float:
    """1 / std of the autoencoder's latents over up to n_max training images, as SD chose its 0.18215.

    Why: the diffusion schedule assumes unit-variance latents. A pretrained autoencoder's latent spread depends on
    its weights (taef2: about 0.68) and moves when it is finetuned, so the scale is measured on the user's own
    normals at build time and travels in the model file (model_file.latent_scale) to training and export.
    """
    z = _training_latents(vae, index, size, n_max)
    std = float(z.std())
    if not (std > 1e-6) or not math.isfinite(std):
        raise RuntimeError(f"build: the autoencoder's latents have std {std} on the training images")
    return round(1.0 / std, 6)


def save_model(path: str, preset: str, vae, denoiser, text, merges, extra: dict,
               builder: Optional[dict] = None) -> None:
    nets = Nets(vae=vae, denoiser=denoiser, features=None, hint=None, text=text)
    save_reference_weights(path, {"kind": "preset", "name": preset, **(builder or {})}, nets, features_kind="onnx",
                           tokenizer=merges, extra=extra)


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------

_CKPT_RE = re.compile(r"step-(\d+)\.pt$")


def latest_checkpoint(ckpt_dir: str) -> Optional[str]:
    found = []
    for p in glob.glob(os.path.join(ckpt_dir, "step-*.pt")):
        m = _CKPT_RE.search(p)
        if m:
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def _dist_env():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def run(cfg) -> dict:
    """The train stage; cfg is a TrainConfig or a dict of its keys."""
    tc: TrainConfig = parse_stage("train", cfg)
    run_dir = tc.run_dir
    blob = load_model_file(tc.model)
    world, rank, local = _dist_env()
    device_name = tc.device
    if device_name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"train config: device {device_name!r} requested but torch sees no GPU")
        # several ranks: each its local rank's GPU; one: the GPU the config names (cuda:N), else the first
        device = torch.device("cuda", local if world > 1 else (torch.device(device_name).index or 0))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1:
        import torch.distributed as dist
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://")
    amp = tc.amp  # none | bf16 | fp16, fp16 on cuda only: stage_config
    seed = int(tc.seed)
    torch.manual_seed(seed)

    nets, tok = rebuild(blob)
    if nets.text is None or tok is None:
        raise RuntimeError("train: the model file has no text encoder/tokenizer (run the build stage)")
    vae, den, text = nets.vae.to(device).eval(), nets.denoiser.to(device), nets.text.to(device).eval()
    for m in (vae, text):
        for p in m.parameters():
            p.requires_grad_(False)
    den.freeze_for_training()
    den.train()
    fmt = memory_format(tc.memory_format, device, "train")
    den.to(memory_format=fmt)
    params = [p for p in den.trainable_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(tc.lr), weight_decay=float(tc.weight_decay))
    # The hint block runs inside the wrapped forward: DDP must see every trainable parameter used in its forward.
    # find_unused_parameters: with only_mid_control the SG network's other zero convs (and SFF) get no gradient;
    # without it DDP never reduces the buckets holding them, and the ranks' weights drift apart silently.
    model: torch.nn.Module = _HintedDenoiser(den)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if device.type == "cuda" else None,
                                                          find_unused_parameters=True)

    ds = D.train_dataset(tc)
    bs, acc = int(tc.batch_size), int(tc.accumulate)  # >= 1: stage_config
    per_rank = len(range(rank, len(ds), world))
    # only whole accumulation windows per epoch: an optimiser step never mixes two epochs' data
    steps_per_epoch = max(1, (per_rank // bs) // acc)
    micro_per_epoch = steps_per_epoch * acc
    if tc.max_steps:
        total = int(tc.max_steps)
    else:  # one of the two is set: TrainConfig.check
        total = int(tc.epochs) * steps_per_epoch
    T = int(tc.train_steps)
    abar = torch.tensor(alphas_cumprod(float(tc.linear_start), float(tc.linear_end), T), dtype=torch.float32, device=device)
    scale = latent_scale(blob["builder"])
    posterior = tc.posterior
    gen = torch.Generator(device="cpu").manual_seed(seed * 1000 + rank)

    ckpt_dir = os.path.join(run_dir, "checkpoints")
    os.makedirs(ckpt_dir, exist_ok=True)
    step, micro_done = 0, 0
    last = latest_checkpoint(ckpt_dir)
    if last:
        st = torch.load(last, map_location="cpu")
        den.load_state_dict(st["denoiser"])
        opt.load_state_dict(st["optimizer"])
        # each rank continues its own noise stream (rank 0 saved all of them); older files hold rank 0's only
        gens = st.get("generators")
        gen.set_state(gens[rank] if gens and len(gens) == world else st["generator"])
        torch.set_rng_state(st["torch_rng"])
        step, micro_done = int(st["step"]), int(st["micro"])
        log.info("resumed from %s at step %d", last, step)

    ctx_cache: Dict[str, torch.Tensor] = {}

    def contexts(caps: List[str]) -> torch.Tensor:
        new = sorted({c for c in caps if c not in ctx_cache})
        if new:
            for c, e in zip(new, encode_prompts(text, tok, new, device)):
                ctx_cache[c] = e
        return torch.stack([ctx_cache[c] for c in caps])

    scaler = torch.cuda.amp.GradScaler(enabled=(amp == "fp16"))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    prog = Progress("train", total, start_step=step) if rank == 0 else None
    save_every = int(tc.save_every)
    log_every = int(tc.log_every)
    grad_clip = float(tc.grad_clip)
    last_saved = last
    loss_acc = 0.0
    val = _Validation(tc, vae, den, contexts, abar, scale, device, steps_per_epoch, enabled=(rank == 0))
    if last:
        val.restore(st.get("validation"))
    curve = CurveWriter(run_dir, "train", start_step=step, enabled=(rank == 0))
    cache_moments = not tc.augment
    snap_every = int(tc.snapshot_every)
    snap_dir = os.path.join(run_dir, "snapshots")
    if rank == 0:
        _drop_stale_snapshots(snap_dir, step // steps_per_epoch)
    mcache: dict = {}
    while step < total:
        epoch = micro_done // micro_per_epoch
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        order = order[rank::world]
        start = micro_done % micro_per_epoch
        for mi in range(start, micro_per_epoch):
            idx = [order[j % len(order)] for j in range(mi * bs, (mi + 1) * bs)]  # wraps when per_rank < bs
            batch = D.collate([ds[i] for i in idx])
            x = batch["image"].to(device, memory_format=fmt)
            with torch.no_grad():
                if cache_moments:
                    # the VAE is frozen and the images are not augmented: encode each image once
                    miss = [j for j, i in enumerate(idx) if i not in mcache]
                    if miss:
                        for j, mo in zip(miss, vae.encode_moments(x[miss])):
                            mcache[idx[j]] = mo.detach().cpu()
                    moments = torch.stack([mcache[i] for i in idx]).to(device)
                else:
                    moments = vae.encode_moments(x)
                mean, logvar = torch.chunk(moments, 2, dim=1)
                if posterior == "sample":
                    logvar = torch.clamp(logvar, -30.0, 20.0)
                    n = torch.randn(mean.shape, generator=gen).to(device)
                    z = scale * (mean + torch.exp(0.5 * logvar) * n)
                else:
                    z = scale * mean
                ctx = contexts(batch["caption"])
            t = torch.randint(0, T, (x.shape[0],), generator=gen).to(device)
            eps = torch.randn(z.shape, generator=gen).to(device)
            a = abar[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * z + (1 - a).sqrt() * eps
            with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
                pred = model(xt, t, ctx, x)
                loss = eps_mse(pred, eps) / acc
            if not torch.isfinite(loss):
                raise RuntimeError(f"train: loss is {float(loss)} at step {step} (lower lr or disable fp16)")
            scaler.scale(loss).backward()
            loss_acc += float(loss)
            micro_done += 1
            if micro_done % acc != 0:
                continue
            if grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            step += 1
            vloss = val.maybe_run(step, total)
            if prog is not None and (step % log_every == 0 or step == total or vloss is not None):
                prog.step(step, loss=loss_acc, epoch=epoch, **({} if vloss is None else {"val_loss": vloss}))
                curve.row(step, epoch, loss_acc, vloss)
            loss_acc = 0.0
            stop = val.should_stop()
            if world > 1:  # only rank 0 validates: every rank must take the same branch below
                stop = _all_agree(stop, device)
            if step % save_every == 0 or step == total or stop:
                gens = [gen.get_state()]
                if world > 1:  # every rank's noise generator, so a resumed rank continues its own stream
                    import torch.distributed as dist
                    gens = [None] * world
                    dist.all_gather_object(gens, gen.get_state())
                if rank == 0:
                    last_saved = _save_ckpt(ckpt_dir, step, micro_done, den, opt, gens, int(tc.keep), val.state())
            if snap_every > 0 and rank == 0 and step % steps_per_epoch == 0 and \
                    (step // steps_per_epoch) % snap_every == 0:
                _save_snapshot(snap_dir, step // steps_per_epoch, step, blob, vae, den, nets, text)
            if stop:
                log.info("early stop at step %d: validation loss has not improved for %d validations",
                         step, val.patience)
                total = step
            if step >= total:
                break
    if world > 1:
        _check_ranks_agree(den)
    out = os.path.join(run_dir, "model-trained.pt")
    if rank == 0:
        val.apply_selection(den)
        b = blob["builder"]
        nets_out = Nets(vae=vae.cpu(), denoiser=den.cpu(), features=nets.features, hint=None, text=text.cpu())
        save_reference_weights(out, b, nets_out, features_kind=blob.get("features", "onnx"),
                               tokenizer=blob.get("tokenizer"), extra={"stage": "train", "step": step,
                                                                       **val.summary()})
    if world > 1:
        _leave_group(world, rank)
    res = {"model": out, "checkpoint": last_saved or "", "steps": step, **val.summary()}
    if snap_every > 0:
        res["snapshots"] = snap_dir
    return res


def _drop_stale_snapshots(snap_dir: str, epoch: int) -> None:
    """Removes snapshots of epochs after `epoch` (all of them on a fresh start): a run redone with other settings
    must not leave the select stage candidates from an earlier training."""
    for p in glob.glob(os.path.join(snap_dir, "epoch-*.pt")):
        m = re.match(r"epoch-(\d+)\.pt$", os.path.basename(p))
        if m and int(m.group(1)) > epoch:
            os.remove(p)


def _save_snapshot(snap_dir: str, epoch: int, step: int, blob: dict, vae, den, nets, text) -> None:
    """Writes the denoiser's current weights as a model file snapshots/epoch-NNNN.pt: a candidate for the select
    stage, which scores each on synthetic defects. The validation loss keeps falling while the denoiser learns to
    rebuild defects too, so the last or lowest-loss weights are not always the best detector."""
    path = os.path.join(snap_dir, f"epoch-{epoch:04d}.pt")
    was_training = den.training
    den.eval()
    try:
        state = Nets(vae=vae, denoiser=den, features=nets.features, hint=None, text=text)
        save_reference_weights(path, blob["builder"], state, features_kind=blob.get("features", "onnx"),
                               tokenizer=blob.get("tokenizer"), extra={"stage": "train", "step": step, "epoch": epoch})
    finally:
        den.train(was_training)
    log.info("snapshot of epoch %d (step %d): %s", epoch, step, path)


class _HintedDenoiser(torch.nn.Module):
    """denoiser(x_t, t, context, hint_features(image)) as one forward, what DDP wraps."""

    def __init__(self, den: torch.nn.Module):
        super().__init__()
        self.den = den

    def forward(self, xt, t, ctx, image):
        return self.den(xt, t, ctx, self.den.sgn.hint_features(image))


def _leave_group(world: int, rank: int) -> None:
    """Ends DDP: a barrier, then every rank tells the rendezvous store (hosted by torchrun's agent, which outlives
    the ranks) that it has left the barrier, and waits until all have, before it tears its group down. A rank that
    tore the group down while another was still taking the barrier's last message from it left that rank spinning
    on a closed gloo connection (seen once in CI, torch 1.13: rank 0 done, rank 1 at 80% CPU until the test's
    900 s timeout)."""
    import torch.distributed as dist
    dist.barrier()
    try:
        store = dist.distributed_c10d._get_default_store()
    except Exception:  # a torch without it: the barrier alone, as before
        store = None
    if store is not None:
        store.set(f"vlmdiff/train/left/{rank}", "1")
        store.wait([f"vlmdiff/train/left/{r}" for r in range(world)])
    dist.destroy_process_group()


def _check_ranks_agree(den) -> None:
    """Under DDP every rank must end with the same weights (gradients are averaged, rank 0 writes the model):
    compare a per-tensor checksum across ranks and fail loudly when they drifted, instead of silently saving rank
    0's half of a diverged run."""
    import torch.distributed as dist
    names = [k for k, v in den.state_dict().items() if v.is_floating_point()]
    sd = den.state_dict()
    sums = torch.stack([sd[k].detach().double().sum() for k in names]).cpu()
    gathered = [torch.zeros_like(sums) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, sums)
    bad = [r for r, g in enumerate(gathered) if not torch.equal(g, gathered[0])]
    if bad:
        differ = [names[i] for i in range(len(names)) if any(g[i] != gathered[0][i] for g in gathered)]
        raise RuntimeError(f"train: DDP ranks {bad} hold other weights than rank 0 after training "
                           f"({len(differ)} tensors differ, e.g. {differ[:4]})")
    log.info("DDP: %d ranks agree on the weights (checksum %.17g)", len(gathered), float(sums.sum()))


def _save_ckpt(ckpt_dir: str, step: int, micro: int, den, opt, gens: list, keep: int,
               validation: Optional[dict] = None) -> str:
    path = os.path.join(ckpt_dir, f"step-{step:08d}.pt")
    tmp = path + ".tmp"
    try:
        torch.save({"step": step, "micro": micro, "denoiser": den.state_dict(), "optimizer": opt.state_dict(),
                    "generator": gens[0], "generators": gens, "torch_rng": torch.get_rng_state(),
                    "validation": validation or {}}, tmp)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise RuntimeError(f"saving checkpoint {path}: {e}") from e
    olds = sorted(glob.glob(os.path.join(ckpt_dir, "step-*.pt")))
    for p in olds[:-max(1, keep)]:
        os.remove(p)
    return path


def _all_agree(flag: bool, device) -> bool:
    """Rank 0's decision for every rank (only rank 0 validates)."""
    import torch.distributed as dist
    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


class _Validation:
    """The denoiser's loss on held-out normals (the index's val split), used for the curve, checkpoint selection
    and early stopping; never the test split.

    Why a fixed draw: eps-MSE depends strongly on t, so a validation loss with fresh t and noise each time is too
    noisy to select on. Each val image gets fixed timesteps spread over [0, T) and fixed noise, drawn once from a
    seeded generator, so two validations differ only by the weights.
    """

    def __init__(self, tc: TrainConfig, vae, den, contexts, abar, scale: float, device, steps_per_epoch: int,
                 enabled: bool = True):
        self.every = int(tc.val_every or steps_per_epoch)
        self.select = tc.select  # last | best_val: stage_config
        self.patience = int(tc.early_stop_patience)
        self.den, self.contexts, self.device = den, contexts, device
        self.best, self.best_step, self.bad, self.last = math.inf, 0, 0, None
        self.best_state: Optional[dict] = None
        self.batches: List[tuple] = []
        n_max = int(tc.val_images)
        vcfg = dataclasses.replace(tc, split="val", augment=False)
        try:
            vds = D.train_dataset(vcfg) if enabled and n_max > 0 else None
        except Exception as e:  # noqa: BLE001 - an index without a val split just has no validation
            log.warning("no validation normals (%s): training without a validation loss", e)
            vds = None
        if vds is None or len(vds) == 0:
            self.every = 0
            if enabled and (self.select == "best_val" or self.patience):
                raise RuntimeError("train config: select best_val / early_stop_patience need validation normals "
                                   "(data.val_fraction > 0)")
            return
        g = torch.Generator().manual_seed(int(tc.seed) + 4242)
        picks = torch.randperm(len(vds), generator=g)[:n_max].tolist()
        T = abar.shape[0]
        with torch.no_grad():
            for i in range(0, len(picks), 8):
                b = D.collate([vds[j] for j in picks[i:i + 8]])
                x = b["image"].to(device)
                mean = torch.chunk(vae.encode_moments(x), 2, dim=1)[0]
                z = scale * mean  # the posterior mean: validation must not depend on a sample
                k = x.shape[0]
                t = ((torch.arange(k) + i) * T // max(1, len(picks))).clamp(max=T - 1).to(device)
                eps = torch.randn(z.shape, generator=g).to(device)
                a = abar[t].view(-1, 1, 1, 1)
                self.batches.append((a.sqrt() * z + (1 - a).sqrt() * eps, t, b["caption"], x, eps))

    def maybe_run(self, step: int, total: int) -> Optional[float]:
        if not self.every or (step % self.every and step != total):
            return None
        self.den.eval()
        tot, n = 0.0, 0
        with torch.no_grad():
            for xt, t, caps, x, eps in self.batches:
                pred = self.den(xt, t, self.contexts(caps), self.den.sgn.hint_features(x))
                tot += float(eps_mse(pred, eps)) * xt.shape[0]
                n += xt.shape[0]
        self.den.train()
        v = tot / max(1, n)
        self.last = v
        if v < self.best:
            self.best, self.best_step, self.bad = v, step, 0
            if self.select == "best_val":
                self.best_state = {k: t.detach().cpu().clone() for k, t in self.den.state_dict().items()}
        else:
            self.bad += 1
        return v

    def should_stop(self) -> bool:
        return bool(self.patience) and self.bad >= self.patience

    def state(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "bad": self.bad, "best_state": self.best_state}

    def restore(self, st: Optional[dict]) -> None:
        if st:
            self.best, self.best_step, self.bad = st.get("best", math.inf), st.get("best_step", 0), st.get("bad", 0)
            self.best_state = st.get("best_state")

    def apply_selection(self, den) -> None:
        if self.select == "best_val" and self.best_state is not None:
            log.info("selected the weights of step %d (validation loss %.5g)", self.best_step, self.best)
            den.load_state_dict(self.best_state)

    def summary(self) -> dict:
        if not self.every:
            return {}
        # no validation yet (a run resumed at or past its last step from a checkpoint taken before the first
        # validation): nothing to report, rather than an infinite loss that no JSON reader accepts
        best = None if math.isinf(self.best) else round(self.best, 6)
        return {"val_loss_best": best, "val_loss_best_step": self.best_step,
                "val_loss_last": None if self.last is None else round(self.last, 6), "select": self.select}

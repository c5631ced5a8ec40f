"""Checkpoint loading: synthetic files in the real layouts (SD1.5 .ckpt, kl-f8 model.ckpt, DINO .pth, DiAD/VLMDiff
ckpt) written with torch.save and read back through checkpoints.py; strict errors that name the bad keys."""
from __future__ import annotations

import os
import pathlib
import re

import pytest
import torch

from vlmdiff_train import checkpoints as C
from vlmdiff_train.nets import VisionTransformer
from vlmdiff_train.presets import build

# Non-network entries real SD1.5 files carry beside the networks (LatentDiffusion buffers, EMA bookkeeping).
SD_EXTRAS = ["betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "posterior_variance",
             "model_ema.decay", "model_ema.num_updates"]


def _rand_like_sd(module, gen, prefix=""):
    return {prefix + k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
            for k, v in module.state_dict().items()}


def _sd15_file(nets, path, gen, ema=True):
    """An SD1.5-layout checkpoint for nets' UNet/VAE/text with random weights, like v1-5-pruned.ckpt."""
    sd = {}
    sd.update(_rand_like_sd(nets.unet, gen, C.UNET_PREFIX))
    sd.update(_rand_like_sd(nets.vae, gen, C.VAE_PREFIX))
    sd.update(_rand_like_sd(nets.text_encoder, gen, C.TEXT_PREFIX))
    sd[C.TEXT_PREFIX + C.TEXT_POSITION_IDS] = torch.arange(77).unsqueeze(0)
    for k in SD_EXTRAS:
        sd[k] = torch.rand(1000) if not k.startswith("model_ema") else torch.tensor(0.9999)
    if ema:  # the non-emaonly file has dot-less EMA copies of the UNet
        for k, v in list(sd.items()):
            if k.startswith(C.UNET_PREFIX):
                sd["model_ema." + k[len("model."):].replace(".", "")] = v
    torch.save({"state_dict": sd, "global_step": 840000, "epoch": 6}, path)
    return sd


@pytest.fixture()
def tiny():
    return build("tiny")


def test_tiny_sd15_file_loads_and_builds_sgn(tiny, tmp_path):
    gen = torch.Generator().manual_seed(7)
    path = tmp_path / "v1-5-pruned.ckpt"
    sd = _sd15_file(tiny, path, gen)
    rep = C.load_sd15(tiny.model, path)
    assert rep.loaded["unet"] == len(tiny.unet.state_dict())
    assert rep.loaded["vae"] == len(tiny.vae.state_dict())
    assert rep.loaded["text"] == len(tiny.text_encoder.state_dict())
    for k, v in tiny.unet.state_dict().items():
        assert torch.equal(v, sd[C.UNET_PREFIX + k]), k
    for k, v in tiny.vae.state_dict().items():
        assert torch.equal(v, sd[C.VAE_PREFIX + k]), k
    for k, v in tiny.text_encoder.state_dict().items():
        assert torch.equal(v, sd[C.TEXT_PREFIX + k]), k
    # docs/algorithm.md §2.4: SG keys shared with the UNet are copied, the new layers keep their zero init
    new = set(rep.sgn_initialised)
    assert new and all(k.startswith(("input_hint_block.", "zero_convs.", "middle_block_out.", "down")) for k in new)
    for k, v in tiny.sgn.state_dict().items():
        if k in new:
            if not k.startswith("input_hint_block.") or k.startswith("input_hint_block.14."):
                assert float(v.abs().max()) == 0.0, f"{k} should keep its zero init"
        else:
            assert torch.equal(v, sd[C.UNET_PREFIX + k]), k
    ignored = set(rep.ignored)
    assert set(SD_EXTRAS) <= ignored and any(k.startswith("model_ema.") for k in ignored)
    assert C.TEXT_PREFIX + C.TEXT_POSITION_IDS not in ignored  # consumed with the text part


def test_sd15_layout_file_loads_into_meta_sd15(tmp_path):
    """The full-size SD1.5 layout, written with broadcast (stride-0) tensors so the file stays small, loads into
    the sd15 networks built on the meta device: every key and shape of the real checkpoint is checked."""
    nets = build("sd15", meta=True)
    sd = {}
    for prefix, m in ((C.UNET_PREFIX, nets.unet), (C.VAE_PREFIX, nets.vae), (C.TEXT_PREFIX, nets.text_encoder)):
        for k, v in m.state_dict().items():
            sd[prefix + k] = torch.zeros(1).expand(v.shape)
    sd[C.TEXT_PREFIX + C.TEXT_POSITION_IDS] = torch.arange(77).unsqueeze(0)
    sd["betas"] = torch.zeros(1000)
    assert len([k for k in sd if k.startswith(C.UNET_PREFIX)]) == 686
    assert len([k for k in sd if k.startswith(C.VAE_PREFIX)]) == 248
    assert len([k for k in sd if k.startswith(C.TEXT_PREFIX)]) == 197
    path = tmp_path / "v1-5-pruned-emaonly.ckpt"
    torch.save({"state_dict": sd}, path)
    assert os.path.getsize(path) < 5_000_000
    rep = C.load_sd15(nets.model, path)
    assert rep.loaded == {"unet": 686, "vae": 248, "text": 196, "control": 349 - len(rep.sgn_initialised)}
    assert len(rep.sgn_initialised) == 51  # 13 zero convs + 8 hint convs (w+b each) + 9 SFF weights
    assert rep.ignored == ["betas"]

    # one real key renamed: the strict load names it, and counts
    sd2 = dict(sd)
    sd2[C.UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_kk.weight"] = sd2.pop(
        C.UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")
    with pytest.raises(C.CheckpointError) as e:
        C.load_sd15(nets.model, sd2)
    msg = str(e.value)
    assert "1 missing [input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight]" in msg
    assert "1 unexpected [input_blocks.1.1.transformer_blocks.0.attn2.to_kk.weight]" in msg
    assert "SD1.5 UNet" in msg


def _corrupt(sd, what):
    sd = dict(sd)
    if what == "missing":
        sd.pop("encoder.mid.attn_1.q.weight")
    elif what == "unexpected":
        sd["encoder.mid.attn_2.q.weight"] = torch.zeros(1)
    elif what == "misshaped":
        sd["decoder.conv_out.weight"] = torch.zeros(3, 3, 3, 3)
    elif what == "nan":
        sd["quant_conv.bias"] = torch.full_like(sd["quant_conv.bias"], float("nan"))
    elif what == "many_missing":
        for k in [k for k in sd if k.startswith("decoder.")][:12]:
            sd.pop(k)
    return sd


BAD = [
    ("missing", r"1 missing \[encoder\.mid\.attn_1\.q\.weight\]; 0 unexpected \[\]; 0 mis-shaped"),
    ("unexpected", r"0 missing \[\]; 1 unexpected \[encoder\.mid\.attn_2\.q\.weight\]"),
    ("misshaped", r"1 mis-shaped \[decoder\.conv_out\.weight \(checkpoint \[3, 3, 3, 3\], network \[3, 16, 3, 3\]\)"),
    ("nan", r"1 tensors hold NaN or Inf \[quant_conv\.bias\]"),
    ("many_missing", r"12 missing \[decoder\.conv_in\.weight, .*\(\+7 more\)\]"),
]


@pytest.mark.parametrize("what,pattern", BAD, ids=[b[0] for b in BAD])
def test_autoencoder_strict_errors(tiny, tmp_path, what, pattern):
    gen = torch.Generator().manual_seed(1)
    sd = _rand_like_sd(tiny.vae, gen)
    before = {k: v.clone() for k, v in tiny.vae.state_dict().items()}
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": _corrupt(sd, what)}, path)
    with pytest.raises(C.CheckpointError, match=pattern):
        C.load_autoencoder(tiny.vae, path)
    # a refused checkpoint changes nothing
    for k, v in tiny.vae.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_klf8_layout_with_loss_keys(tiny, tmp_path):
    """kl-f8's model.ckpt (and DiAD's finetuned AEs) carry the LPIPS/discriminator under loss.*: ignored."""
    gen = torch.Generator().manual_seed(2)
    sd = _rand_like_sd(tiny.vae, gen)
    sd["loss.logvar"] = torch.zeros(())
    sd["loss.perceptual_loss.net.slice1.0.weight"] = torch.zeros(64, 3, 3, 3)
    sd["loss.discriminator.main.0.weight"] = torch.zeros(64, 3, 4, 4)
    path = tmp_path / "kl-f8.ckpt"
    torch.save({"state_dict": sd, "epoch": 3}, path)
    rep = C.load_autoencoder(tiny.vae, path)
    assert rep.loaded["vae"] == len(tiny.vae.state_dict())
    assert len(rep.ignored) == 3
    for k, v in tiny.vae.state_dict().items():
        assert torch.equal(v, sd[k])


def test_build_vlmdiff_takes_vae_from_the_finetuned_ae(tiny, tmp_path):
    gen = torch.Generator().manual_seed(3)
    sd15 = tmp_path / "v1-5.ckpt"
    _sd15_file(tiny, sd15, gen, ema=False)
    ae = _rand_like_sd(tiny.vae, gen)
    ae_path = tmp_path / "fs_bottle.ckpt"
    torch.save({"state_dict": ae}, ae_path)
    rep = C.build_vlmdiff(tiny.model, sd15, ae_path)
    assert rep.loaded["vae"] == len(ae)
    for k, v in tiny.vae.state_dict().items():
        assert torch.equal(v, ae[k])
    assert C.VAE_PREFIX + "encoder.conv_in.weight" in rep.ignored  # SD's own VAE unused


DINO_LAYOUTS = ["plain", "teacher", "student_module"]


@pytest.mark.parametrize("layout", DINO_LAYOUTS)
def test_dino_layouts(tiny, tmp_path, layout):
    gen = torch.Generator().manual_seed(4)
    vit = tiny.dino
    sd = _rand_like_sd(vit, gen)
    if layout == "plain":  # dino_deitsmall8_pretrain.pth
        obj = sd
    elif layout == "teacher":  # full training checkpoint
        obj = {"teacher": {"backbone." + k: v for k, v in sd.items()} | {"head.mlp.0.weight": torch.zeros(2, 2)},
               "epoch": 100}
    else:
        obj = {"module.backbone." + k: v for k, v in sd.items()}
    path = tmp_path / "dino.pth"
    torch.save(obj, path)
    rep = C.load_dino(vit, path)
    assert rep.loaded["dino"] == 150 - 12 * (12 - tiny.preset.dino.depth)
    for k, v in vit.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_dino_sd15_shapes_on_meta():
    from vlmdiff_train.nets.layers import meta_device
    with meta_device():
        vit = VisionTransformer()
    sd = {k: torch.zeros(1).expand(v.shape) for k, v in vit.state_dict().items()}
    assert C.load_dino(vit, sd).loaded["dino"] == 150
    sd["pos_embed"] = torch.zeros(1, 1025, 384)  # a 256-trained table is not dino_vits8's
    with pytest.raises(C.CheckpointError, match=r"pos_embed \(checkpoint \[1, 1025, 384\], network \[1, 785, 384\]\)"):
        C.load_dino(vit, sd)


def test_vlmdiff_checkpoint_roundtrip(tiny, tmp_path):
    gen = torch.Generator().manual_seed(5)
    for m in (tiny.sgn, tiny.unet, tiny.vae, tiny.text_encoder):
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
    path = tmp_path / "vlmdiff.ckpt"
    C.save_vlmdiff_checkpoint(tiny.model, path, extra={"preset": "tiny", "global_step": 12})
    assert sorted(os.listdir(tmp_path)) == ["vlmdiff.ckpt"]  # no temp file left behind
    raw = torch.load(path)
    keys = raw["state_dict"].keys()
    assert raw["preset"] == "tiny"
    assert {k.split(".")[0] for k in keys} == {"control_model", "model", "first_stage_model", "cond_stage_model"}
    other = build("tiny", seed=99)
    rep = C.load_vlmdiff_checkpoint(other.model, path)
    assert set(rep.loaded) == {"control", "unet", "vae", "text"}
    for a, b in ((tiny.model, other.model),):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb), ka
    # a model without text encoder loads the same file, ignoring the text part
    notext = build("tiny", with_text=False)
    rep = C.load_vlmdiff_checkpoint(notext.model, path)
    assert "text" not in rep.loaded and any(k.startswith(C.TEXT_PREFIX) for k in rep.ignored)


def test_vlmdiff_checkpoint_missing_sff_key_is_named(tiny, tmp_path):
    sd = C.vlmdiff_state_dict(tiny.model)
    sd.pop("control_model.down22.0.weight")
    path = tmp_path / "broken.ckpt"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(C.CheckpointError, match=r"VLMDiff control .*1 missing \[down22\.0\.weight\]"):
        C.load_vlmdiff_checkpoint(tiny.model, path)


def test_sgn_init_refuses_a_unet_of_another_config(tiny):
    sd15 = build("sd15", meta=True)
    with pytest.raises(C.CheckpointError, match=r"mis-shaped \[time_embed\.0\.weight \(UNet \[1280, 320\], SG \[64, 16\]\)"):
        C.init_sgn_from_unet(tiny.sgn, sd15.unet.state_dict())


UNREADABLE = [
    ("no file", None, "no such file"),
    ("not a zip", b"this is not a checkpoint", "cannot be read"),
    ("truncated", "truncate", "cannot be read"),
    ("no tensors", {"state_dict": {"a": 1}}, "contains no tensors"),
    ("not a dict", [1, 2, 3], "not a state dict"),
    ("no unet keys", {"state_dict": {"first_stage_model.x": torch.zeros(1)}}, "no model.diffusion_model"),
]


@pytest.mark.parametrize("what,content,needle", UNREADABLE, ids=[u[0] for u in UNREADABLE])
def test_unreadable_checkpoints(tiny, tmp_path, what, content, needle):
    path = tmp_path / "bad.ckpt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "truncate":
        torch.save({"state_dict": C.vlmdiff_state_dict(tiny.model)}, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(C.CheckpointError, match=re.escape(needle)):
        C.load_sd15(tiny.model, path)


def test_pickled_code_needs_trusted(tmp_path, tiny):
    """weights_only loading refuses arbitrary objects (Lightning callbacks, ...) unless the caller trusts the file."""
    path = tmp_path / "lightning.ckpt"
    sd = {C.UNET_PREFIX + k: v for k, v in tiny.unet.state_dict().items()}
    torch.save({"state_dict": sd, "callbacks": {"cb": pathlib.PurePosixPath("x")}}, path)  # not a plain weight
    with pytest.raises(C.CheckpointError, match="trusted=True"):
        C.read_checkpoint(path)
    assert len(C.read_checkpoint(path, trusted=True)) == len(sd)

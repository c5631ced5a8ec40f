"""The pretrained tiny autoencoder (taef): strict loading of the published layout, its reconstruction on real
images, finetuning from it, and the validation loss / loss curves of the training stages."""
from __future__ import annotations

import csv
import glob
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlmdiff_train import data as D
from vlmdiff_train import presets, train_ae, train_denoiser
from vlmdiff_train.checkpoints import load_autoencoder
from vlmdiff_train.nets.taef import LOGVAR_DETERMINISTIC, TAEConfig, TinyAutoencoder, load_taef

S = 64
TINY_CFG = presets.get_preset("tiny-taef").vae


def _publish(module: TinyAutoencoder, d, prefix="taef2"):
    """Write a module's halves the way the published files are laid out (plain nn.Sequential state dicts)."""
    d.mkdir(parents=True, exist_ok=True)
    torch.save(module.encoder.state_dict(), d / f"{prefix}_encoder.pth")
    torch.save(module.decoder.state_dict(), d / f"{prefix}_decoder.pth")
    return d


def test_published_layout_loads_strictly(tmp_path):
    src = TinyAutoencoder(TINY_CFG)
    d = _publish(src, tmp_path / "w")
    dst = TinyAutoencoder(TINY_CFG)
    assert load_taef(dst, str(d)) == len(src.encoder.state_dict()) + len(src.decoder.state_dict())
    x = torch.randn(1, 3, S, S)
    with torch.no_grad():
        assert torch.equal(src.encode(x), dst.encode(x))
    # the encoder file's path works too, and load_autoencoder dispatches on the module type
    assert load_autoencoder(TinyAutoencoder(TINY_CFG), str(d / "taef2_encoder.pth")).loaded["vae"] > 0


@pytest.mark.parametrize("damage,want", [
    (lambda sd: sd.pop("1.conv.0.weight"), "missing 1.conv.0.weight"),
    (lambda sd: sd.__setitem__("99.weight", torch.zeros(1)), "unexpected 99.weight"),
    (lambda sd: sd.__setitem__("0.weight", torch.zeros(16, 3, 5, 5)), "mis-shaped 0.weight"),
    (lambda sd: sd["0.bias"].fill_(float("nan")), "non-finite values in 0.bias"),
])
def test_damaged_files_are_refused_by_name(tmp_path, damage, want):
    src = TinyAutoencoder(TINY_CFG)
    d = _publish(src, tmp_path / "w")
    sd = torch.load(d / "taef2_encoder.pth")
    damage(sd)
    torch.save(sd, d / "taef2_encoder.pth")
    with pytest.raises(RuntimeError, match=want):
        load_taef(TinyAutoencoder(TINY_CFG), str(d))


def test_other_latent_width_is_refused(tmp_path):
    d = _publish(TinyAutoencoder(TAEConfig(channels=16, latent_channels=4, gn_hidden=32)), tmp_path / "w")
    with pytest.raises(RuntimeError, match="mis-shaped"):
        load_taef(TinyAutoencoder(TINY_CFG), str(d))
    with pytest.raises(FileNotFoundError, match="_encoder.pth"):
        load_taef(TinyAutoencoder(TINY_CFG), str(tmp_path))


def test_moments_are_deterministic_and_in_normalised_space():
    m = TinyAutoencoder(TINY_CFG).eval()
    x = torch.randn(2, 3, S, S)
    mo = m.encode_moments(x)
    assert mo.shape == (2, 16, S // 8, S // 8)
    mean, logvar = m.split_moments(mo)
    assert torch.all(logvar == LOGVAR_DETERMINISTIC)
    assert torch.equal(mean, m.encode(x, sample=True))
    rec = m.decode(mean)
    # decode clamps to [0, 1] RGB, then normalises: the result lies in the normalised image of [0, 1]
    lo = (0 - torch.tensor(TINY_CFG.mean)) / torch.tensor(TINY_CFG.std)
    hi = (1 - torch.tensor(TINY_CFG.mean)) / torch.tensor(TINY_CFG.std)
    assert torch.all(rec >= lo.view(1, 3, 1, 1) - 1e-5) and torch.all(rec <= hi.view(1, 3, 1, 1) + 1e-5)


def test_real_taef2_reconstructs_industrial_normals(shared_dir):
    w = shared_dir / "weights" / "taef2"
    files = sorted(glob.glob(str(shared_dir / "datasets" / "piped" / "*" / "train" / "good" / "*")))[::90][:4]
    if not w.is_dir() or not files:
        pytest.skip("taef2 weights or PIPED not in the shared directory")
    m = TinyAutoencoder().eval()
    load_taef(m, str(w))
    mean, std = torch.tensor(m.cfg.mean).view(1, 3, 1, 1), torch.tensor(m.cfg.std).view(1, 3, 1, 1)
    psnr = []
    for f in files:
        x = torch.from_numpy(np.array(Image.open(f).convert("RGB").resize((256, 256), Image.BILINEAR)))
        x = x.permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            r = m.decode(m.encode((x - mean) / std)) * std + mean
        psnr.append(10 * np.log10(1 / float(((r - x) ** 2).mean())))
    assert min(psnr) > 35, psnr  # published: ~39 dB on PIPED normals; a wrong block order gives < 15 dB


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Four small textured normals, two held out as validation."""
    d = tmp_path_factory.mktemp("ds")
    recs = []
    for i in range(4):
        rng = np.random.default_rng(i)
        yy, xx = np.mgrid[0:S, 0:S]
        img = np.stack([(xx * 3 + 40 * i) % 256, (yy * 3) % 256, np.full_like(xx, 90 + 30 * i)], -1)
        img = np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"img{i}.png")
        recs.append({"path": f"img{i}.png", "mask": "", "class": "widget", "split": "train" if i < 2 else "val",
                     "label": 0})
    (d / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (d / "captions.json").write_text(json.dumps({}))
    return d


def test_finetune_from_pretrained_taef_reduces_error_without_kl(dataset, tmp_path, capsys):
    torch.manual_seed(3)
    init = _publish(TinyAutoencoder(TINY_CFG), tmp_path / "init")
    cfg = {"run_dir": str(tmp_path / "run"), "preset": "tiny-taef", "index": str(dataset / "index.jsonl"),
           "init": str(init), "batch_size": 2, "lr": 2e-3, "max_steps": 10, "log_every": 5, "seed": 1}
    x = D.collate([D.train_dataset({"index": str(dataset / "index.jsonl"), "height": S, "width": S})[i]
                   for i in range(2)])["image"]

    def l1(module):
        with torch.no_grad():
            return float((module.decode(module.encode(x)) - x).abs().mean())

    before = TinyAutoencoder(TINY_CFG)
    load_taef(before, str(init))
    out = train_ae.run(cfg)
    after = TinyAutoencoder(TINY_CFG)
    after.load_state_dict(torch.load(out["autoencoder"])["state_dict"])
    assert l1(after) < 0.8 * l1(before)
    ev = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
    assert [e["kl"] for e in ev] and all(e["stage"] == "finetune-ae" for e in ev)
    rows = list(csv.reader(open(tmp_path / "run" / "curves" / "finetune-ae.csv")))
    assert rows[0] == ["step", "epoch", "loss", "val_loss"] and [r[0] for r in rows[1:]] == ["5", "10"]
    # zero steps keep the pretrained weights exactly (finetune_ae.max_steps: 0), from the directory or from the
    # published encoder file's path (its decoder beside it)
    for i, src in enumerate((init, init / "taef2_encoder.pth")):
        out0 = train_ae.run(dict(cfg, run_dir=str(tmp_path / f"run0-{i}"), init=str(src), max_steps=0))
        kept = torch.load(out0["autoencoder"])["state_dict"]
        assert all(torch.equal(kept[k], v) for k, v in before.state_dict().items())


def _built(dataset, run, preset):
    return train_denoiser.run_build({"run_dir": str(run), "preset": preset, "index": str(dataset / "index.jsonl"),
                                     "captions": str(dataset / "captions.json"), "seed": 0})["model"]


def test_validation_loss_curve_selection_and_early_stop(dataset, tmp_path, capsys):
    model = _built(dataset, tmp_path / "b", "tiny-taef")
    cfg = {"run_dir": str(tmp_path / "t"), "model": model, "index": str(dataset / "index.jsonl"),
           "captions": str(dataset / "captions.json"), "height": S, "width": S, "batch_size": 2, "lr": 1e-3,
           "max_steps": 6, "val_every": 2, "save_every": 100, "seed": 5, "select": "best_val"}
    out = train_denoiser.run(cfg)
    rows = list(csv.reader(open(tmp_path / "t" / "curves" / "train.csv")))[1:]
    vals = {int(r[0]): float(r[3]) for r in rows if r[3]}
    assert sorted(vals) == [2, 4, 6] and all(np.isfinite(v) for v in vals.values())
    assert out["val_loss_best"] == pytest.approx(min(vals.values()), rel=1e-4)
    assert out["val_loss_best_step"] == min(vals, key=vals.get)
    # the latent scale comes from the preset (taef: not SD's 0.18215)
    assert train_denoiser.latent_scale({"kind": "preset", "name": "tiny-taef"}) == presets.TAEF2_SCALE
    # patience 1 with an impossible improvement (lr 0: the loss cannot go down) stops after the 2nd validation
    out2 = train_denoiser.run(dict(cfg, run_dir=str(tmp_path / "t2"), lr=0.0, max_steps=20, early_stop_patience=1))
    assert out2["steps"] == 4, out2
    capsys.readouterr()


def test_snapshots_every_n_epochs_hold_that_epochs_weights(dataset, tmp_path):
    from vlmdiff_train.model_file import load_model_file
    model = _built(dataset, tmp_path / "b", "tiny")
    run = tmp_path / "t"
    snaps = run / "snapshots"
    snaps.mkdir(parents=True)
    (snaps / "epoch-0099.pt").write_bytes(b"stale")  # from an earlier, longer training in the same run dir
    cfg = {"run_dir": str(run), "model": model, "index": str(dataset / "index.jsonl"), "height": S, "width": S,
           "batch_size": 2, "lr": 1e-3, "epochs": 4, "save_every": 100, "seed": 3, "snapshot_every": 2}
    out = train_denoiser.run(cfg)
    assert out["snapshots"] == str(snaps)
    assert sorted(p.name for p in snaps.iterdir()) == ["epoch-0002.pt", "epoch-0004.pt"]
    per_epoch = out["steps"] // 4
    two, four = load_model_file(str(snaps / "epoch-0002.pt")), load_model_file(str(snaps / "epoch-0004.pt"))
    assert two["extra"]["step"] == 2 * per_epoch and four["extra"]["step"] == out["steps"]
    final = load_model_file(out["model"])
    # the last snapshot is the final weights (select: last); the earlier one differs: it is not a copy
    for k, v in final["state"]["denoiser"].items():
        assert torch.equal(four["state"]["denoiser"][k], v), k
    assert any(not torch.equal(two["state"]["denoiser"][k], v) for k, v in final["state"]["denoiser"].items())
    with pytest.raises(RuntimeError, match="snapshot_every"):
        train_denoiser.run(dict(cfg, run_dir=str(tmp_path / "bad"), snapshot_every=-1))


def test_best_val_without_validation_normals_is_refused(dataset, tmp_path):
    recs = [json.loads(l) for l in (dataset / "index.jsonl").read_text().splitlines()]
    idx = tmp_path / "index.jsonl"
    idx.write_text("".join(json.dumps(dict(r, path=str(dataset / r["path"]))) + "\n" for r in recs
                           if r["split"] != "val"))
    model = _built(dataset, tmp_path / "b", "tiny")
    with pytest.raises(RuntimeError, match="need validation normals"):
        train_denoiser.run({"run_dir": str(tmp_path / "t"), "model": model, "index": str(idx), "height": S,
                            "width": S, "batch_size": 2, "max_steps": 1, "select": "best_val"})


def test_build_measures_the_latent_scale_of_a_deterministic_autoencoder(dataset, tmp_path):
    from vlmdiff_train.model_file import latent_scale, load_model_file, rebuild
    model = _built(dataset, tmp_path / "b", "tiny-taef")
    blob = load_model_file(model)
    s = blob["builder"]["latent_scale"]
    nets, _ = rebuild(blob)
    x = D.collate([D.train_dataset({"index": str(dataset / "index.jsonl"), "height": S, "width": S})[i]
                   for i in range(2)])["image"]
    with torch.no_grad():
        std = float(nets.vae.encode(x).std())
    assert s == pytest.approx(1 / std, rel=1e-3)  # the two training images are all the build stage saw
    assert latent_scale(blob["builder"]) == s
    # a KL VAE's is measured too (its posterior means), by default and by name: the UNet is trained here on
    # whatever spread the autoencoder has, not SD's (session 61)
    base = {"index": str(dataset / "index.jsonl"), "captions": str(dataset / "captions.json"), "seed": 0}
    for scale in ("auto", "measured"):
        kl = load_model_file(train_denoiser.run_build(dict(base, run_dir=str(tmp_path / scale), preset="tiny",
                                                           latent_scale=scale))["model"])
        with torch.no_grad():
            kl_std = float(rebuild(kl)[0].vae.encode(x).std())
        assert kl["builder"]["latent_scale"] == pytest.approx(1 / kl_std, rel=1e-3), scale
    # preset keeps the preset's constant (SD's 0.18215 for a KL VAE): nothing recorded, the preset's is read
    kept = load_model_file(train_denoiser.run_build(dict(base, run_dir=str(tmp_path / "kp"), preset="tiny",
                                                         latent_scale="preset"))["model"])
    assert "latent_scale" not in kept["builder"] and latent_scale(kept["builder"]) == 0.18215
    # without an index auto has nothing to measure on and keeps the preset's
    bare = load_model_file(train_denoiser.run_build({"run_dir": str(tmp_path / "bare"), "preset": "tiny"})["model"])
    assert "latent_scale" not in bare["builder"]
    kept = load_model_file(train_denoiser.run_build(dict(base, run_dir=str(tmp_path / "p"), preset="tiny-taef",
                                                         latent_scale="preset"))["model"])
    assert "latent_scale" not in kept["builder"] and latent_scale(kept["builder"]) == presets.TAEF2_SCALE
    with pytest.raises(RuntimeError, match="latent_scale measured needs the index"):
        train_denoiser.run_build({"run_dir": str(tmp_path / "x"), "preset": "tiny", "latent_scale": "measured"})
    with pytest.raises(RuntimeError, match="latent_scale: 'unit' is not one of auto, measured, preset"):
        train_denoiser.run_build(dict(base, run_dir=str(tmp_path / "x"), preset="tiny", latent_scale="unit"))


def test_build_control_levels_travel_in_the_model_file(dataset, tmp_path):
    """build.control_levels is written into the model file, so training and export rebuild the same UNet."""
    from vlmdiff_train.model_file import load_model_file, rebuild
    out = train_denoiser.run_build({"run_dir": str(tmp_path / "b"), "preset": "tiny", "index":
                                    str(dataset / "index.jsonl"), "captions": str(dataset / "captions.json"),
                                    "seed": 0, "control_levels": 3})
    assert out["control_levels"] == 3
    blob = load_model_file(out["model"])
    assert blob["builder"]["overrides"] == {"control_levels": 3}
    nets, _ = rebuild(blob)
    assert nets.denoiser.unet.control_levels == 3
    # the default stays DiAD's only-mid control, with nothing recorded
    plain = load_model_file(_built(dataset, tmp_path / "p", "tiny"))
    assert "overrides" not in plain["builder"]
    assert rebuild(plain)[0].denoiser.unet.control_levels == 1
    with pytest.raises(ValueError, match="control_levels 4: the UNet has 3 levels"):
        train_denoiser.run_build({"run_dir": str(tmp_path / "x"), "preset": "tiny", "index":
                                  str(dataset / "index.jsonl"), "captions": str(dataset / "captions.json"),
                                  "control_levels": 4})


def test_build_res_blocks_travel_in_the_model_file(dataset, tmp_path):
    """build.res_blocks is written into the model file, and the UNet and the SG branch that mirrors its encoder
    are rebuilt with that many ResBlocks per level (the decoder one more), so train, export and the reference
    scorer run the same networks."""
    from vlmdiff_train.nets.unet import ResBlock
    from vlmdiff_train.model_file import load_model_file, rebuild
    base = {"preset": "tiny", "index": str(dataset / "index.jsonl"), "captions": str(dataset / "captions.json"),
            "seed": 0}
    out = train_denoiser.run_build(dict(base, run_dir=str(tmp_path / "b"), res_blocks=1))
    assert out["res_blocks"] == 1
    blob = load_model_file(out["model"])
    assert blob["builder"]["overrides"] == {"res_blocks": 1}
    lean = rebuild(blob)[0].denoiser
    full = rebuild(load_model_file(train_denoiser.run_build(dict(base, run_dir=str(tmp_path / "p")))["model"]))[0].denoiser

    def blocks(m):
        return sum(isinstance(x, ResBlock) for x in m.modules())

    levels = len(lean.unet.cfg.channel_mult)
    # encoder: res_blocks a level; decoder: res_blocks + 1 a level; middle: 2 (tiny's preset has 2 a level)
    assert blocks(lean.unet) == levels * 1 + levels * 2 + 2
    assert blocks(full.unet) == levels * 2 + levels * 3 + 2
    assert blocks(lean.sgn) < blocks(full.sgn)
    # refused by name: by the stage's settings (as the check line does, before any stage) and by presets.build
    with pytest.raises(RuntimeError, match="build config: res_blocks: 0 is below its minimum 1"):
        train_denoiser.run_build(dict(base, run_dir=str(tmp_path / "x"), res_blocks=0))
    with pytest.raises(ValueError, match="res_blocks 0: want at least one"):
        presets.build("tiny", res_blocks=0)


def test_ae_full_res_blocks_travel_from_the_finetune_to_the_model_file(dataset, tmp_path):
    """finetune_ae.full_res_blocks trains an autoencoder with that many ResnetBlocks at full resolution (encoder
    and decoder each), ae.pt records it, and the build stage builds that layout before loading the weights and
    writes it into the model file, so train, export and the reference scorer rebuild the same networks. Set once,
    in the finetune_ae section: the build stage has no key of its own to disagree with it."""
    from vlmdiff_train.checkpoints import CheckpointError, autoencoder_layout
    from vlmdiff_train.model_file import load_model_file, rebuild
    from vlmdiff_train.nets.autoencoder import AutoencoderKL, DDConfig
    idx = str(dataset / "index.jsonl")
    ae = {"preset": "tiny", "index": idx, "batch_size": 2, "max_steps": 2, "log_every": 1, "seed": 1}
    lean_ae = train_ae.run(dict(ae, run_dir=str(tmp_path / "a0"), full_res_blocks=0))["autoencoder"]
    plain_ae = train_ae.run(dict(ae, run_dir=str(tmp_path / "a")))["autoencoder"]
    assert torch.load(lean_ae)["overrides"] == {"ae_full_res_blocks": 0}
    assert "overrides" not in torch.load(plain_ae) and autoencoder_layout(plain_ae) == {}
    # a run directory whose checkpoints have the other layout: resuming says so instead of failing on keys
    with pytest.raises(RuntimeError, match="trained with 0 full-resolution ResnetBlock\\(s\\), the config asks for "
                                           "LDM's layout .*: set finetune_ae.extra.full_res_blocks: 0 to resume it, "
                                           "or remove .*ae-checkpoints"):
        train_ae.run(dict(ae, run_dir=str(tmp_path / "a0"), max_steps=3))

    base = {"preset": "tiny", "index": idx, "captions": str(dataset / "captions.json"), "seed": 0}
    out = train_denoiser.run_build(dict(base, run_dir=str(tmp_path / "b0"), autoencoder=lean_ae))
    assert out["ae_full_res_blocks"] == 0
    blob = load_model_file(out["model"])
    assert blob["builder"]["overrides"] == {"ae_full_res_blocks": 0}
    vae = rebuild(blob)[0].vae
    assert len(vae.encoder.down[0].block) == 0 and len(vae.decoder.up[0].block) == 0
    # the weights the finetune trained, not a fresh init of the same layout
    trained = torch.load(lean_ae)["state_dict"]
    assert all(torch.equal(vae.state_dict()[k].float(), v.float()) for k, v in trained.items())
    x = torch.rand(1, 3, S, S)
    with torch.no_grad():
        assert vae.decode(vae.encode(x)).shape == x.shape
    plain = rebuild(load_model_file(train_denoiser.run_build(dict(base, run_dir=str(tmp_path / "b"),
                                                                      autoencoder=plain_ae))["model"]))[0].vae
    # the preset's LDM layout: num_res_blocks (1 for tiny) in the encoder, one more in the decoder
    assert len(plain.encoder.down[0].block) == 1 and len(plain.decoder.up[0].block) == 2
    assert sum(p.numel() for p in vae.parameters()) < sum(p.numel() for p in plain.parameters())

    # refused by name: the stage's settings, a pretrained layout, a first level that changes channels, and an
    # ae.pt whose overrides this trainer does not know
    with pytest.raises(RuntimeError, match="finetune-ae config: full_res_blocks: -2 is below its minimum -1"):
        train_ae.run(dict(ae, run_dir=str(tmp_path / "x"), full_res_blocks=-2))
    with pytest.raises(ValueError, match="preset tiny-taef's autoencoder .* fixed layout"):
        presets.build("tiny-taef", ae_full_res_blocks=0)
    with pytest.raises(ValueError, match="preset tiny-taef's autoencoder .* fixed layout"):
        train_ae.run(dict(ae, preset="tiny-taef", run_dir=str(tmp_path / "x"), full_res_blocks=-1))
    with pytest.raises(ValueError, match="full_res_blocks 0 needs ch_mult\\[0\\] 1"):
        AutoencoderKL(DDConfig(ch=8, ch_mult=(2, 2), num_res_blocks=1, norm_groups=4, full_res_blocks=0))
    odd = tmp_path / "odd.pt"
    torch.save({"state_dict": trained, "overrides": {"full_res": 0}}, odd)
    with pytest.raises(CheckpointError, match="odd.pt: overrides .*full_res"):
        train_denoiser.run_build(dict(base, run_dir=str(tmp_path / "bx"), autoencoder=str(odd)))


def test_a_new_autoencoder_takes_the_presets_layout_and_older_files_keep_theirs(dataset, tmp_path, monkeypatch):
    """A preset can give new autoencoders another full-resolution layout than its network definition (the small
    preset: 0 blocks since session 60) while every file without a layout record, which is every file written
    before, still rebuilds the definition (LDM's layout) it was trained with. Exercised on a tiny twin of the
    small preset's setting: a finetune from scratch takes the new layout and records it; the build stage without
    an autoencoder records it too; a record-less ae.pt (an older run) builds LDM's layout and loads; a finetune
    from an init keeps the init's layout unless the config asks, and asking for another one is refused by name;
    -1 asks for LDM's layout explicitly."""
    import dataclasses
    from vlmdiff_train.checkpoints import autoencoder_layout
    from vlmdiff_train.model_file import load_model_file, rebuild
    assert presets.get_preset("small").fresh_ae_full_res_blocks == 0
    assert presets.get_preset("small").vae.full_res_blocks is None  # the definition older files rebuild
    assert all(presets.get_preset(n).fresh_ae_full_res_blocks is None for n in ("sd15", "tiny", "taef2"))
    monkeypatch.setitem(presets.PRESETS, "tiny-lean",
                        dataclasses.replace(presets.get_preset("tiny"), name="tiny-lean", fresh_ae_full_res_blocks=0))
    idx = str(dataset / "index.jsonl")
    ae = {"preset": "tiny-lean", "index": idx, "batch_size": 2, "max_steps": 2, "log_every": 1, "seed": 1}
    base = {"preset": "tiny-lean", "index": idx, "captions": str(dataset / "captions.json"), "seed": 0}

    def blocks(model):  # the rebuilt autoencoder's ResnetBlocks at full resolution, encoder and decoder
        vae = rebuild(load_model_file(model))[0].vae
        return len(vae.encoder.down[0].block), len(vae.decoder.up[0].block)

    new = train_ae.run(dict(ae, run_dir=str(tmp_path / "new")))["autoencoder"]
    assert autoencoder_layout(new) == {"ae_full_res_blocks": 0}
    assert blocks(train_denoiser.run_build(dict(base, run_dir=str(tmp_path / "bn"), autoencoder=new))["model"]) == (0, 0)
    assert blocks(train_denoiser.run_build(dict(base, run_dir=str(tmp_path / "bu")))["model"]) == (0, 0)
    ldm = train_ae.run(dict(ae, run_dir=str(tmp_path / "ldm"), full_res_blocks=-1))["autoencoder"]
    assert autoencoder_layout(ldm) == {}
    # an ae.pt written before the record (tiny's, no overrides): LDM's layout, its weights load strictly
    old = train_ae.run(dict(ae, preset="tiny", run_dir=str(tmp_path / "old")))["autoencoder"]
    assert blocks(train_denoiser.run_build(dict(base, run_dir=str(tmp_path / "bo"), autoencoder=old))["model"]) == (1, 2)
    # a finetune from an init keeps the init's layout
    again = train_ae.run(dict(ae, run_dir=str(tmp_path / "again"), init=old))["autoencoder"]
    assert autoencoder_layout(again) == {}
    lean_again = train_ae.run(dict(ae, run_dir=str(tmp_path / "lean-again"), init=new))["autoencoder"]
    assert autoencoder_layout(lean_again) == {"ae_full_res_blocks": 0}
    with pytest.raises(RuntimeError, match="full_res_blocks 0 asks for 0 full-resolution ResnetBlock\\(s\\), but init "
                                           ".*old.*ae.pt was trained with LDM's layout"):
        train_ae.run(dict(ae, run_dir=str(tmp_path / "x"), init=old, full_res_blocks=0))


def test_build_latent_norm_centres_each_channel_and_keeps_reconstructions(dataset, tmp_path):
    """build.latent_norm measures each latent channel's mean and spread on the training normals and stores them
    in the autoencoder: its latents are then zero-mean unit-spread per channel there, the measured global scale is
    about 1, decode(encode(x)) is what it was without (the affine is inverted exactly), and a state dict from
    before the normalisation loads as the identity."""
    from vlmdiff_train.model_file import load_model_file, rebuild
    base = {"preset": "tiny-taef", "index": str(dataset / "index.jsonl"), "captions": str(dataset / "captions.json"),
            "seed": 0}
    normed = load_model_file(train_denoiser.run_build(dict(base, run_dir=str(tmp_path / "n"), latent_norm=True))["model"])
    plain = load_model_file(train_denoiser.run_build(dict(base, run_dir=str(tmp_path / "p")))["model"])
    vn, vp = rebuild(normed)[0].vae, rebuild(plain)[0].vae
    assert not torch.equal(vn.latent_spread, torch.ones_like(vn.latent_spread))
    x = D.collate([D.train_dataset({"index": str(dataset / "index.jsonl"), "height": S, "width": S})[i]
                   for i in range(2)])["image"]  # the two training images: all the build stage saw
    with torch.no_grad():
        z = vn.encode(x)
        per = z.transpose(0, 1).reshape(z.shape[1], -1)
        assert per.mean(1).abs().max() < 1e-4 and (per.std(1) - 1).abs().max() < 1e-3
        assert normed["builder"]["latent_scale"] == pytest.approx(1.0, rel=2e-2)
        assert torch.allclose(vn.decode(z), vp.decode(vp.encode(x)), atol=1e-5)
        m = vn.encode_moments(x)
        assert torch.allclose(m[:, : z.shape[1]], z)
    old = {k: v for k, v in vp.state_dict().items() if not k.startswith("latent_")}
    fresh = TinyAutoencoder(vp.cfg)
    fresh.load_state_dict(old, strict=True)
    assert torch.equal(fresh.latent_shift, torch.zeros_like(fresh.latent_shift))
    with pytest.raises(RuntimeError, match="latent_norm needs a deterministic autoencoder"):
        train_denoiser.run_build(dict(base, run_dir=str(tmp_path / "k"), preset="tiny", latent_norm=True))
    with pytest.raises(ValueError, match="positive spreads"):
        vn.set_latent_norm(torch.zeros(vn.cfg.latent_channels), torch.zeros(vn.cfg.latent_channels))


def test_latents_are_measured_on_every_class():
    """The build measures latents on up to 32 training normals spread along the index (class after class), not
    its first 32, which on PIPED were one class and two images of the next."""
    classes = [r // 32 for r in range(383)]  # 12 classes of about 32 normals, in index order
    picked = train_denoiser.spread_sample(classes, 32)
    assert len(picked) == 32 and set(picked) == set(classes)
    assert train_denoiser.spread_sample([7, 8], 32) == [7, 8] and train_denoiser.spread_sample([], 32) == []

"""Training stages on a couple of synthetic images: losses go down, resume continues, data and CLI fail clearly."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from vlmdiff_train import data as D
from vlmdiff_train import reference as R
from vlmdiff_train import train_ae, train_denoiser
from vlmdiff_train.progress import Progress

S = 64  # training image size: the tiny preset's smallest (its SFF InstanceNorm needs >1 pixel at the last level)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("ds")
    recs = []
    for i in range(2):
        rng = np.random.default_rng(i)
        yy, xx = np.mgrid[0:72, 0:80]
        img = np.stack([(xx * 3 + 40 * i) % 256, (yy * 3) % 256, np.full_like(xx, 90 + 60 * i)], -1)
        img = np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"img{i}.png")
        recs.append({"path": f"img{i}.png", "mask": "", "class": "widget", "split": "train", "label": 0})
    recs.append({"path": "bad.png", "mask": "m.png", "class": "widget", "split": "test", "label": 1})
    (d / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (d / "captions.json").write_text(json.dumps({"img0.png": "a striped widget", "img1.png": "a blue widget"}))
    return d


@pytest.fixture(scope="module")
def built(dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("build")
    out = train_denoiser.run_build({"run_dir": str(run), "preset": "tiny", "index": str(dataset / "index.jsonl"),
                                    "captions": str(dataset / "captions.json"), "seed": 0})
    return out["model"]


def _train_cfg(dataset, model, run, **kw):
    cfg = {"run_dir": str(run), "model": model, "index": str(dataset / "index.jsonl"),
           "captions": str(dataset / "captions.json"), "height": S, "width": S, "batch_size": 2,
           "lr": 1e-3, "save_every": 1, "seed": 5}
    cfg.update(kw)
    return cfg


def _fixed_eps_loss(model_file, dataset):
    """Denoising loss of a model on the training images at fixed t and noise (the same for every call)."""
    blob = train_denoiser.load_model_file(model_file)
    nets, tok = train_denoiser.rebuild(blob)
    nets.eval()
    ds = D.train_dataset({"index": str(dataset / "index.jsonl"), "captions": str(dataset / "captions.json"),
                          "height": S, "width": S})
    b = D.collate([ds[i] for i in range(len(ds))])
    g = torch.Generator().manual_seed(99)
    abar = torch.tensor(R.alphas_cumprod(0.00085, 0.012, 1000), dtype=torch.float32)
    total = 0.0
    with torch.no_grad():
        z = train_denoiser.latent_scale(blob["builder"]) * torch.chunk(nets.vae.encode_moments(b["image"]), 2, dim=1)[0]
        ctx = train_denoiser.encode_prompts(nets.text, tok, b["caption"], torch.device("cpu"))
        hint = nets.denoiser.sgn.hint_features(b["image"])
        for t in (50, 300, 600, 900):
            eps = torch.randn(z.shape, generator=g)
            a = abar[t]
            tt = torch.full((z.shape[0],), t, dtype=torch.int64)
            total += float(torch.mean((nets.denoiser(a.sqrt() * z + (1 - a).sqrt() * eps, tt, ctx, hint) - eps) ** 2))
    return total / 4


def test_denoiser_training_reduces_loss(dataset, built, tmp_path, capsys):
    before = _fixed_eps_loss(built, dataset)
    out = train_denoiser.run(_train_cfg(dataset, built, tmp_path, max_steps=24, save_every=100))
    after = _fixed_eps_loss(out["model"], dataset)
    assert after < before * 0.9, (before, after)
    events = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
    assert [e["step"] for e in events] == list(range(1, 25))
    assert all(e["event"] == "progress" and e["stage"] == "train" and e["total"] == 24 for e in events)


def test_resume_continues_from_saved_step(dataset, built, tmp_path, capsys):
    straight = train_denoiser.run(_train_cfg(dataset, built, tmp_path / "a", max_steps=3, accumulate=2,
                                             batch_size=1))
    capsys.readouterr()
    train_denoiser.run(_train_cfg(dataset, built, tmp_path / "b", max_steps=1, accumulate=2, batch_size=1))
    capsys.readouterr()
    resumed = train_denoiser.run(_train_cfg(dataset, built, tmp_path / "b", max_steps=3, accumulate=2,
                                            batch_size=1))
    steps = [json.loads(l)["step"] for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
    assert steps == [2, 3]  # continued, did not restart
    sa = train_denoiser.load_model_file(straight["model"])["state"]["denoiser"]
    sb = train_denoiser.load_model_file(resumed["model"])["state"]["denoiser"]
    diff = max(float((sa[k] - sb[k]).abs().max()) for k in sa)
    assert diff < 1e-6  # same data order, same noise: the resumed run is the straight run
    assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == ["step-00000002.pt", "step-00000003.pt"]


def test_resume_at_the_last_step_writes_the_model(dataset, built, tmp_path):
    """A run stopped after a checkpoint and resumed with max_steps at that step (ship what you have) writes its
    model at once, even when that checkpoint predates the first validation."""
    recs = [json.loads(l) for l in (dataset / "index.jsonl").read_text().splitlines()]
    recs.append({**recs[1], "split": "val"})
    (dataset / "index_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    run = tmp_path / "r"
    cfg = dict(index=str(dataset / "index_val.jsonl"), batch_size=1, keep=5)
    full = train_denoiser.run(_train_cfg(dataset, built, run, max_steps=3, **cfg))
    assert full["val_loss_best"] is not None  # 2 images at batch 1: validations at steps 2 and 3
    for s in (2, 3):  # as if stopped right after step 1's checkpoint, before any validation
        os.remove(run / "checkpoints" / f"step-{s:08d}.pt")
    os.remove(run / "model-trained.pt")
    res = train_denoiser.run(_train_cfg(dataset, built, run, max_steps=1, **cfg))
    json.dumps(res, allow_nan=False)  # what the stage prints for the runner
    assert res["steps"] == 1 and res["val_loss_best"] is None and os.path.exists(res["model"])
    assert train_denoiser.load_model_file(res["model"])["extra"]["step"] == 1


def test_autoencoder_finetune_reduces_reconstruction_error(dataset, tmp_path, capsys):
    from vlmdiff_train import presets
    from vlmdiff_train.nets.autoencoder import AutoencoderKL

    cfg = {"run_dir": str(tmp_path), "preset": "tiny", "index": str(dataset / "index.jsonl"), "batch_size": 2,
           "lr": 2e-3, "max_steps": 8, "log_every": 4, "seed": 1}
    ds = D.train_dataset({"index": str(dataset / "index.jsonl"), "height": S, "width": S})
    x = D.collate([ds[i] for i in range(len(ds))])["image"]
    p = presets.get_preset("tiny")

    def l1(state):
        vae = AutoencoderKL(p.vae, p.embed_dim)
        if state is not None:
            vae.load_state_dict(state)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(1)
                vae = AutoencoderKL(p.vae, p.embed_dim)
        with torch.no_grad():
            return float((vae.decode(torch.chunk(vae.encode_moments(x), 2, 1)[0]) - x).abs().mean())

    before = l1(None)
    out = train_ae.run(cfg)
    after = l1(torch.load(out["autoencoder"])["state_dict"])
    assert after < before * 0.8, (before, after)
    ev = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
    assert [e["step"] for e in ev] == [4, 8] and all(e["stage"] == "finetune-ae" for e in ev)


@pytest.mark.parametrize("line,msg", [
    ('{"path": "a.png", "class": "c", "split": "train"}', "missing field 'label'"),
    ('{"path": "a.png", "class": "c", "split": "dev", "label": 0}', "split 'dev'"),
    ('{"path": "a.png", "class": "c", "split": "train", "label": 2}', "label 2"),
    ("not json", "not JSON"),
])
def test_index_errors_name_the_line(tmp_path, line, msg):
    p = tmp_path / "index.jsonl"
    p.write_text('{"path": "ok.png", "class": "c", "split": "train", "label": 0}\n' + line + "\n")
    with pytest.raises(RuntimeError, match="line 2") as e:
        D.read_index(str(p))
    assert msg in str(e.value)


def test_dataset_preprocessing_equals_scorer_and_captions(dataset):
    recs = D.read_index(str(dataset / "index.jsonl"), split="train")
    assert [r["label"] for r in recs] == [0, 0] and os.path.isabs(recs[0]["path"])
    ds = D.ImageDataset(recs, S, S, captions=D.read_captions(str(dataset / "captions.json")))
    item = ds[1]
    want = R.load_image(recs[1]["path"], S, S, D.IMAGENET_MEAN, D.IMAGENET_STD)
    assert torch.equal(item["image"], want)
    assert item["caption"] == "a blue widget"
    ds2 = D.ImageDataset(recs, 64, 64, default_caption="a photo of a {cls}")
    assert ds2[0]["caption"] == "a photo of a widget"
    test = D.read_index(str(dataset / "index.jsonl"), split="test")
    with pytest.raises(RuntimeError, match="bad.png"):
        D.ImageDataset(test, 64, 64)[0]


def test_progress_events_are_json_lines():
    buf = io.StringIO()
    p = Progress("train", 4, out=buf)
    p.step(1, loss=float("nan"), epoch=0)
    p.step(2, loss=0.5, epoch=0)
    p.done({"model": "m.pt"})
    ev = [json.loads(l) for l in buf.getvalue().splitlines()]
    assert ev[0]["loss"] is None and ev[1]["loss"] == 0.5 and ev[1]["eta_s"] is not None
    assert ev[2] == {"event": "done", "stage": "train", "outputs": {"model": "m.pt"}}


def test_progress_eta_follows_the_recent_rate():
    """Slow first steps (a stage's start, as in session 58's taef2 run) do not stay in the estimate: 10
    steps of 10 s, then 1 s a step. At step 110 of 1000 the average since the start would say 1618 s left; 890
    are. A resumed stage counts only its own steps."""
    now = [0.0]
    buf = io.StringIO()
    p = Progress("train", 1000, out=buf, clock=lambda: now[0])
    for k in range(1, 111):
        now[0] += 10.0 if k <= 10 else 1.0
        p.step(k)
    eta = json.loads(buf.getvalue().splitlines()[-1])["eta_s"]
    assert abs(eta - 890) / 890 < 0.15, eta
    now = [0.0]
    buf = io.StringIO()
    r = Progress("train", 1000, out=buf, start_step=500, clock=lambda: now[0])
    for k in range(501, 601):
        now[0] += 2.0
        r.step(k)
    assert json.loads(buf.getvalue().splitlines()[-1])["eta_s"] == 800.0
    now[0] += 5.0
    r.step(600)  # the same step again (a validation pass between steps): still an estimate, no division by zero
    assert json.loads(buf.getvalue().splitlines()[-1])["eta_s"] > 0


def test_cli_bad_config_exits_with_one_line(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"run_dir": str(tmp_path), "model": "m.pt", "max_stepz": 3}))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-m", "vlmdiff_train", "train", "--config", str(cfg)], cwd=root,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stdout == ""
    lines = [l for l in r.stderr.splitlines() if l.startswith("vlmdiff_train")]
    assert len(lines) == 1 and "unknown keys ['max_stepz']" in lines[0]


def test_memory_format_changes_speed_not_training(dataset, built, tmp_path):
    """channels_last (the CPU default, layout.py) trains the same network as contiguous up to float rounding, and
    the model file holds contiguous tensors either way; an unknown layout is refused by name."""
    runs = {f: train_denoiser.run(_train_cfg(dataset, built, tmp_path / f, max_steps=3, memory_format=f))
            for f in ("contiguous", "channels_last")}
    states = {f: train_denoiser.load_model_file(r["model"])["state"]["denoiser"] for f, r in runs.items()}
    a, b = states["contiguous"], states["channels_last"]
    assert a.keys() == b.keys()
    assert all(v.is_contiguous() for v in b.values())
    assert any(v.dim() == 4 for v in b.values())  # there were convolution weights to lay out
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff < 1e-4, diff
    la, lb = (_fixed_eps_loss(r["model"], dataset) for r in runs.values())
    assert abs(la - lb) < 1e-4 * la, (la, lb)
    with pytest.raises(RuntimeError, match="train config: memory_format: 'nhwc' is not one of"):
        train_denoiser.run(_train_cfg(dataset, built, tmp_path / "bad", max_steps=1, memory_format="nhwc"))


def test_autoencoder_finetune_layouts_agree(dataset, tmp_path):
    cfg = {"preset": "tiny", "index": str(dataset / "index.jsonl"), "batch_size": 2, "lr": 2e-3, "max_steps": 3,
           "seed": 1}
    outs = {f: torch.load(train_ae.run({**cfg, "run_dir": str(tmp_path / f), "memory_format": f})["autoencoder"])
            for f in ("contiguous", "channels_last")}
    assert all(v.is_contiguous() for v in outs["channels_last"]["state_dict"].values())
    # Adam turns rounding in near-zero gradients into whole steps of lr for a few weights, so compare what the
    # autoencoders do: their reconstruction error on the training images
    from vlmdiff_train import presets
    from vlmdiff_train.nets.autoencoder import AutoencoderKL

    p = presets.get_preset("tiny")
    ds = D.train_dataset({"index": str(dataset / "index.jsonl"), "height": S, "width": S})
    x = D.collate([ds[i] for i in range(len(ds))])["image"]
    l1 = {}
    for f, o in outs.items():
        vae = AutoencoderKL(p.vae, p.embed_dim)
        vae.load_state_dict(o["state_dict"])
        with torch.no_grad():
            l1[f] = float((vae.decode(torch.chunk(vae.encode_moments(x), 2, 1)[0]) - x).abs().mean())
    assert abs(l1["contiguous"] - l1["channels_last"]) < 1e-3 * l1["contiguous"], l1

"""The reference scorer's math, each piece checked on hand-made inputs against an independent computation."""
from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest
import torch

from vlmdiff_train import reference as R

REPO = pathlib.Path(__file__).resolve().parents[3]
FIXTURE = REPO / "models" / "testdata" / "fixture"
FIXTURE_SRC = REPO / "models" / "testdata" / "fixture-src"


def test_alphas_cumprod_matches_algorithm_table():
    abar = R.alphas_cumprod(0.00085, 0.012, 1000)
    ts = R.ddim_timesteps(1000, 10)
    assert ts.tolist() == [1, 101, 201, 301, 401, 501, 601, 701, 801, 901]
    want = [.99830, .89298, .75214, .58882, .42288, .27500, .15982, .08192, .03655, .01400]  # docs/algorithm.md §1.5
    np.testing.assert_allclose(abar[ts], want, atol=6e-5)
    assert abs(abar[999] - 0.004660) < 5e-6
    assert abs(abar[0] - 0.99915) < 5e-6


@pytest.mark.parametrize("T,steps,want", [(1000, 10, 10), (1000, 50, 50), (100, 7, 8)])
def test_ddim_timesteps_count(T, steps, want):
    ts = R.ddim_timesteps(T, steps)
    assert len(ts) == want and ts[0] == 1 and np.all(np.diff(ts) == T // steps)


def _gauss_numpy(a: np.ndarray, sigma: float, truncate: float) -> np.ndarray:
    """Separable Gaussian with scipy's 'reflect' (half-sample symmetric) boundary, written out by hand."""
    r = int(truncate * sigma + 0.5)
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    out = a.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="symmetric")
        acc = np.zeros_like(out)
        for i, w in enumerate(k):
            sl = [slice(None), slice(None)]
            sl[axis] = slice(i, i + out.shape[axis])
            acc += w * p[tuple(sl)]
        out = acc
    return out


def test_gaussian_matches_handwritten_reflect_filter():
    rng = np.random.default_rng(3)
    a = rng.random((64, 48)).astype(np.float32)
    a[10:20, 5:9] += 3.0
    got = R.smooth(a, 5.0, 4.0)
    np.testing.assert_allclose(got, _gauss_numpy(a, 5.0, 4.0), rtol=1e-5, atol=1e-6)
    # 41 taps at sigma 5: an impulse spreads exactly 20 pixels each way
    imp = np.zeros((101, 101), np.float32)
    imp[50, 50] = 1
    s = R.smooth(imp, 5.0, 4.0)
    assert s[50, 30] > 0 and s[50, 29] == 0 and s[70, 50] > 0 and s[71, 50] == 0
    assert R.smooth(a, 0.0, 4.0).tolist() == a.tolist()


def test_guided_filter_properties():
    """map.guided: on a flat guide it is two box means of the map (a = 0); a map that is an affine function of
    the guide comes back as it was (a = the slope where eps is small against the guide's variance); it is linear
    in the map; and the guide is the frame's luminance with the normalisation undone."""
    rng = np.random.default_rng(5)
    p = rng.random((20, 27))
    r = 2

    def box(v):  # the (2r+1)^2 mean with reflected borders, written out
        pad = np.pad(v, r, mode="symmetric")
        return np.mean([pad[dy:dy + v.shape[0], dx:dx + v.shape[1]] for dy in range(2 * r + 1)
                        for dx in range(2 * r + 1)], axis=0)

    np.testing.assert_allclose(R.guided_filter(p, np.full_like(p, 0.3), r, 1e-3), box(box(p)), atol=1e-12)
    g = rng.random((20, 27))
    np.testing.assert_allclose(R.guided_filter(2.5 * g - 1, g, r, 1e-9), 2.5 * g - 1, atol=1e-5)
    q = rng.normal(size=p.shape)
    np.testing.assert_allclose(R.guided_filter(p + 2 * q, g, r, 1e-3),
                               R.guided_filter(p, g, r, 1e-3) + 2 * R.guided_filter(q, g, r, 1e-3), atol=1e-9)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    rgb = rng.random((3, 4, 5))
    x = (rgb - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    np.testing.assert_allclose(R.luminance(x.astype(np.float32), mean, std),
                               0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2], atol=1e-6)


def test_pooling_size_and_value():
    m = np.zeros((256, 256), np.float32)
    assert tuple(R.pooled(m, 8, 8).shape) == (200, 200)
    m[100, 100] = 1.0
    # 8 box filters of width 8: the peak is the largest coefficient of the 8-fold convolution of [1]*8 / 8^16
    box = np.ones(8) / 8
    k = np.array([1.0])
    for _ in range(8):
        k = np.convolve(k, box)
    want = k.max() ** 2
    assert abs(R.pooled_score(m, 8, 8) - want) < 1e-9
    assert abs(R.pooled_score(np.full((64, 64), 0.25, np.float32), 8, 8) - 0.25) < 1e-7


def test_layer_distance_cosine_cases():
    a = torch.zeros(1, 2, 1, 3)
    b = torch.zeros(1, 2, 1, 3)
    a[0, :, 0, 0], b[0, :, 0, 0] = torch.tensor([1.0, 0]), torch.tensor([3.0, 0])  # same direction -> 0
    a[0, :, 0, 1], b[0, :, 0, 1] = torch.tensor([1.0, 0]), torch.tensor([0, 2.0])  # orthogonal -> 1
    a[0, :, 0, 2], b[0, :, 0, 2] = torch.tensor([1.0, 1]), torch.tensor([-1.0, -1])  # opposite -> 2
    d = R.layer_distance(a, b)[0, 0, 0]
    np.testing.assert_allclose(d.numpy(), [0, 1, 2], atol=1e-6)
    # tokens [B, 1+N, D]: the CLS token is dropped and the rest laid out as a square grid
    t = torch.randn(1, 1 + 16, 5)
    assert tuple(R.layer_distance(t, t, tokens=True).shape) == (1, 1, 4, 4)
    with pytest.raises(RuntimeError, match="not a square"):
        R.layer_distance(torch.randn(1, 6, 5), torch.randn(1, 6, 5), tokens=True)


def test_match_distance_is_the_best_match_in_the_window():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 5, 6, 7, generator=g), torch.randn(2, 5, 6, 7, generator=g)
    got = R.layer_distance(a, b, match=1)[:, 0]
    for n in range(2):
        for y in range(6):
            for x in range(7):
                best = min(
                    1 - float(torch.dot(a[n, :, y, x].double(), b[n, :, yy, xx].double())
                              / (a[n, :, y, x].double().norm() * b[n, :, yy, xx].double().norm()))
                    for yy in range(max(0, y - 1), min(6, y + 2)) for xx in range(max(0, x - 1), min(7, x + 2)))
                assert abs(float(got[n, y, x]) - best) < 1e-6
    # radius 0 is the same-position distance; a copy shifted by one cell matches inside radius 1
    np.testing.assert_allclose(R.layer_distance(a, b, match=0).numpy(), R.layer_distance(a, b).numpy())
    shifted = torch.roll(a, shifts=1, dims=3)
    assert float(R.layer_distance(a, shifted)[:, :, :, :-1].min()) > 1e-3
    assert float(R.layer_distance(a, shifted, match=1)[:, :, :, :-1].abs().max()) < 1e-6
    with pytest.raises(RuntimeError, match="map features"):
        R.layer_distance(torch.randn(1, 17, 5), torch.randn(1, 17, 5), tokens=True, match=1)


def test_identical_features_give_zero_map_and_weights_add():
    f = {"a": torch.randn(2, 8, 16, 16), "b": torch.randn(2, 4, 8, 8)}
    layers = [{"name": "a", "weight": 1.0}, {"name": "b", "weight": 0.5}]
    m = R.anomaly_map(f, f, layers, 64, 64)
    assert tuple(m.shape) == (2, 64, 64) and float(m.abs().max()) < 1e-6
    g = {"a": -f["a"], "b": -f["b"]}  # opposite everywhere: 2*1 + 2*0.5
    np.testing.assert_allclose(R.anomaly_map(f, g, layers, 64, 64).numpy(), 3.0, atol=1e-5)
    with pytest.raises(RuntimeError, match="not an output"):
        R.anomaly_map(f, f, [{"name": "zzz", "weight": 1}], 64, 64)


def test_upsample_is_align_corners():
    f1 = torch.zeros(1, 2, 2, 2)
    f1[0, 0] = 1.0
    f2 = torch.zeros(1, 2, 2, 2)
    f2[0, 0] = 1.0
    f2[0, 0, 0, 0], f2[0, 1, 0, 0] = 0.0, 1.0  # top-left cell orthogonal: distance 1 there, 0 elsewhere
    m = R.anomaly_map({"l": f1}, {"l": f2}, [{"name": "l", "weight": 1}], 9, 9)[0]
    assert abs(float(m[0, 0]) - 1.0) < 1e-6 and abs(float(m[0, 8])) < 1e-6
    assert abs(float(m[0, 4]) - 0.5) < 1e-6  # the exact midpoint between source pixels


def test_normalize_and_pil_resize(tmp_path):
    from PIL import Image
    arr = (np.arange(30 * 40 * 3) % 256).astype(np.uint8).reshape(30, 40, 3)
    p = tmp_path / "x.png"
    Image.fromarray(arr).save(p)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    x = R.load_image(str(p), 16, 20, mean, std)
    want = np.asarray(Image.fromarray(arr).resize((20, 16), Image.BILINEAR), np.float32) / np.float32(255)
    want = (want - np.array(mean, np.float32)) / np.array(std, np.float32)
    np.testing.assert_allclose(x.numpy(), want.transpose(2, 0, 1), rtol=0, atol=1e-6)
    with pytest.raises(RuntimeError, match="pil_bilinear"):
        R.load_image(str(p), 16, 20, mean, std, resize="bilinear")


def test_posterior_latent():
    mo = torch.cat([torch.full((1, 2, 2, 2), 1.0), torch.full((1, 2, 2, 2), 100.0)], dim=1)  # logvar clamps at 20
    n = torch.ones(1, 2, 2, 2)
    z = R.posterior_latent(mo, 2, 0.5, -30, 20, "sample", n)
    np.testing.assert_allclose(z.numpy(), 0.5 * (1 + np.exp(10.0)), rtol=1e-6)
    assert float(R.posterior_latent(mo, 2, 0.5, -30, 20, "mean", None).max()) == 0.5


class _Identity(torch.nn.Module):
    def encode_moments(self, x):
        return torch.cat([x, torch.zeros_like(x)], dim=1)

    def decode(self, z):
        return z


class _OracleEps(torch.nn.Module):
    """eps that is exactly consistent with a fixed clean latent x0: DDIM (eta 0) must then land on x0's path."""

    def __init__(self, x0, abar):
        super().__init__()
        self.x0, self.abar, self.calls = x0, abar, []

    def forward(self, x, t, ctx, hint):
        self.calls.append(float(ctx.mean()))
        a = float(self.abar[int(t[0])])
        return (x - a ** 0.5 * self.x0) / (1 - a) ** 0.5


def _manifest(ctx_entries):
    return {"input": {"height": 8, "width": 8, "mean": [0, 0, 0], "std": [1, 1, 1]},
            "latent": {"channels": 3, "downsample": 1, "scale_factor": 1.0, "posterior": "mean",
                       "logvar_clamp_lo": -30, "logvar_clamp_hi": 20},
            "diffusion": {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012,
                          "train_steps": 1000, "ddim_steps": 10, "start_step": 999, "eta": 0,
                          "guidance_scale": 9.0},
            "conditioning": {"unconditional": "", "default": ""},
            "features": {"layers": [{"name": "x", "weight": 1}]}, "map": {"sigma": 0}, "score": {}}


def test_ddim_recovers_oracle_latent_and_cfg_only_when_contexts_differ():
    abar = R.alphas_cumprod(0.00085, 0.012, 1000)
    x0 = torch.randn(1, 3, 8, 8)
    den = _OracleEps(x0, abar)
    cond = {"": torch.zeros(1, 4, 2), "k": torch.ones(1, 4, 2)}
    s = R.Scorer(_manifest(cond), R.Nets(vae=_Identity(), denoiser=den, features=None), cond)
    noise = torch.randn(1, 3, 8, 8)
    rec = s.reconstruct(torch.zeros(1, 3, 8, 8), None, noise)
    # With oracle eps the implied noise stays constant along the eta-0 path, so the sampler must end at exactly
    # sqrt(abar[0])*x0 + sqrt(1-abar[0])*e0, e0 being the first step's eps (the start latent is 0 here, so
    # x_T = sqrt(1-abar[999])*noise, and the first step uses abar[901], the quirk of docs/algorithm.md §1.5).
    assert len(den.calls) == 10
    xT = (1 - abar[999]) ** 0.5 * noise
    e0 = (xT - abar[901] ** 0.5 * x0) / (1 - abar[901]) ** 0.5
    want = abar[0] ** 0.5 * x0 + (1 - abar[0]) ** 0.5 * e0
    assert float((rec - want).abs().max()) < 1e-4
    den.calls.clear()
    s.reconstruct(torch.zeros(1, 3, 8, 8), None, noise, key="k")
    assert len(den.calls) == 20 and set(den.calls) == {0.0, 1.0}  # two passes per step with CFG


def test_reference_reproduces_committed_fixture_outputs(tmp_path):
    """The committed expected outputs must be what the current code computes from the committed weights."""
    exp = FIXTURE_SRC / "expected"
    if not (FIXTURE / "bundle.json").is_file() or not (exp / "noise.f32").is_file():
        pytest.skip("committed fixture not present")
    out = R.run_reference(str(FIXTURE), str(FIXTURE_SRC / "fixture.pt"), str(exp / "noise.f32"), str(tmp_path),
                          [str(exp / "image.png")])
    got = json.load(open(out["scores"]))[0]["raw_score"]
    want = json.load(open(exp / "default" / "scores.json"))[0]["raw_score"]
    assert abs(got - want) < 1e-5
    gm = np.fromfile(out["maps"], "<f4")
    wm = np.fromfile(exp / "default" / "maps.f32", "<f4")
    assert np.linalg.norm(gm - wm) / np.linalg.norm(wm) < 1e-5


def test_reference_rejects_bad_noise_and_images(tmp_path):
    if not (FIXTURE / "bundle.json").is_file():
        pytest.skip("committed fixture not present")
    bad = tmp_path / "noise.f32"
    np.zeros(10, "<f4").tofile(bad)
    with pytest.raises(RuntimeError, match="noise file"):
        R.run_reference(str(FIXTURE), str(FIXTURE_SRC / "fixture.pt"), str(bad), str(tmp_path), ["x.png"])
    nan = tmp_path / "nan.f32"
    a = np.zeros((1, 2, 4, 32, 32), "<f4")
    a[0, 1, 0, 0, 0] = np.nan
    a.tofile(nan)
    with pytest.raises(RuntimeError, match="NaN"):
        R.run_reference(str(FIXTURE), str(FIXTURE_SRC / "fixture.pt"), str(nan), str(tmp_path), ["x.png"])
    good = tmp_path / "good.f32"
    np.zeros((1, 2, 4, 32, 32), "<f4").tofile(good)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(RuntimeError, match="corrupt.png"):
        R.run_reference(str(FIXTURE), str(FIXTURE_SRC / "fixture.pt"), str(good), str(tmp_path), [str(corrupt)])


@pytest.mark.parametrize("start,truncate,steps,noise", [
    (999, False, [1, 101, 201, 301, 401, 501, 601, 701, 801, 901], 999),
    (500, False, [1, 101, 201, 301, 401, 501, 601, 701, 801, 901], 500),  # the paper: a lower start only noises less
    (501, True, [1, 101, 201, 301, 401, 501], 501),
    (350, True, [1, 101, 201, 301], 301),
])
def test_sampler_plan_matches_the_go_table(start, truncate, steps, noise):
    # the same table as pipeline/sampler_plan_test.go
    from vlmdiff_train.reference import sampler_plan
    ts, n = sampler_plan({"train_steps": 1000, "ddim_steps": 10, "start_step": start,
                          "sampler_from_start_step": truncate})
    assert list(ts) == steps and n == noise


def test_sampler_plan_refuses_a_start_before_the_first_step():
    from vlmdiff_train.reference import sampler_plan
    with pytest.raises(RuntimeError, match="below the first DDIM step"):
        sampler_plan({"train_steps": 1000, "ddim_steps": 10, "start_step": 0, "sampler_from_start_step": True})


def test_read_map_reference(tmp_path):
    """read_reference decodes map.reference by class ("" the global row), gives {} without one, and refuses a
    file of the wrong size."""
    h, w = 4, 6
    rows = np.stack([np.full((h, w), 0.5, np.float32), np.arange(h * w, dtype=np.float32).reshape(h, w)])
    rows.astype("<f4").tofile(tmp_path / "map_reference.f32")
    m = {"map": {"reference": {"file": "map_reference.f32", "width": w, "height": h, "classes": ["", "bolt"]}}}
    ref = R.read_reference(str(tmp_path), m)
    assert sorted(ref) == ["", "bolt"]
    np.testing.assert_array_equal(ref["bolt"], rows[1])
    assert R.read_reference(str(tmp_path), {"map": {}}) == {}
    (tmp_path / "map_reference.f32").write_bytes(b"\0" * 8)
    with pytest.raises(RuntimeError, match="floats"):
        R.read_reference(str(tmp_path), m)


def test_ensemble_map_is_the_mean_of_its_single_noise_maps():
    """diffusion.ensemble K: score() takes K noises and returns the mean of the K smoothed maps, each against its
    own reconstruction (the Go scorer's recipe); a noise count other than K is refused."""
    if not (FIXTURE / "bundle.json").is_file():
        pytest.skip("committed fixture not present")
    from vlmdiff_train.model_file import load_nets
    m1 = R.read_manifest(str(FIXTURE))
    m1["diffusion"].pop("ensemble", None)
    m3 = json.loads(json.dumps(m1))
    m3["diffusion"]["ensemble"] = 3
    nets = load_nets(str(FIXTURE_SRC / "fixture.pt"), str(FIXTURE), m1)
    cond = R.read_conditioning(str(FIXTURE), m1)
    one, three = R.Scorer(m1, nets, cond), R.Scorer(m3, nets, cond)
    assert one.ensemble() == 1 and three.ensemble() == 3
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 3, 256, 256, generator=g) * 0.5
    post, start = torch.randn(3, 4, 32, 32, generator=g), torch.randn(3, 4, 32, 32, generator=g)
    maps = [one.score(x, post[k:k + 1], start[k:k + 1])[1] for k in range(3)]
    s, sm = three.score(x, post, start)
    want = np.mean(np.stack(maps).astype(np.float64), axis=0)
    assert np.linalg.norm(sm - want) / np.linalg.norm(want) < 1e-5
    assert abs(s - R.pooled_score(want.astype(np.float32), int(m1["score"]["pool_kernel"]),
                                  int(m1["score"]["pool_repeat"]))) < 1e-5
    # the maps of different noises differ, so the mean is not any one of them
    assert min(np.linalg.norm(m - want) / np.linalg.norm(want) for m in maps) > 1e-3
    with pytest.raises(RuntimeError, match="ensemble 3"):
        three.score(x, post[:1], start[:1])


def test_read_noise_has_one_block_per_start_noise(tmp_path):
    """NOISE.f32 is [N, K, 2, C, h, w]: with K = 1 the layout of a single-noise file."""
    a = np.arange(2 * 3 * 2 * 4 * 2 * 2, dtype="<f4").reshape(2, 3, 2, 4, 2, 2)
    a.tofile(tmp_path / "n.f32")
    got = R.read_noise(str(tmp_path / "n.f32"), 2, 4, 2, 2, ensemble=3)
    np.testing.assert_array_equal(got, a)
    with pytest.raises(RuntimeError, match=r"want \[2,2,2,4,2,2\]"):
        R.read_noise(str(tmp_path / "n.f32"), 2, 4, 2, 2, ensemble=2)


def test_pixel_term_reads_rows_and_measures_distance(tmp_path):
    """map.pixel: one [3,H,W] mean frame per class and the term's weight; a file of another size is refused; the
    distance is the per-pixel L2 norm over the channels (the Go twin is pipeline.pixelDistanceRows)."""
    h, w = 4, 5
    rows = np.arange(2 * 3 * h * w, dtype="<f4").reshape(2, 3, h, w) / 10
    rows.tofile(tmp_path / "mean.f32")
    m = {"map": {"pixel": {"file": "mean.f32", "width": w, "height": h, "classes": ["", "bolt"], "factor": 0.5,
                           "weight": 0.8}}}
    frames, weight = R.read_pixel(str(tmp_path), m)
    assert weight == 0.8 and sorted(frames) == ["", "bolt"]
    np.testing.assert_array_equal(frames["bolt"], rows[1])
    assert R.read_pixel(str(tmp_path), {"map": {}}) == ({}, 0.0)
    rows[:1].tofile(tmp_path / "mean.f32")
    with pytest.raises(RuntimeError, match="want 2x3x4x5"):
        R.read_pixel(str(tmp_path), m)
    x = np.random.default_rng(0).standard_normal((3, h, w)).astype(np.float32)
    want = np.array([[np.sqrt(sum((float(x[c, i, j]) - float(rows[1, c, i, j])) ** 2 for c in range(3)))
                      for j in range(w)] for i in range(h)])
    np.testing.assert_allclose(R.pixel_distance(x, rows[1]), want, rtol=1e-12)

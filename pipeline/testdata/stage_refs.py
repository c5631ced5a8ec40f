"""Reference values for pipeline/stages_test.go: runs the pieces of trainer/python/vlmdiff_train/reference.py on
the fixed inputs the Go test writes, so each stage of the Go scorer is checked against its PyTorch twin.

    PYTHONPATH=trainer/python /usr/bin/python3 pipeline/testdata/stage_refs.py IN.json OUT.json

The Go test (TestStage*) generates IN.json and runs this; nothing is committed but this script.
"""

import json
import sys

import numpy as np
import torch

from vlmdiff_train.reference import (Scorer, alphas_cumprod, anomaly_map, ddim_timesteps, normalize_uint8,
                                     pooled_score, posterior_latent, read_conditioning, read_manifest, smooth)


def t32(values, shape):
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


def flat(t):
    return [float(v) for v in t.reshape(-1).tolist()]


def normalize(n):
    arr = np.asarray(n["pix"], dtype=np.uint8).reshape(n["height"], n["width"], 3)
    return flat(normalize_uint8(arr, n["mean"], n["std"]))


def posterior(p):
    moments, noise = t32(p["moments"], p["shape"]), t32(p["noise"], p["noise_shape"])
    out = {}
    for mode in ("sample", "mean"):
        out[mode] = flat(posterior_latent(moments, p["channels"], p["scale"], p["lo"], p["hi"], mode, noise))
    return out


def schedule(cases):
    out = []
    for c in cases:
        abar = alphas_cumprod(c["linear_start"], c["linear_end"], c["train_steps"])
        ts = ddim_timesteps(c["train_steps"], c["ddim_steps"])
        # the visiting order and the a / a_prev pairs of Scorer.reconstruct's loop
        steps = [{"t": int(ts[i]), "abar": float(abar[ts[i]]), "abar_prev": float(abar[ts[i - 1]] if i > 0 else abar[0])}
                 for i in range(len(ts) - 1, -1, -1)]
        out.append(steps)
    return out


class ToyVAE(torch.nn.Module):
    """Hands back fixed moments and decodes as the identity, so reconstruct's output is the sampler's latent."""

    def __init__(self, moments):
        super().__init__()
        self.moments = moments

    def encode_moments(self, x):
        return self.moments

    def decode(self, z):
        return z


class ToyDenoiser(torch.nn.Module):
    """A cheap eps model that depends on every input the real one takes (latent, timestep, context, hint)."""

    def forward(self, x, t, context, hint):
        b = x.shape[0]
        return (0.5 * torch.tanh(x) + 0.1 * context.mean(dim=(1, 2)).view(b, 1, 1, 1)
                + 0.05 * hint.mean(dim=(1, 2, 3)).view(b, 1, 1, 1) + 1e-4 * t.float().view(b, 1, 1, 1))


class ToyNets:
    def __init__(self, vae, denoiser):
        self.vae, self.denoiser, self.hint, self.features = vae, denoiser, None, None

    def eval(self):
        return self


def reconstruct(r):
    m = read_manifest(r["bundle"])
    m["latent"]["posterior"] = r["posterior"]
    cond = read_conditioning(r["bundle"], m)
    moments = t32(r["moments"], r["moments_shape"])
    scorer = Scorer(m, ToyNets(ToyVAE(moments), ToyDenoiser()), cond)
    image = t32(r["image"], r["image_shape"])
    post, start = t32(r["post_noise"], r["noise_shape"]), t32(r["start_noise"], r["noise_shape"])
    out = {}
    for key in r["keys"]:
        c, u = scorer.contexts(key)
        rec = scorer.reconstruct(image, post, start, key)
        out[key] = {"latent": flat(rec), "cond": flat(c), "uncond": flat(u), "cfg": not torch.equal(c, u)}
    return out


def feature_input(f):
    m = {"input": {"mean": f["in_mean"], "std": f["in_std"]}, "features": {"mean": f["mean"], "std": f["std"]}}
    scorer = Scorer.__new__(Scorer)  # feature_input reads only the manifest
    scorer.m = m
    return flat(scorer.feature_input(t32(f["x"], f["shape"])))


def anomaly(a):
    fin, frec, layers = {}, {}, []
    for l in a["layers"]:
        data = t32(l["data"], l["shape"])
        b = data.shape[0] // 2
        fin[l["name"]], frec[l["name"]] = data[:b], data[b:]
        layers.append({"name": l["name"], "weight": l["weight"]})
    amap = anomaly_map(fin, frec, layers, a["height"], a["width"], a["tokens"])
    out = []
    for i in range(amap.shape[0]):
        sm = smooth(amap[i].numpy(), a["sigma"], a["truncate"])
        out.append({"map": flat(amap[i]), "smooth": [float(v) for v in np.asarray(sm).reshape(-1)],
                    "score": pooled_score(sm, a["kernel"], a["repeat"])})
    return out


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        inp = json.load(f)
    torch.set_grad_enabled(False)
    out = {"normalize": normalize(inp["normalize"]), "posterior": posterior(inp["posterior"]), "schedule": schedule(inp["schedule"]),
           "reconstruct": reconstruct(inp["reconstruct"]), "feature_input": feature_input(inp["feature_input"]),
           "anomaly": [anomaly(a) for a in inp["anomaly"]]}
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()

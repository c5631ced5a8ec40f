"""A static-shape batch-1 denoiser of the committed fixture in the format before the time graph (input t, no
time inputs): what bundles exported before the time split hold, for pipeline/static_test.go's check that they
still load and score the same.

    PYTHONPATH=trainer/python /usr/bin/python3 pipeline/testdata/static_no_time.py BUNDLE WEIGHTS OUT_DIR

writes OUT_DIR/denoiser_b1.onnx (export_static_denoisers with time_split "none", from the fixture weights and
the bundle's unconditional context). Nothing is committed but this script.
"""

import json
import os
import sys

import numpy as np
import torch

from vlmdiff_train.export import export_static_denoisers
from vlmdiff_train.model_file import load_nets


def main(bundle: str, weights: str, out: str) -> None:
    with open(os.path.join(bundle, "bundle.json"), encoding="utf-8") as f:
        m = json.load(f)
    nets = load_nets(weights, bundle, m)
    c = m["conditioning"]
    cond = np.fromfile(os.path.join(bundle, c["file"]), dtype="<f4").reshape(-1, c["tokens"], c["dim"])
    keys = [e["key"] for e in c["entries"]]
    ctx = torch.from_numpy(cond[keys.index(c["unconditional"])].copy())
    hint = next(i for i in m["graphs"]["hint"]["outputs"] if i["name"] == "hint")["shape"]
    x = next(i for i in m["graphs"]["denoiser"]["inputs"] if i["name"] == "x")["shape"]
    os.makedirs(out, exist_ok=True)
    specs, time_graph = export_static_denoisers(out, nets.denoiser, ctx, c["unconditional"], [1], tuple(x[1:]),
                                                torch.zeros(1, *hint[1:]), torch.Generator().manual_seed(0),
                                                time_split="none")
    assert time_graph is None and "time_inputs" not in specs[0], specs


if __name__ == "__main__":
    main(*sys.argv[1:4])

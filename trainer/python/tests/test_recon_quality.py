import json
import math
import os

from vlmdiff_train.recon_quality import measure

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
FIXTURE = os.path.join(ROOT, "models", "testdata", "fixture")
WEIGHTS = os.path.join(ROOT, "models", "testdata", "fixture-src", "fixture.pt")
IMAGE = os.path.join(ROOT, "models", "testdata", "fixture-src", "expected", "image.png")


def test_recon_quality_on_fixture(tmp_path):
    idx = tmp_path / "index.jsonl"
    with open(idx, "w") as f:
        for cls in ("a", "b"):
            f.write(json.dumps({"path": IMAGE, "mask": "", "class": cls, "split": "val", "label": 0}) + "\n")
    r = measure(FIXTURE, WEIGHTS, str(idx), "val", 0, 0)
    assert r["mean"]["n"] == 2 and set(r["per_class"]) == {"a", "b"}
    for k in ("vae_psnr", "vlmdiff_psnr"):
        assert math.isfinite(r["mean"][k])
    # random fixture weights reconstruct badly: the PSNR must say so (a broken metric returning a constant
    # ceiling would not)
    assert r["mean"]["vae_psnr"] < 20 and r["mean"]["vae_mae"] > 0.05

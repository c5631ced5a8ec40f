"""Stage settings are defined once (stage_config.py): parsing refuses what the definition does not allow, the
schema and --help come from it, and no stage reads a raw key with its own default."""
from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys

import pytest

from vlmdiff_train import stage_config as S

PKG = pathlib.Path(__file__).resolve().parents[1] / "vlmdiff_train"


def test_defaults_and_types():
    c = S.parse_stage("train", {"run_dir": "/r", "model": "m.pt", "index": "i.jsonl", "lr": 2, "classes": None})
    assert isinstance(c, S.TrainConfig)
    assert c.lr == 2 and c.batch_size == 1 and c.posterior == "sample" and c.classes is None
    assert c.mean == [0.485, 0.456, 0.406] and c.height == 256
    assert S.parse_stage("train", c) is c
    # mutable defaults are not shared between instances
    c.mean.append(1.0)
    assert S.parse_stage("train", {"run_dir": "/r", "model": "m", "index": "i"}).mean == [0.485, 0.456, 0.406]
    e = S.parse_stage("export", {"run_dir": "/r", "model": "m", "out": "/b"})
    assert e.seed == 1234 and e.overwrite is True and e.sigma is None


@pytest.mark.parametrize("stage,cfg,msg", [
    ("train", {"run_dir": "/r", "model": "m", "index": "i", "max_stepz": 3}, "train config: unknown keys ['max_stepz']"),
    ("train", {"run_dir": "/r", "index": "i"}, "train config: 'model' is required"),
    ("train", {"run_dir": "", "model": "m", "index": "i"}, "train config: 'run_dir' is required"),
    ("train", {"run_dir": "/r", "model": "m", "index": "i", "lr": "0.1"}, "train config: lr: want float, got '0.1'"),
    ("train", {"run_dir": "/r", "model": "m", "index": "i", "batch_size": 2.5}, "batch_size: want int"),
    ("train", {"run_dir": "/r", "model": "m", "index": "i", "augment": 1}, "augment: want bool"),
    ("train", {"run_dir": "/r", "model": "m", "index": "i", "seed": True}, "seed: want int"),
    ("build", {"run_dir": "/r", "preset": "tiny", "classes": ["a", 3]}, "classes: want list[str]"),
    ("export", {"run_dir": "/r", "model": "m", "out": "o", "feature_layers": ["l1"]}, "feature_layers: want list[list]"),
    ("finetune-ae", {"run_dir": "/r", "index": "i"}, "'max_steps' is required"),
])
def test_bad_configs_are_refused_by_name(stage, cfg, msg):
    with pytest.raises(RuntimeError) as e:
        S.parse_stage(stage, cfg)
    assert msg in str(e.value)


def test_every_field_has_a_type_and_a_doc():
    for stage, cls in S.STAGES.items():
        sch = S.schema(cls)
        json.dumps(sch)  # the schema command prints it
        for name, f in sch.items():
            assert f["doc"], f"{stage}.{name} has no doc"
            assert f["type"] in {"str", "int", "float", "bool", "dict", "list[str]", "list[int]", "list[float]", "list[list]"}, \
                (stage, name, f["type"])
            if f["required"]:
                assert not f["nullable"], f"{stage}.{name}: required and nullable"
        assert {"run_dir", "seed", "device", "threads"} <= set(sch), stage


def test_help_and_schema_come_from_the_definition():
    root = PKG.parent
    h = subprocess.run([sys.executable, "-m", "vlmdiff_train", "--help"], cwd=root, capture_output=True, text=True,
                       timeout=120)
    assert h.returncode == 0
    for stage, cls in S.STAGES.items():
        for name in S.schema(cls):
            assert f"    {name} (" in h.stdout, (stage, name)
    r = subprocess.run([sys.executable, "-m", "vlmdiff_train", "schema"], cwd=root, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc["stages"]) == set(S.STAGES)
    assert doc["stages"]["train"]["lr"]["default"] == 1e-5
    assert doc["constants"]["latent_scale"] == 0.18215
    assert doc["constants"]["presets"]["tiny"] == {"input_size": 64, "latent_channels": 4, "latent_size": 8,
                                                   "downsample": 8}


@pytest.mark.parametrize("module", ["train_ae.py", "train_denoiser.py", "export.py", "data.py"])
def test_stages_read_no_raw_keys(module):
    """A setting read as cfg.get("key", default) or cfg["key"] would define its default a second time."""
    bad = []
    for node in ast.walk(ast.parse((PKG / module).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "cfg":
            bad.append(node.lineno)
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "cfg":
            bad.append(node.lineno)
    assert not bad, f"{module} reads raw config keys at lines {bad}: add them to stage_config.py"

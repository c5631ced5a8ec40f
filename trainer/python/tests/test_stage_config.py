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
    c = S.parse_stage("train", {"run_dir": "/r", "model": "m.pt", "index": "i.jsonl", "lr": 2, "classes": None,
                                "epochs": 3})
    assert isinstance(c, S.TrainConfig)
    assert c.lr == 2 and c.batch_size == 1 and c.posterior == "sample" and c.classes is None
    assert c.mean == [0.485, 0.456, 0.406] and c.height == 256
    assert S.parse_stage("train", c) is c
    # mutable defaults are not shared between instances
    c.mean.append(1.0)
    assert S.parse_stage("train", {"run_dir": "/r", "model": "m", "index": "i", "max_steps": 5}).mean == \
        [0.485, 0.456, 0.406]
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
    # values out of range, by name (the check line runs this before any stage: vlmdiff train --check)
    ("build", {"run_dir": "/r", "preset": "small", "res_blocks": 0}, "build config: res_blocks: 0 is below its minimum 1"),
    ("build", {"run_dir": "/r", "preset": "small", "control_levels": 0}, "control_levels: 0 is below its minimum 1"),
    ("train", {"run_dir": "/r", "model": "m", "index": "i", "epochs": 2, "amp": "fp32"},
     "train config: amp: 'fp32' is not one of none, bf16, fp16"),
    ("train", {"run_dir": "/r", "model": "m", "index": "i", "epochs": 2, "select": "best"}, "select: 'best' is not one of"),
    ("train", {"run_dir": "/r", "model": "m", "index": "i", "epochs": 2, "batch_size": 0}, "batch_size: 0 is below its minimum 1"),
    ("train", {"run_dir": "/r", "model": "m", "index": "i", "epochs": 2, "linear_end": 1.5}, "linear_end: 1.5 is above its maximum 1"),
    ("train", {"run_dir": "/r", "model": "m", "index": "i", "epochs": 0}, "epochs: 0 is below its minimum 1"),
    ("train", {"run_dir": "/r", "model": "m", "index": "i"}, "train config: give max_steps or epochs"),
    ("train", {"run_dir": "/r", "model": "m", "index": "i", "epochs": 2, "amp": "fp16"}, "amp fp16 needs device cuda"),
    ("train", {"run_dir": "/r", "model": "m", "index": "i", "epochs": 2, "device": "gpu"},
     "device: 'gpu' is not one of cpu, cuda, cuda:N"),
    ("finetune-ae", {"run_dir": "/r", "index": "i", "max_steps": 10, "memory_format": "nhwc"},
     "finetune-ae config: memory_format: 'nhwc' is not one of auto, channels_last, contiguous"),
    ("finetune-ae", {"run_dir": "/r", "index": "i", "max_steps": 10, "threads": 0}, "threads: 0 is below its minimum 1"),
    ("finetune-ae", {"run_dir": "/r", "index": "i", "max_steps": 0}, "max_steps 0 keeps the autoencoder as init gives it"),
    ("export", {"run_dir": "/r", "model": "m", "out": "o", "ensemble": 17}, "export config: ensemble: 17 is above its maximum 16"),
    ("export", {"run_dir": "/r", "model": "m", "out": "o", "denoiser_static_batches": [1, 0]},
     "denoiser_static_batches: 0 is below its minimum 1"),
    ("export", {"run_dir": "/r", "model": "m", "out": "o", "posterior": "mode"}, "posterior: 'mode' is not one of sample, mean"),
])
def test_bad_configs_are_refused_by_name(stage, cfg, msg):
    with pytest.raises(RuntimeError) as e:
        S.parse_stage(stage, cfg)
    assert msg in str(e.value)


def test_values_in_range_pass_and_a_typed_config_is_checked_too():
    ok = S.parse_stage("train", {"run_dir": "/r", "model": "m", "index": "i", "max_steps": 1, "device": "cuda:1",
                                 "amp": "fp16", "linear_end": 1, "batch_size": 1})
    assert ok.device == "cuda:1" and ok.linear_end == 1
    assert S.parse_stage("export", {"run_dir": "/r", "model": "m", "out": "o", "ensemble": 16,
                                    "denoiser_static_batches": []}).ensemble == 16
    # a config handed over as its class (a stage called from Python) is held to the same ranges
    bad = S.TrainConfig(run_dir="/r", model="m", index="i", epochs=1, batch_size=0)
    with pytest.raises(RuntimeError, match="batch_size: 0 is below its minimum 1"):
        S.parse_stage("train", bad)


def test_help_names_the_accepted_values():
    h = S.describe()
    assert "    res_blocks (int, >= 1, default None)" in h
    assert "    amp (str, one of none|bf16|fp16, default 'none')" in h
    assert "    ensemble (int, 1..16, default None)" in h


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
            # a range fits its type, and every default lies in its own range
            if f["choices"]:
                assert f["type"] == "str", (stage, name)
            if f["minimum"] is not None or f["maximum"] is not None:
                assert f["type"] in {"int", "float", "list[int]", "list[float]"}, (stage, name)
            if f["default"] is not None and not f["required"]:
                assert S._out_of_range(f["default"], f) is None, (stage, name, f["default"])
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

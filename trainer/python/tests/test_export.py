"""Bundle export: graphs pass the ONNX checker, the manifest's hashes match, probes are consistent, the
ONNX->torch loader computes what torch computed, and the fixture build is deterministic."""
from __future__ import annotations

import copy
import json
import pathlib

import numpy as np
import onnx
import pytest
import torch

from vlmdiff_train import export as E
from vlmdiff_train import fixture as FX
from vlmdiff_train import model_file as MF
from vlmdiff_train.onnx_torch import OnnxModule

REPO = pathlib.Path(__file__).resolve().parents[3]
FIXTURE = REPO / "models" / "testdata" / "fixture"

# the fixture's structure at 64x64: every role, a few seconds to export
SMALL_SPEC = copy.deepcopy(FX.FIXTURE_SPEC)
SMALL_SPEC.update(height=64, width=64, tokens=8)


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("bundle")
    res = FX.build_fixture(str(d / "b"), str(d / "w.pt"), probe_dir=str(d / "probes"), spec=SMALL_SPEC)
    return d, res


def test_committed_fixture_verifies():
    if not (FIXTURE / "bundle.json").is_file():
        pytest.skip("committed fixture not present")
    assert E.verify_bundle(str(FIXTURE)) == []
    m = json.load(open(FIXTURE / "bundle.json"))
    assert m["format"] == 1 and [e["key"] for e in m["conditioning"]["entries"]] == ["", "widget"]
    assert sum(f["size"] for f in m["files"].values()) < 4 * 1024 * 1024


def test_export_manifest_graphs_and_hashes(small_bundle):
    d, res = small_bundle
    b = pathlib.Path(res["bundle"])
    assert E.verify_bundle(str(b)) == []
    m = json.load(open(b / "bundle.json"))
    for section in ("provenance", "input", "latent", "diffusion", "conditioning", "features", "map", "score",
                    "calibration", "graphs", "files"):
        assert m[section], section
    assert set(m["graphs"]) == {"vae_encoder", "hint", "denoiser", "vae_decoder", "features"}
    io = {r: ([t["name"] for t in g["inputs"]], [t["name"] for t in g["outputs"]]) for r, g in m["graphs"].items()}
    assert io["vae_encoder"] == (["image"], ["moments"])
    assert io["hint"] == (["image"], ["hint"])
    assert io["denoiser"] == (["x", "t", "context", "hint"], ["eps"])
    assert io["vae_decoder"] == (["latent"], ["image"])
    assert io["features"] == (["image"], ["layer1", "layer2"])
    assert m["graphs"]["denoiser"]["inputs"][1] == {"name": "t", "type": "int64", "shape": [-1]}
    assert m["graphs"]["vae_encoder"]["outputs"][0]["shape"] == [-1, 8, 8, 8]
    for role, g in m["graphs"].items():  # the batch axis is dynamic in the graph itself
        model = onnx.load(str(b / g["file"]))
        assert model.opset_import[0].version <= 17
        for v in list(model.graph.input) + list(model.graph.output):
            assert v.type.tensor_type.shape.dim[0].dim_param, (role, v.name)
    assert (b / "conditioning.bin").stat().st_size == 2 * 8 * 16 * 4
    static = m["graphs"]["denoiser"]["static"]
    assert [(sg["batch"], sg["context"]) for sg in static] == [(b_, "") for b_ in FX.FIXTURE_STATIC_BATCHES]
    assert set(m["files"]) == {"conditioning.bin"} | {g["file"] for g in m["graphs"].values()} | \
        {sg["file"] for sg in static} | {m["graphs"]["denoiser"]["time"]["file"]}
    # a tampered file is reported
    with open(b / "hint.onnx", "ab") as f:
        f.write(b"\0")
    try:
        assert any("hint.onnx" in p for p in E.verify_bundle(str(b)))
    finally:
        with open(b / "hint.onnx", "rb+") as f:
            f.truncate((b / "hint.onnx").stat().st_size - 1)


def test_probes_match_manifest_and_torch(small_bundle):
    d, res = small_bundle
    m = json.load(open(pathlib.Path(res["bundle"]) / "bundle.json"))
    probes = d / "probes"
    for role, g in m["graphs"].items():
        doc = json.load(open(probes / f"{role}.json"))
        assert list(doc["inputs"]) == [t["name"] for t in g["inputs"]]
        assert list(doc["outputs"]) == [t["name"] for t in g["outputs"]]
        for kind in ("inputs", "outputs"):
            for name, spec in doc[kind].items():
                n = int(np.prod(spec["shape"]))
                assert spec["shape"][0] == 2
                arr = np.fromfile(probes / spec["file"], dtype="<i8" if spec["type"] == "int64" else "<f4")
                assert arr.size == n and np.all(np.isfinite(arr)), (role, name)
    # the hint probe's output is what the rebuilt torch networks compute
    nets = MF.load_nets(res["weights"], res["bundle"], m)
    doc = json.load(open(probes / "hint.json"))
    x = torch.from_numpy(np.fromfile(probes / doc["inputs"]["image"]["file"], "<f4").reshape(
        doc["inputs"]["image"]["shape"]))
    want = np.fromfile(probes / doc["outputs"]["hint"]["file"], "<f4")
    with torch.no_grad():
        got = nets.hint(x).numpy().ravel()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_rewrite_calibration_rehashes(small_bundle):
    d, res = small_bundle
    b = res["bundle"]
    before = json.load(open(pathlib.Path(b) / "bundle.json"))
    cal = {"method": "quantile:0.995", "global": {"threshold": 0.3, "min": 0.1, "max": 0.6, "pixel_threshold": 0.4},
           "per_class": {"widget": {"threshold": 0.35, "min": 0.1, "max": 0.6, "pixel_threshold": 0.4}}}
    after = E.rewrite_calibration(b, cal)
    assert after["calibration"] == cal and after["files"] == before["files"]
    assert {k: v for k, v in after.items() if k != "calibration"} == \
           {k: v for k, v in before.items() if k != "calibration"}
    with pytest.raises(RuntimeError, match="global"):
        E.rewrite_calibration(b, {"method": "x"})


def test_static_denoiser_graphs(small_bundle):
    """The static-shape denoiser: no context input, every shape fixed at its batch, and fewer nodes than the
    dynamic graph, with the shape chains and the context's key/value projections folded away; and no t: the
    time embedding and every ResBlock's projection of it are in the time graph, whose outputs it takes."""
    d, res = small_bundle
    b = pathlib.Path(res["bundle"])
    m = json.load(open(b / "bundle.json"))
    dyn = onnx.load(str(b / m["graphs"]["denoiser"]["file"]))
    tg = m["graphs"]["denoiser"]["time"]
    names = [o["name"] for o in tg["outputs"]]
    time = onnx.load(str(b / tg["file"]))
    assert [(v.name, [dim.dim_value for dim in v.type.tensor_type.shape.dim]) for v in time.graph.input] == [("t", [1])]
    assert [o.name for o in time.graph.output] == names and len(names) == 12  # 2 x 6 ResBlocks, SG branch and UNet
    time_ops = [n.op_type for n in time.graph.node]
    assert {"Cos", "Sin", "Gemm"} <= set(time_ops)
    for sg in m["graphs"]["denoiser"]["static"]:
        assert sg["time_inputs"] is True
        g = onnx.load(str(b / sg["file"]))
        ins = {v.name: [dim.dim_value for dim in v.type.tensor_type.shape.dim] for v in g.graph.input}
        assert list(ins) == ["x", "hint"] + names
        assert ins["x"] == [sg["batch"], 4, 8, 8] and ins["hint"][0] == sg["batch"]
        assert [ins[n] for n in names] == [o["shape"] for o in tg["outputs"]]
        ops = [n.op_type for n in g.graph.node]
        assert not {"Cos", "Sin", "Gemm"} & set(ops), "t-only nodes left in the step graph"
        dops = [n.op_type for n in dyn.graph.node]
        assert len(ops) < 0.8 * len(dops), (len(ops), len(dops))
        assert ops.count("MatMul") < dops.count("MatMul")  # to_k(context), to_v(context) are constants now
        assert ops.count("Gather") + ops.count("Concat") < 0.5 * (dops.count("Gather") + dops.count("Concat"))


def test_fixture_build_is_deterministic():
    a, b = FX.build_nets(SMALL_SPEC), FX.build_nets(SMALL_SPEC)
    for part in ("vae", "denoiser", "features"):
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), part
    # the zero-initialised layers were given values, so the SG branch is live
    sd = a.denoiser.state_dict()
    assert float(sd["sgn.zero_convs.0.0.weight"].abs().sum()) > 0
    assert float(sd["sgn.input_hint_block.14.weight"].abs().sum()) > 0


class _Backboneish(torch.nn.Module):
    """Conv (grouped too)/BN/ReLU/Clip/MaxPool/Add/GlobalAveragePool/Flatten/Gemm, as in the supplied backbones."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.c2 = torch.nn.Conv2d(8, 8, 1)
        self.fc = torch.nn.Linear(8, 5)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = self.bn(h)  # after the ReLU: not foldable into the conv
        h = torch.nn.functional.max_pool2d(h, 3, 2, 1)
        s = h + self.c2(torch.clamp(self.dw(h), 0, 6))
        return s, self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(s, 1), 1))


def test_onnx_torch_matches_torch(tmp_path):
    net = _Backboneish().eval()
    p = tmp_path / "b.onnx"
    x = torch.randn(2, 3, 33, 40)
    torch.onnx.export(net, (x,), str(p), input_names=["input"], output_names=["feat", "logits"], opset_version=13,
                      dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}}, **E.TRACING_EXPORT)
    ops = {n.op_type for n in onnx.load(str(p)).graph.node}
    assert {"Conv", "BatchNormalization", "Relu", "Clip", "MaxPool", "Add", "Gemm"} <= ops, ops
    m = OnnxModule.load(str(p)).eval()
    with torch.no_grad():
        want, got = net(x), m(x)
    torch.testing.assert_close(got["feat"], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["logits"], want[1], rtol=1e-5, atol=1e-5)


def test_onnx_torch_refuses_unknown_ops(tmp_path):
    node = onnx.helper.make_node("Softplus", ["x"], ["y"])
    g = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                               [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    with pytest.raises(RuntimeError, match="Softplus"):
        OnnxModule(onnx.helper.make_model(g))


def test_supplied_backbone_loads(shared_dir):
    p = shared_dir / "backbones" / "mobilenetv2_fp32_features.onnx"
    if not p.is_file():
        pytest.skip("backbone not present")
    m = OnnxModule.load(str(p), outputs=["block2", "block5"]).eval()
    with torch.no_grad():
        o = m(torch.randn(1, 3, 64, 64))
    assert tuple(o["block2"].shape) == (1, 24, 16, 16) and tuple(o["block5"].shape) == (1, 32, 8, 8)


@pytest.mark.parametrize("ensemble,want", [(1, (1, 2, 4)), (2, (2, 4, 8)), (4, (4, 8, 16))])
def test_default_static_batches_cover_the_ensemble_rows(ensemble, want):
    """A frame scored with K start noises is K denoiser rows: the default static graphs are those of 1, 2 and 4
    frames; a denoiser over 256 M parameters gets none."""
    from vlmdiff_train.export import default_static_batches
    small = torch.nn.Linear(4, 4)
    assert default_static_batches(small, ensemble) == want

    class Huge(torch.nn.Module):
        def parameters(self, recurse=True):
            yield torch.nn.Parameter(torch.zeros(1).expand(300_000_000), requires_grad=False)  # no memory
    assert default_static_batches(Huge(), ensemble) == ()


def test_layer_match_is_written_per_layer(tmp_path):
    spec = copy.deepcopy(SMALL_SPEC)
    nets = FX.build_nets(spec)
    common = dict(vae=nets.vae, denoiser=nets.denoiser, features=nets.features,
                  layers=[("layer1", 1.0), ("layer2", 0.5)], conditioning=FX.fixture_conditioning(spec),
                  latent_channels=int(spec["vae"]["embed_dim"]), downsample=2 ** (len(spec["vae"]["ch_mult"]) - 1),
                  hint_owner=nets.denoiser.sgn, height=64, width=64, denoiser_static_batches=[])
    out = tmp_path / "b"
    E.export_bundle(str(out), layer_match={"layer1": 1, "layer2": 0, "not_a_layer": 2}, **common)
    layers = json.load(open(out / "bundle.json"))["features"]["layers"]
    assert layers == [{"name": "layer1", "weight": 1.0, "match": 1}, {"name": "layer2", "weight": 0.5}]
    assert E.verify_bundle(str(out)) == []


def test_feature_graph_is_cut_to_its_layers_and_kept_outputs(tmp_path):
    """A backbone file with a deeper layer than the bundle maps: the bundle's feature graph computes only the
    mapped layer and the kept one (keep_outputs: the nearest-normal term's), which graphs.features.outputs declares
    and features.layers does not; a kept name the file lacks is ignored."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(2)
    ws = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.3, n)
          for n, s in (("w1", (4, 3, 3, 3)), ("w2", (6, 4, 3, 3)), ("w3", (8, 6, 3, 3)))]
    conv = dict(strides=[2, 2], pads=[1, 1, 1, 1])
    nodes = [helper.make_node("Conv", ["input", "w1"], ["a"], **conv),
             helper.make_node("Conv", ["a", "w2"], ["b"], **conv),
             helper.make_node("Conv", ["b", "w3"], ["c"], **conv)]
    g = helper.make_graph(nodes, "bb", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 64, 64])],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["n", ch, s, s])
                           for o, ch, s in (("a", 4, 32), ("b", 6, 16), ("c", 8, 8))], initializer=ws)
    src = tmp_path / "backbone.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(src))
    spec = copy.deepcopy(SMALL_SPEC)
    nets = FX.build_nets(spec)
    out = tmp_path / "b"
    E.export_bundle(str(out), vae=nets.vae, denoiser=nets.denoiser, features=None, feature_onnx=str(src),
                    layers=[("b", 1.0)], keep_outputs=["a", "zz", "b"], conditioning=FX.fixture_conditioning(spec),
                    latent_channels=int(spec["vae"]["embed_dim"]), downsample=2 ** (len(spec["vae"]["ch_mult"]) - 1),
                    hint_owner=nets.denoiser.sgn, height=64, width=64, denoiser_static_batches=[])
    m = json.load(open(out / "bundle.json"))
    assert [ly["name"] for ly in m["features"]["layers"]] == ["b"]
    assert [o["name"] for o in m["graphs"]["features"]["outputs"]] == ["b", "a"]
    assert m["graphs"]["features"]["outputs"][1]["shape"] == [-1, 4, 32, 32]
    cut = onnx.load(str(out / "features.onnx"))
    assert [o.name for o in cut.graph.output] == ["b", "a"] and [n.output[0] for n in cut.graph.node] == ["a", "b"]
    assert E.verify_bundle(str(out)) == []

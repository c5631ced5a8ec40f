"""ViT feature graphs in onnx_torch: the project's DINO module exported at opsets 14-17, the dino_export tool, and
the token layout of the anomaly map. Operator-by-operator agreement with ONNX Runtime is trainer/ortcheck's test
(on the cases tests/onnx_op_cases.py writes)."""
from __future__ import annotations

import io

import onnx
import pytest
import torch

from vlmdiff_train import reference as R
from vlmdiff_train.dino_export import export_dino_onnx
from vlmdiff_train.export import TRACING_EXPORT
from vlmdiff_train.onnx_torch import OnnxModule

from onnx_op_cases import cases, dino_module


@pytest.mark.parametrize("opset", [14, 15, 16, 17])
def test_dino_graph_runs_in_onnx_torch(opset):
    f = dino_module(32)
    x = torch.randn(3, 3, 32, 32)
    b = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(f, (x[:1],), b, opset_version=opset, input_names=["image"], output_names=["tokens"],
                          dynamic_axes={"image": {0: "b"}, "tokens": {0: "b"}}, **TRACING_EXPORT)
    m = onnx.load_from_string(b.getvalue())
    ops = {n.op_type for n in m.graph.node}
    assert ("LayerNormalization" in ops) == (opset >= 17), ops
    assert {"Erf", "Softmax", "MatMul", "Transpose", "Reshape", "Concat"} <= ops
    with torch.no_grad():
        got, want = OnnxModule(m).eval()(x)["tokens"], f(x)
    assert got.shape == (3, 1 + 16, 32)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_every_case_runs_and_covers_the_vit_ops():
    """The ORT comparison's cases all run here (but those whose expected outputs torch computes itself), and
    between them use every op of an exported ViT."""
    ops = set()
    for c in cases():
        if c.want is None:
            OnnxModule(c.model).eval()(torch.from_numpy(c.x.copy()))
        ops |= {n.op_type for n in c.model.graph.node}
    assert {"Erf", "Pow", "ReduceMean", "Slice", "Softmax", "Sqrt", "LayerNormalization", "MatMul", "Transpose",
            "Reshape", "Concat", "Gather", "Expand", "Unsqueeze", "Squeeze", "Div", "Sub", "Where",
            "ConstantOfShape", "Shape", "Cast", "Resize", "Equal"} <= ops


def test_dino_export_tool(tmp_path):
    cfg = {"img_size": 24, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
    from vlmdiff_train.nets.dino import DinoConfig, VisionTransformer
    torch.manual_seed(3)
    vit = VisionTransformer(DinoConfig(**cfg))
    pth = tmp_path / "dino.pth"
    torch.save(vit.state_dict(), pth)  # the plain backbone state dict, as dino_deitsmall8_pretrain.pth
    r = export_dino_onnx(str(tmp_path / "d.onnx"), str(pth), 32, cfg, opset=14)
    assert (r["tokens"], r["dim"]) == (17, 32)
    m = OnnxModule.load(str(tmp_path / "d.onnx")).eval()
    from vlmdiff_train.nets.dino import DinoFeatures
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x)["tokens"], DinoFeatures(vit.eval(), 32)(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="DINO"):
        export_dino_onnx(str(tmp_path / "e.onnx"), str(pth), 32, dict(cfg, embed_dim=16, num_heads=2))


def test_token_map_layout_is_the_patch_grid():
    """Token i of a ViT is patch (i // side, i % side) (PatchEmbed flattens the conv map row-major): the map of
    tokens must equal the map of the same features laid out as [B,D,h,w], with CLS dropped whatever it holds."""
    b, d, side = 2, 8, 4
    grid_a, grid_b = torch.randn(b, d, side, side), torch.randn(b, d, side, side)
    grid_b[:, :, 1, 3] = grid_a[:, :, 1, 3]  # one patch identical: distance 0 exactly there

    def tokens(g):
        return torch.cat([torch.randn(b, 1, d), g.flatten(2).transpose(1, 2)], dim=1)

    ta, tb = tokens(grid_a), tokens(grid_b)
    got = R.layer_distance(ta, tb, tokens=True)
    torch.testing.assert_close(got, R.layer_distance(grid_a, grid_b))
    assert float(got[0, 0, 1, 3]) == pytest.approx(0.0, abs=1e-6)
    # the map of a DINO module's own tokens has the patch grid's shape
    f = dino_module(32)
    with torch.no_grad():
        fa = {"tokens": f(torch.randn(1, 3, 32, 32))}
        amap = R.anomaly_map(fa, fa, [{"name": "tokens", "weight": 1.0}], 32, 32, tokens=True)
    assert amap.shape == (1, 32, 32) and float(amap.abs().max()) < 1e-5

"""Quantise a bundle's feature graph to int8 with ONNX Runtime's static quantiser (`vlmdiff quantize`).

Why only the feature graph: on a CPU with AVX-512 VNNI, a ResNet50 or MobileNetV2 feature graph ran 2-2.5x
faster as int8 (its large convolutions become integer kernels), while the VAE encoder and decoder ran slower
(every GroupNorm and SiLU between their convolutions needs a dequantise and a requantise) and the denoiser is
a thousand tiny operators whose cost is not arithmetic. See docs/operations.md, "Reduced precision".

The graph is quantised in ONNX Runtime's QDQ format: weights int8 per output channel, activations uint8 per
tensor, their ranges calibrated on the inputs the graph really sees when scoring (the frames and their
reconstructions, written by the Go side as one .npy). The result is an ordinary ONNX file that ONNX Runtime's
CPU provider runs with integer kernels; nothing in the scorer changes.

Needs numpy and onnxruntime (with its quantization tools: onnx, sympy), which `make deps` installs into
.deps/py; not torch. Prints one JSON line: per output, the relative L2 error and the mean and largest cosine
distance between the float and the int8 features over the calibration inputs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Iterator, Sequence

import numpy as np

METHODS = ("percentile", "minmax")
WEIGHT_BITS = (7, 8)


def load_calibration(path: str) -> np.ndarray:
    """The calibration inputs [N,3,H,W] float32, refused with the reason when unusable."""
    data = np.load(path)
    if data.dtype != np.float32 or data.ndim != 4 or data.shape[0] < 1 or data.shape[1] != 3:
        raise ValueError(f"{path}: want float32 [N,3,H,W] calibration inputs, got {data.dtype} {list(data.shape)}")
    if not np.isfinite(data).all():
        raise ValueError(f"{path}: calibration inputs hold NaN or Inf")
    return data


def batches(data: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for i in range(0, data.shape[0], size):
        yield data[i : i + size]


def quantize(graph: str, out: str, data: np.ndarray, input_name: str, method: str, batch: int,
             weight_bits: int = 7) -> None:
    """Write the int8 QDQ copy of graph to out, calibrated on data.

    weight_bits 7 quantises the weights to [-64, 64] (onnxruntime's reduce_range). On x86 CPUs without VNNI
    (AVX2 only, AVX-512 without VNNI) ONNX Runtime multiplies uint8 activations by int8 weights with
    VPMADDUBSW, which adds two products into a saturating int16: 255 x 127 x 2 overflows it, 255 x 64 x 2 does
    not. A bundle is quantised on one machine and scored on others, so 7 bits is the default; 8 is for lines
    whose CPUs all have VNNI (docs/operations.md, "Reduced precision").
    """
    if weight_bits not in WEIGHT_BITS:
        raise ValueError(f"weight_bits {weight_bits}: want one of {WEIGHT_BITS}")
    from onnxruntime.quantization import (  # imported here: the module must import without onnxruntime
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        """The calibration batches; set_range narrows it to a slice of them (what CalibStridedMinMax asks)."""

        def __init__(self) -> None:
            self.items = [{input_name: b} for b in batches(data, batch)]
            self.it = iter(self.items)

        def __len__(self) -> int:
            return len(self.items)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.it = iter(self.items[start_index:end_index])

        def get_next(self):  # type: ignore[override]
            return next(self.it, None)

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory(prefix="vlmdiff-quant-") as tmp:
        # Shape inference and ONNX Runtime's float optimisations first (what ONNX Runtime's documentation asks
        # for before quantising): folded BatchNorms and fused activations get one range each, not two.
        pre = os.path.join(tmp, "pre.onnx")
        quant_pre_process(graph, pre)
        # The calibrator keeps every intermediate tensor of the runs it is given until it computes the ranges:
        # a ResNet50 on 160 inputs of 256 px in one go was killed at 23.7 GB. Given one batch at a time
        # (CalibStridedMinMax, which despite its name strides any calibrator), it folds each batch into its
        # ranges or percentile histograms and keeps one batch's tensors.
        quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True, reduce_range=weight_bits == 7,
                        calibrate_method=methods[method],
                        extra_options={"CalibStridedMinMax": 1})


def compare(graph: str, out: str, data: np.ndarray, input_name: str, batch: int) -> dict[str, dict[str, float]]:
    """Per output: how far the int8 features are from the float ones on the calibration inputs."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    ref = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
    q = ort.InferenceSession(out, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in ref.get_outputs()]
    num = {n: 0.0 for n in names}
    den = {n: 0.0 for n in names}
    cos_sum = {n: 0.0 for n in names}
    cos_max = {n: 0.0 for n in names}
    count = {n: 0 for n in names}
    for b in batches(data, batch):
        for n, a, c in zip(names, ref.run(names, {input_name: b}), q.run(names, {input_name: b})):
            a64, c64 = a.astype(np.float64), c.astype(np.float64)
            num[n] += float(((a64 - c64) ** 2).sum())
            den[n] += float((a64**2).sum())
            if a.ndim >= 3:  # maps [B,C,h,w]: channels on axis 1; tokens [B,N,D]: on the last axis
                axis = 1 if a.ndim == 4 else -1
                dot = (a64 * c64).sum(axis)
                norm = np.maximum(np.linalg.norm(a64, axis=axis) * np.linalg.norm(c64, axis=axis), 1e-8)
                d = 1 - dot / norm
                cos_sum[n] += float(d.sum())
                cos_max[n] = max(cos_max[n], float(d.max()))
                count[n] += d.size
    return {n: {"rel_l2": (num[n] / den[n]) ** 0.5 if den[n] > 0 else 0.0,
                "cos_mean": cos_sum[n] / count[n] if count[n] else 0.0,
                "cos_max": cos_max[n]} for n in names}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vlmdiff_train.quantize_features", description=__doc__.splitlines()[0])
    ap.add_argument("--graph", required=True, help="the float feature graph (.onnx)")
    ap.add_argument("--calib", required=True, help=".npy float32 [N,3,H,W]: the inputs the graph sees when scoring")
    ap.add_argument("--input", required=True, help="the graph's input tensor name")
    ap.add_argument("--out", required=True, help="where to write the int8 graph")
    ap.add_argument("--method", choices=METHODS, default="percentile", help="how activation ranges are calibrated")
    ap.add_argument("--batch", type=int, default=4, help="calibration inputs per run")
    ap.add_argument("--weight-bits", type=int, choices=WEIGHT_BITS, default=7,
                    help="7: weights in [-64, 64], no saturation on any x86 CPU; 8: full int8, for CPUs with VNNI only")
    args = ap.parse_args(argv)
    if args.batch < 1:
        ap.error("--batch must be >= 1")
    try:
        data = load_calibration(args.calib)
        quantize(args.graph, args.out, data, args.input, args.method, args.batch, args.weight_bits)
        errors = compare(args.graph, args.out, data, args.input, args.batch)
    except (ValueError, OSError) as e:
        print(f"quantize_features: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"event": "done", "calibration_inputs": int(data.shape[0]), "method": args.method,
                      "weight_bits": args.weight_bits,
                      "outputs": errors}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

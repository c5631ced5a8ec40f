package pipeline

import (
	"runtime"

	"golang.org/x/sys/cpu"

	"github.com/vlmdiff/edge/models"
)

// Int8WeightsExact says whether ONNX Runtime's CPU kernels multiply uint8 activations by full-range int8 weights
// exactly on this machine. On x86 they do with VNNI (AVX512-VNNI, AVX-VNNI) or AMX; without it they use
// VPMADDUBSW, which adds two products into a saturating int16 (255 x 127 x 2 overflows it), and an 8-bit
// quantised feature graph then drifts from its float original (measured: its map correlated 0.825 with the
// float map on an AVX2-only CPU, 0.940 with 7-bit weights; docs/operations.md, "Reduced precision"). Other
// architectures are not known to saturate.
func Int8WeightsExact() bool {
	if runtime.GOARCH != "amd64" {
		return true
	}
	return cpu.X86.HasAVX512VNNI || cpu.X86.HasAVXVNNI || cpu.X86.HasAMXInt8
}

// Int8Warning is what a scorer on provider would warn about bundle manifest m on this machine: an int8 feature
// graph with 8-bit weights run by the CPU provider of a CPU without VNNI ("" when none). It is a warning, not a
// refusal: the frames are still scored, less precisely, and the line keeps running until a 7-bit copy
// (`vlmdiff quantize --weight-bits 7`) or the float bundle replaces it.
func Int8Warning(m *models.Manifest, provider string) string {
	return int8Warning(m, provider, Int8WeightsExact())
}

func int8Warning(m *models.Manifest, provider string, exact bool) string {
	if m.Features.Precision != models.PrecisionInt8 || m.Features.WeightBits != 8 || provider != "cpu" || exact {
		return ""
	}
	return "the feature graph is int8 with 8-bit weights, and this CPU has no VNNI or AMX: ONNX Runtime's int8 " +
		"kernels saturate here and the maps drift from the float bundle's; quantize a copy with --weight-bits 7 " +
		"for this line PC, or score the float bundle"
}

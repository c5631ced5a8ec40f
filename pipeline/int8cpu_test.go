package pipeline

import (
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/models"
)

func TestInt8Warning(t *testing.T) {
	manifest := func(precision string, bits int) *models.Manifest {
		return &models.Manifest{Features: models.Features{Precision: precision, WeightBits: bits}}
	}
	cases := []struct {
		name     string
		m        *models.Manifest
		provider string
		exact    bool
		warn     bool
	}{
		{"8-bit weights on a CPU without VNNI", manifest(models.PrecisionInt8, 8), "cpu", false, true},
		{"8-bit weights on a CPU with VNNI", manifest(models.PrecisionInt8, 8), "cpu", true, false},
		{"8-bit weights on CUDA", manifest(models.PrecisionInt8, 8), "cuda", false, false},
		{"7-bit weights without VNNI", manifest(models.PrecisionInt8, 7), "cpu", false, false},
		{"int8 copy from before the field", manifest(models.PrecisionInt8, 0), "cpu", false, false},
		{"float graph", manifest("", 0), "cpu", false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := int8Warning(c.m, c.provider, c.exact)
			if (w != "") != c.warn {
				t.Fatalf("warning %q, want one: %v", w, c.warn)
			}
			if c.warn && !strings.Contains(w, "--weight-bits 7") {
				t.Errorf("warning %q does not name the remedy", w)
			}
		})
	}
}

// TestInt8WeightsExactMatchesKernel: the CPU features the scorer reads agree with the kernel's own list.
func TestInt8WeightsExactMatchesKernel(t *testing.T) {
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		t.Skip("reads /proc/cpuinfo's x86 flags")
	}
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Skip(err)
	}
	flags := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "flags" {
			for _, f := range strings.Fields(v) {
				flags[f] = true
			}
			break
		}
	}
	want := flags["avx512_vnni"] || flags["avx_vnni"] || flags["amx_int8"]
	if got := Int8WeightsExact(); got != want {
		t.Errorf("Int8WeightsExact() = %v, /proc/cpuinfo flags say %v (avx512_vnni %v, avx_vnni %v, amx_int8 %v)", got, want,
			flags["avx512_vnni"], flags["avx_vnni"], flags["amx_int8"])
	}
}

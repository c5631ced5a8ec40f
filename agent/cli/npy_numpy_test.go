package cli

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// npyCheckScript loads each .npy with numpy.load and prints "shape dtype" and then the raw little-endian float32
// payload in hex, so the test compares numpy's reading of the file with the values Go wrote, bit for bit.
const npyCheckScript = `import sys, numpy as np
for p in sys.argv[1:]:
    a = np.load(p, allow_pickle=False)
    print(" ".join(str(s) for s in a.shape), a.dtype.str, a.astype("<f4").tobytes().hex())
`

// TestWriteNPYNumpyRoundTrip: what WriteNPY writes (the maps of `vlmdiff score --out`) is what numpy.load reads:
// same shape, dtype float32, same values, including odd sizes (the header padding), negatives, infinities and
// NaN. Skips without python3 and numpy.
func TestWriteNPYNumpyRoundTrip(t *testing.T) {
	// the project's interpreter (/usr/bin/python3, as `vlmdiff train` uses) first, then python3 on PATH
	var py string
	var err error
	for _, c := range []string{"/usr/bin/python3", "python3"} {
		if err = exec.Command(c, "-c", "import numpy").Run(); err == nil {
			py = c
			break
		}
	}
	if py == "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set but python3 cannot import numpy: %v", err)
		}
		t.Skipf("python3 with numpy not available: %v", err)
	}
	dir := t.TempDir()
	cases := []struct{ h, w int }{{1, 1}, {3, 5}, {64, 64}, {17, 250}, {1, 1000}}
	var paths []string
	var want [][]float32
	for i, c := range cases {
		data := make([]float32, c.h*c.w)
		for j := range data {
			data[j] = float32(math.Sin(float64(j*7+i))) * float32(j+1)
		}
		if len(data) > 3 {
			data[1], data[2], data[3] = float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN())
		}
		p := filepath.Join(dir, fmt.Sprintf("m%d.map.npy", i))
		if err := WriteNPY(p, data, c.h, c.w); err != nil {
			t.Fatal(err)
		}
		paths, want = append(paths, p), append(want, data)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(py, append([]string{"-c", npyCheckScript}, paths...)...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("numpy.load: %v: %s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != len(cases) {
		t.Fatalf("numpy printed %d lines for %d files:\n%s", len(lines), len(cases), out)
	}
	for i, c := range cases {
		f := strings.Fields(lines[i])
		if len(f) != 4 {
			t.Fatalf("%s: numpy says %q", paths[i], lines[i])
		}
		if got := f[0] + " " + f[1]; got != fmt.Sprintf("%d %d", c.h, c.w) {
			t.Errorf("%s: numpy shape %s, want (%d, %d)", paths[i], got, c.h, c.w)
		}
		if f[2] != "<f4" {
			t.Errorf("%s: numpy dtype %s, want <f4", paths[i], f[2])
		}
		var payload []byte
		if _, err := fmt.Sscanf(f[3], "%x", &payload); err != nil {
			t.Fatal(err)
		}
		if len(payload) != 4*len(want[i]) {
			t.Fatalf("%s: numpy read %d values, want %d", paths[i], len(payload)/4, len(want[i]))
		}
		for j, v := range want[i] {
			if got := binary.LittleEndian.Uint32(payload[4*j:]); got != math.Float32bits(v) {
				t.Fatalf("%s: value %d: numpy read %v, Go wrote %v", paths[i], j, math.Float32frombits(got), v)
			}
		}
	}
}

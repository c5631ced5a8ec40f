package npy

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

// TestWriteNumpyRoundTrip: what Write writes (the maps of `vlmdiff score --out`, the calibration inputs of
// `vlmdiff quantize`) is what numpy.load reads: same shape (1 to 4 dimensions), dtype float32, same values,
// including odd sizes (the header padding), negatives, infinities and NaN. A shape that does not hold the data
// is refused. Skips without python3 and numpy.
func TestWriteNumpyRoundTrip(t *testing.T) {
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
	cases := [][]int{{1, 1}, {3, 5}, {64, 64}, {17, 250}, {1, 1000}, {5}, {2, 3, 1, 4}}
	var paths []string
	var want [][]float32
	for i, c := range cases {
		n := 1
		for _, d := range c {
			n *= d
		}
		data := make([]float32, n)
		for j := range data {
			data[j] = float32(math.Sin(float64(j*7+i))) * float32(j+1)
		}
		if len(data) > 3 {
			data[1], data[2], data[3] = float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN())
		}
		p := filepath.Join(dir, fmt.Sprintf("m%d.map.npy", i))
		if err := Write(p, data, c...); err != nil {
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
		if len(f) != len(c)+2 {
			t.Fatalf("%s: numpy says %q", paths[i], lines[i])
		}
		if got, want := strings.Join(f[:len(c)], " "), strings.Trim(fmt.Sprint(c), "[]"); got != want {
			t.Errorf("%s: numpy shape %s, want %v", paths[i], got, c)
		}
		if f[len(c)] != "<f4" {
			t.Errorf("%s: numpy dtype %s, want <f4", paths[i], f[len(c)])
		}
		var payload []byte
		if _, err := fmt.Sscanf(f[len(c)+1], "%x", &payload); err != nil {
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
	if err := Write(filepath.Join(dir, "bad.npy"), make([]float32, 5), 2, 3); err == nil {
		t.Error("a 2x3 shape for 5 values was accepted")
	}
}

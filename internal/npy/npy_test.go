package npy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestNumpyReadsIt: numpy.load reads back every shape exactly (values, dtype, C order), and a shape that does
// not hold the data is refused.
func TestNumpyReadsIt(t *testing.T) {
	const py = "/usr/bin/python3" // Debian's, with python3-numpy (make deps)
	if err := exec.Command(py, "-c", "import numpy").Run(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set but %s cannot import numpy: %v", py, err)
		}
		t.Skipf("%s cannot import numpy: %v", py, err)
	}
	dir := t.TempDir()
	for _, shape := range [][]int{{5}, {2, 3}, {2, 3, 1, 4}} {
		n := 1
		for _, d := range shape {
			n *= d
		}
		data := make([]float32, n)
		for i := range data {
			data[i] = float32(i)*0.5 - 1
		}
		path := filepath.Join(dir, "a.npy")
		if err := Write(path, data, shape...); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(py, "-c", `import numpy, sys
a = numpy.load(sys.argv[1])
print(a.dtype, list(a.shape), float((a.ravel() == numpy.arange(a.size, dtype=numpy.float32) * 0.5 - 1).all()))`, path).CombinedOutput()
		if err != nil {
			t.Fatalf("shape %v: numpy.load: %v: %s", shape, err, out)
		}
		var want []string
		for _, d := range shape {
			want = append(want, strconv.Itoa(d))
		}
		if got, w := strings.TrimSpace(string(out)), "float32 ["+strings.Join(want, ", ")+"] 1.0"; got != w {
			t.Errorf("shape %v: numpy read %q, want %q", shape, got, w)
		}
	}
	if err := Write(filepath.Join(dir, "b.npy"), make([]float32, 5), 2, 3); err == nil {
		t.Error("a 2x3 shape for 5 values was accepted")
	}
}

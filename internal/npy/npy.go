// Package npy writes float32 arrays in NumPy's .npy format (version 1.0), which numpy.load reads without any
// other library: the lossless way to hand an anomaly map or a tensor to Python.
package npy

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
)

// Write writes data, C order, as a float32 array of the given shape. The shape's product must be len(data).
func Write(path string, data []float32, shape ...int) error {
	n := 1
	dims := make([]string, len(shape))
	for i, d := range shape {
		if d < 0 {
			return fmt.Errorf("npy %s: negative dimension %d in shape %v", path, d, shape)
		}
		n *= d
		dims[i] = strconv.Itoa(d)
	}
	if n != len(data) {
		return fmt.Errorf("npy %s: shape %v holds %d values, not %d", path, shape, n, len(data))
	}
	tuple := strings.Join(dims, ", ")
	if len(shape) == 1 {
		tuple += ","
	}
	header := fmt.Sprintf("{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }", tuple)
	// magic(6) + version(2) + len(2) + header + padding + '\n' must be a multiple of 64
	total := 10 + len(header) + 1
	pad := (64 - total%64) % 64
	header += strings.Repeat(" ", pad) + "\n"
	buf := make([]byte, 0, 10+len(header)+4*len(data))
	buf = append(buf, 0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0)
	buf = binary.LittleEndian.AppendUint16(buf, uint16(len(header)))
	buf = append(buf, header...)
	for _, v := range data {
		buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(v))
	}
	return os.WriteFile(path, buf, 0o644)
}

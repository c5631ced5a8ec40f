package eval

import (
	"encoding/binary"
	"encoding/csv"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
)

// MapsIndexFile is the index WriteMaps writes beside the maps.
const MapsIndexFile = "maps.csv"

// WriteMaps writes every result's anomaly map to dir as NNNNN.f32 (little-endian float32, row-major,
// height x width) and an index, maps.csv (file,path,class,label,mask,width,height,raw_score), so that map
// statistics, normalisations or new pooling rules can be studied offline (numpy.fromfile) on exactly what the
// Go pipeline computed. dir is created; files already there with the same names are replaced.
func WriteMaps(dir string, res []ImageResult) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("eval: maps directory: %w", err)
	}
	f, err := os.Create(filepath.Join(dir, MapsIndexFile))
	if err != nil {
		return fmt.Errorf("eval: maps index: %w", err)
	}
	w := csv.NewWriter(f)
	_ = w.Write([]string{"file", "path", "class", "label", "mask", "width", "height", "raw_score"})
	buf := []byte{}
	for i, r := range res {
		name := fmt.Sprintf("%05d.f32", i)
		m := r.Result.Map
		if len(m) != r.Result.MapWidth*r.Result.MapHeight {
			f.Close()
			return fmt.Errorf("eval: %s: map has %d values, not %dx%d", r.Item.Path, len(m), r.Result.MapWidth, r.Result.MapHeight)
		}
		buf = buf[:0]
		for _, v := range m {
			buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(v))
		}
		if err := os.WriteFile(filepath.Join(dir, name), buf, 0o644); err != nil {
			f.Close()
			return fmt.Errorf("eval: map of %s: %w", r.Item.Path, err)
		}
		_ = w.Write([]string{name, r.Item.Path, r.Item.Class, strconv.Itoa(r.Item.Label), r.Item.Mask,
			strconv.Itoa(r.Result.MapWidth), strconv.Itoa(r.Result.MapHeight), strconv.FormatFloat(r.Result.RawScore, 'g', -1, 64)})
	}
	if w.Flush(); w.Error() != nil {
		err = w.Error()
		f.Close()
		return fmt.Errorf("eval: maps index: %w", err)
	}
	return f.Close()
}

package store

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/vlmdiff/edge/internal/fsutil"
)

// The collected samples as a tar stream, for exporting them while the daemon runs (it holds the store's file
// lock): the daemon writes the stream (GET /api/samples/export), `vlmdiff samples export --api` unpacks it
// into exactly the layout ExportSamples writes. Entries: images/<camera>/<seq>.png for each sample, then
// samples.jsonl (one ExportLine per sample written).

// SampleRef names one stored sample.
type SampleRef struct {
	Camera string `json:"camera"`
	Seq    uint64 `json:"seq"`
}

// WriteSamplesTar streams every stored sample as a tar to w and returns what it wrote. WHY not one read
// transaction for the whole stream: a slow client would hold it open, and bbolt cannot grow its memory map
// while a read transaction lives, so the daemon's commits (and its scoring) would wait for the download.
// The set of samples is fixed in one short transaction; each sample is then read in its own, and one
// deleted meanwhile is skipped.
func (s *Store) WriteSamplesTar(ctx context.Context, w io.Writer) ([]SampleRef, error) {
	var keys [][]byte
	if err := s.view("list samples", func(tx *bolt.Tx) error {
		return tx.Bucket(bSamples).ForEach(func(k, _ []byte) error {
			keys = append(keys, append([]byte(nil), k...))
			return nil
		})
	}); err != nil {
		return nil, err
	}
	tw := tar.NewWriter(w)
	var manifest bytes.Buffer
	enc := json.NewEncoder(&manifest)
	var done []SampleRef
	now := time.Now()
	for _, k := range keys {
		if err := ctx.Err(); err != nil {
			return done, err
		}
		var sm Sample
		var png []byte
		err := s.view("read sample", func(tx *bolt.Tx) error {
			v := tx.Bucket(bSamples).Get(k)
			if v == nil {
				return nil
			}
			var err error
			png, err = decodeBlob(v, &sm)
			return err
		})
		if err != nil {
			return done, fmt.Errorf("sample %x: %w", k, err)
		}
		if png == nil {
			continue // deleted since the list was taken
		}
		rel := path.Join("images", sm.Camera, fmt.Sprintf("%d.png", sm.Seq))
		if err := tarFile(tw, rel, png, now); err != nil {
			return done, err
		}
		if err := enc.Encode(ExportLine{File: rel, Camera: sm.Camera, Class: sm.Class, Seq: sm.Seq, CapturedAt: sm.CapturedAt,
			Score: sm.Score, Origin: sm.Origin, MarkedBy: sm.MarkedBy, MarkedAt: sm.MarkedAt}); err != nil {
			return done, err
		}
		done = append(done, SampleRef{Camera: sm.Camera, Seq: sm.Seq})
	}
	if err := tarFile(tw, "samples.jsonl", manifest.Bytes(), now); err != nil {
		return done, err
	}
	if err := tw.Close(); err != nil {
		return done, fmt.Errorf("samples tar: %w", err)
	}
	return done, nil
}

func tarFile(tw *tar.Writer, name string, data []byte, mod time.Time) error {
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: mod, Typeflag: tar.TypeReg}); err != nil {
		return fmt.Errorf("samples tar: %s: %w", name, err)
	}
	if _, err := tw.Write(data); err != nil {
		return fmt.Errorf("samples tar: %s: %w", name, err)
	}
	return nil
}

// exportEntry is every name a samples tar may hold; anything else (a path that climbs out, a link) is refused.
var exportEntry = regexp.MustCompile(`^(samples\.jsonl|images/[A-Za-z0-9][A-Za-z0-9_.-]{0,63}/[0-9]{1,20}\.png)$`)

// ExtractSamplesTar unpacks a WriteSamplesTar stream into dir (the ExportSamples layout) and returns the
// samples it lists. samples.jsonl is written last and atomically, so a broken download leaves no manifest
// naming images that are not there. A stream without samples.jsonl is an error (it was cut short).
func ExtractSamplesTar(r io.Reader, dir string) ([]ExportLine, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, wrapIO(err))
	}
	tr := tar.NewReader(bufio.NewReader(r))
	var lines []ExportLine
	manifest := false
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return lines, fmt.Errorf("samples stream: %w", err)
		}
		if h.Typeflag != tar.TypeReg || !exportEntry.MatchString(h.Name) {
			return lines, fmt.Errorf("samples stream: unexpected entry %q (type %c)", h.Name, h.Typeflag)
		}
		dst := filepath.Join(dir, filepath.FromSlash(h.Name))
		if h.Name == "samples.jsonl" {
			data, err := io.ReadAll(io.LimitReader(tr, 256<<20))
			if err != nil {
				return lines, fmt.Errorf("samples stream: samples.jsonl: %w", err)
			}
			if lines, err = parseManifest(data); err != nil {
				return lines, err
			}
			if err := fsutil.WriteAtomic(dst, 0o644, func(w io.Writer) error { _, err := w.Write(data); return err }); err != nil {
				return lines, fmt.Errorf("write %s: %w", dst, wrapIO(err))
			}
			manifest = true
			continue
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return lines, fmt.Errorf("create %s: %w", filepath.Dir(dst), wrapIO(err))
		}
		if err := fsutil.WriteAtomic(dst, 0o644, func(w io.Writer) error { _, err := io.Copy(w, tr); return err }); err != nil {
			return lines, fmt.Errorf("write %s: %w", dst, wrapIO(err))
		}
	}
	if !manifest {
		return lines, errors.New("samples stream ended without samples.jsonl: the download was cut short")
	}
	return lines, nil
}

func parseManifest(data []byte) ([]ExportLine, error) {
	var lines []ExportLine
	dec := json.NewDecoder(bytes.NewReader(data))
	for dec.More() {
		var l ExportLine
		if err := dec.Decode(&l); err != nil {
			return lines, fmt.Errorf("samples stream: samples.jsonl line %d: %w", len(lines)+1, err)
		}
		lines = append(lines, l)
	}
	return lines, nil
}

// DeleteSampleRefs removes the named samples (those an export wrote; samples collected since stay) and
// returns how many were there.
func (s *Store) DeleteSampleRefs(refs []SampleRef) (int, error) {
	n := 0
	err := s.update("delete samples", func(tx *bolt.Tx) error {
		b := tx.Bucket(bSamples)
		for _, r := range refs {
			k := sampleKey(r.Camera, r.Seq)
			if b.Get(k) == nil {
				continue
			}
			if err := b.Delete(k); err != nil {
				return err
			}
			n++
		}
		return addCounter(tx, cSampleCount, -int64(n))
	})
	return n, err
}

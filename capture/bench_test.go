package capture

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkFileSource measures decode + BGR->RGB copy throughput of a 640x480 MJPG file read as fast as
// possible; frames/s is reported per run of 100 frames.
func BenchmarkFileSource(b *testing.B) {
	path := filepath.Join(b.TempDir(), "bench.avi")
	var seq [][3]byte
	for i := 0; i < 100; i++ {
		seq = append(seq, [3]byte{byte(i), byte(2 * i), 90})
	}
	writeVideo(b, path, seq, 640, 480, 25)
	b.ResetTimer()
	start := time.Now()
	frames := 0
	for i := 0; i < b.N; i++ {
		src, err := New(Config{Name: "bench", Kind: KindFile, Path: path, FPS: -1})
		if err != nil {
			b.Fatal(err)
		}
		out := make(chan Frame, 8)
		done := make(chan struct{})
		go func() {
			for range out {
				frames++
			}
			close(done)
		}()
		if err := src.Run(context.Background(), out, nil); err != nil {
			b.Fatal(err)
		}
		close(out)
		<-done
	}
	b.ReportMetric(float64(frames)/time.Since(start).Seconds(), "frames/s")
}

// BenchmarkFolderSource measures a folder of 128x128 PNGs present at start, acknowledged at once (delete).
func BenchmarkFolderSource(b *testing.B) {
	data := pngBytes(b, 128, 128, idColour(3))
	const n = 200
	var total time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dir := b.TempDir()
		for j := 0; j < n; j++ {
			writeFile(b, filepath.Join(dir, fmt.Sprintf("%04d.png", j)), data)
		}
		src, err := New(Config{Name: "bench", Kind: KindFolder, Path: dir,
			Folder: FolderConfig{After: AfterDelete, Settle: time.Millisecond, MaxInFlight: 8}})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		ctx, cancel := context.WithCancel(context.Background())
		out := make(chan Frame, 8)
		errc := make(chan error, 1)
		go func() { errc <- src.Run(ctx, out, nil) }()
		for j := 0; j < n; j++ {
			f := <-out
			f.Ack(true)
		}
		total += time.Since(start)
		cancel()
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n*b.N)/total.Seconds(), "files/s")
}

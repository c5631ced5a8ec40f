package pipeline

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestStaticDenoisersOpenOnFirstUse: the fixture's batch-1 static graph gets a session only when a batch of
// one is scored (a daemon at batch 1 never pays for the others, nor for the dynamic graph), and a static graph
// that cannot be opened leaves that batch size on the dynamic denoiser with the same scores instead of failing frames.
func TestStaticDenoisersOpenOnFirstUse(t *testing.T) {
	s := openFixture(t, fixtureBundle)
	if len(s.denStatic.files) == 0 {
		t.Fatal("the fixture lists no static-shape denoiser; this test needs one")
	}
	if n := len(s.denStatic.graphs()); n != 0 {
		t.Fatalf("%d static sessions open before any frame was scored, want 0", n)
	}
	ctx := context.Background()
	res, err := s.Score(ctx, []Request{{Image: testImage(256, 256, 1)}})
	if err != nil || res[0].Err != nil {
		t.Fatal(err, res[0].Err)
	}
	if s.denStatic.open[1] == nil {
		t.Fatalf("no batch-1 static session after scoring one frame (open: %v)", s.denStatic.open)
	}
	if s.den != nil {
		t.Error("the dynamic denoiser was opened although every batch so far had a static graph")
	}

	// A bundle whose static graph file is broken: the frame is still scored, by the dynamic graph.
	dir := t.TempDir()
	entries, err := os.ReadDir(fixtureBundle)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if err := os.Symlink(filepath.Join(mustAbs(t, fixtureBundle), e.Name()), filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	broken := openFixture(t, dir)
	file := broken.denStatic.files[1]
	if err := os.Remove(filepath.Join(dir, file)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, file), []byte("not onnx"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := broken.Score(ctx, []Request{{Image: testImage(256, 256, 1)}})
	if err != nil || got[0].Err != nil {
		t.Fatalf("scoring with an unusable static graph: %v %v", err, got[0].Err)
	}
	if !broken.denStatic.failed[1] {
		t.Error("the unusable static graph is not marked failed")
	}
	if broken.den == nil {
		t.Error("the fallback did not open the dynamic denoiser")
	}
	if d := got[0].RawScore - res[0].RawScore; d > 1e-5 || d < -1e-5 {
		t.Errorf("dynamic fallback score %v, static %v", got[0].RawScore, res[0].RawScore)
	}
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

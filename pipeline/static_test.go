package pipeline

import (
	"context"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vlmdiff/edge/internal/testpython"
	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline/floor"
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
	// The fixture's static graph takes the time graph's outputs: one run per distinct timestep, kept.
	if !s.denStatic.timeIn[1] || s.denStatic.time == nil || s.denStatic.time.g == nil {
		t.Fatal("the fixture's batch-1 static graph did not run with the time graph")
	}
	var want []int
	for _, st := range s.steps {
		want = append(want, st.T)
	}
	var got []int
	for ts := range s.denStatic.time.cache {
		got = append(got, ts)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("time tensors kept for timesteps %v, want the sampler's %v", got, want)
	}
	kept := s.denStatic.time.cache[want[0]]
	if _, err := s.Score(ctx, []Request{{Image: testImage(256, 256, 2)}}); err != nil {
		t.Fatal(err)
	}
	if len(s.denStatic.time.cache) != len(want) || &s.denStatic.time.cache[want[0]][0] != &kept[0] {
		t.Error("a second frame recomputed the time tensors")
	}

	// A bundle whose static graph file, or the time graph it needs, is broken: the frame is still scored, by
	// the dynamic graph.
	for _, which := range []string{"static graph", "time graph"} {
		t.Run(which, func(t *testing.T) {
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
			if which == "time graph" {
				file = broken.denStatic.time.file
			}
			if err := os.Remove(filepath.Join(dir, file)); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, file), []byte("not onnx"), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := broken.Score(ctx, []Request{{Image: testImage(256, 256, 1)}})
			if err != nil || got[0].Err != nil {
				t.Fatalf("scoring with an unusable %s: %v %v", which, err, got[0].Err)
			}
			if !broken.denStatic.failed[1] {
				t.Errorf("the static graph is not marked failed with an unusable %s", which)
			}
			if broken.den == nil {
				t.Error("the fallback did not open the dynamic denoiser")
			}
			if d := got[0].RawScore - res[0].RawScore; d > 1e-5 || d < -1e-5 {
				t.Errorf("dynamic fallback score %v, static %v", got[0].RawScore, res[0].RawScore)
			}
		})
	}
}

// TestStaticDenoiserWithoutTimeGraph: a bundle exported before the time graph (its static graph takes t; no
// graphs.denoiser.time) still loads, runs its static graph with t, and scores what the fixture's split graphs
// score. The old-format graph is exported from the fixture's weights by testdata/static_no_time.py.
func TestStaticDenoiserWithoutTimeGraph(t *testing.T) {
	needTorch(t)
	initRuntime(t)
	dir := filepath.Join(t.TempDir(), "bundle")
	copyDir(t, fixtureBundle, dir)
	cmd := exec.Command(testpython.Path(), "testdata/static_no_time.py", dir, fixtureWeights, dir)
	cmd.Env = append(os.Environ(), "PYTHONPATH=../trainer/python")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("static_no_time.py: %v\n%s", err, out)
	}
	m, err := models.ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	den := m.Graphs[models.RoleDenoiser]
	if err := os.Remove(filepath.Join(dir, den.Time.File)); err != nil {
		t.Fatal(err)
	}
	delete(m.Files, den.Time.File)
	den.Time = nil
	den.Static[0].TimeInputs = false
	m.Graphs[models.RoleDenoiser] = den
	if err := models.Rehash(dir, m); err != nil {
		t.Fatal(err)
	}
	old := openFixture(t, dir)
	cur := openFixture(t, fixtureBundle)
	n := cur.lc * cur.lh * cur.lw
	post, start := noiseFor(11, 0, false, n)
	req := []Request{{Image: testImage(256, 256, 3), Noise: &Noise{Posterior: post, Start: start}}}
	want, err := cur.Score(context.Background(), req)
	if err != nil || want[0].Err != nil {
		t.Fatal(err, want[0].Err)
	}
	got, err := old.Score(context.Background(), req)
	if err != nil || got[0].Err != nil {
		t.Fatal(err, got[0].Err)
	}
	if old.denStatic.open[1] == nil || old.denStatic.timeIn[1] || old.denStatic.time != nil || old.den != nil {
		t.Fatalf("old-format bundle: static session %v, time inputs %v, time graph %v, dynamic opened %v",
			old.denStatic.open[1] != nil, old.denStatic.timeIn[1], old.denStatic.time != nil, old.den != nil)
	}
	if d := math.Abs(got[0].RawScore - want[0].RawScore); d > 1e-5 {
		t.Errorf("old-format static graph scores %v, split graphs %v", got[0].RawScore, want[0].RawScore)
	}
	var num, den2 float64
	for i := range got[0].Map {
		d := float64(got[0].Map[i] - want[0].Map[i])
		num += d * d
		den2 += float64(want[0].Map[i]) * float64(want[0].Map[i])
	}
	if rel := math.Sqrt(num / den2); rel > 1e-4 {
		t.Errorf("old-format static graph's map differs from the split graphs' by %.2e relative L2", rel)
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

// TestStaticDenoiserLayout: with Options.StaticNoLayout the static denoiser's session is optimised without ONNX
// Runtime's NCHWc layout pass, and the graph's operator count (what `bench --floor` prints) is taken at that
// level: no ReorderInput/ReorderOutput nodes and fewer operators than with the pass, which the default keeps.
func TestStaticDenoiserLayout(t *testing.T) {
	count := func(o Options) (*floor.Count, GraphRun) {
		s, err := Open(fixtureBundle, o)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		for _, run := range s.GraphRuns(1) {
			if run.Stage != StageDenoise {
				continue
			}
			var in []floor.Input
			for _, gi := range run.Inputs {
				e := floor.ElemFloat
				if gi.Int64 {
					e = floor.ElemInt64
				}
				in = append(in, floor.Input{Name: gi.Name, Elem: e, Shape: gi.Shape})
			}
			c, err := floor.ProfileAt(run.Path, in, run.Outputs, 1, true, run.NoLayout)
			if err != nil {
				t.Fatal(err)
			}
			return c, run
		}
		t.Fatal("no denoise stage")
		return nil, GraphRun{}
	}
	lean, run := count(Options{Providers: []string{"cpu"}, Threads: 1, StaticNoLayout: true})
	if !run.NoLayout || filepath.Base(run.Path) != "denoiser_b1.onnx" {
		t.Fatalf("batch-1 denoise run %+v: want the static graph without the layout pass", run)
	}
	full, run2 := count(Options{Providers: []string{"cpu"}, Threads: 1})
	if run2.NoLayout {
		t.Fatal("the default did not keep the layout pass")
	}
	if n := lean.OpsByOp["ReorderInput"] + lean.OpsByOp["ReorderOutput"]; n != 0 {
		t.Errorf("%d reorder nodes without the layout pass", n)
	}
	if full.OpsByOp["ReorderOutput"] == 0 || lean.Ops >= full.Ops {
		t.Errorf("operators without the layout pass %d (%v), with %d (%v): want fewer, and reorders only with it",
			lean.Ops, lean.OpsByOp, full.Ops, full.OpsByOp)
	}
	t.Logf("fixture batch-1 static denoiser: %d operators without the layout pass, %d with", lean.Ops, full.Ops)
}

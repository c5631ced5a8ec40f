package run

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// stubs is a stage table whose stages write one file each and count their executions; cfg holds each stage's
// "config section", failAt makes a stage fail. A stage in result writes that instead of its config (a stage
// whose inputs changed but whose result did not, as the index of a dataset copied anew); cutoff marks stages.
type stubs struct {
	dir    string
	cfg    map[string]string
	calls  map[string]int
	failAt string
	result map[string]string
	cutoff map[string]bool
}

func (s *stubs) stages() []Stage {
	var out []Stage
	for _, name := range []string{"a", "b", "c", "d"} {
		name := name
		out = append(out, Stage{
			Name:   name,
			Cutoff: s.cutoff[name],
			Inputs: func() (any, error) { return s.cfg[name], nil },
			Run: func(ctx context.Context, sc *StageContext) (map[string]string, error) {
				s.calls[name]++
				if s.failAt == name {
					return nil, errors.New("boom")
				}
				p := sc.Path(name + ".out")
				// each output depends on its upstream's, as a real stage's would
				prev := ""
				if i := slices.Index([]string{"a", "b", "c", "d"}, name); i > 0 {
					b, err := os.ReadFile(sc.Output([]string{"a", "b", "c", "d"}[i-1], "out"))
					if err != nil {
						return nil, err
					}
					prev = string(b)
				}
				res, ok := s.result[name]
				if !ok {
					res = s.cfg[name]
				}
				return map[string]string{"out": p}, os.WriteFile(p, []byte(prev+name+"="+res+";"), 0o644)
			},
		})
	}
	return out
}

func (s *stubs) run(t *testing.T, from string) (Summary, error) {
	t.Helper()
	var out bytes.Buffer
	rn := &Runner{Dir: s.dir, Stages: s.stages(), From: from, Out: &out}
	sum, err := rn.Run(context.Background())
	t.Logf("runner output:\n%s", out.String())
	return sum, err
}

func TestRunnerSkipsResumesAndRedoes(t *testing.T) {
	type step struct {
		name    string
		mutate  func(s *stubs)
		from    string
		wantRan []string
		wantErr bool
	}
	steps := []step{
		{name: "first run does everything", wantRan: []string{"a", "b", "c", "d"}},
		{name: "second run skips everything", wantRan: nil},
		{name: "changed config of c redoes c and d", mutate: func(s *stubs) { s.cfg["c"] = "2" }, wantRan: []string{"c", "d"}},
		{name: "--from b redoes b and after although nothing changed", from: "b", wantRan: []string{"b", "c", "d"}},
		{name: "missing output of a redoes a and everything after", mutate: func(s *stubs) { os.Remove(filepath.Join(s.dir, "a.out")) },
			wantRan: []string{"a", "b", "c", "d"}},
		{name: "failure in c keeps a and b, stops", mutate: func(s *stubs) { s.cfg["c"] = "3"; s.failAt = "c" }, wantRan: nil, wantErr: true},
		{name: "the next run resumes at c", mutate: func(s *stubs) { s.failAt = "" }, wantRan: []string{"c", "d"}},
		{name: "a corrupted record redoes its stage", mutate: func(s *stubs) {
			os.WriteFile(filepath.Join(s.dir, "stages", "d.json"), []byte("{"), 0o644)
		}, wantRan: []string{"d"}},
		{name: "--from an unknown stage is refused", from: "zz", wantErr: true},
	}
	s := &stubs{dir: t.TempDir(), cfg: map[string]string{"a": "1", "b": "1", "c": "1", "d": "1"}, calls: map[string]int{}}
	for _, st := range steps {
		if st.mutate != nil {
			st.mutate(s)
		}
		sum, err := s.run(t, st.from)
		if (err != nil) != st.wantErr {
			t.Fatalf("%s: error %v, want error %v", st.name, err, st.wantErr)
		}
		if !slices.Equal(sum.Ran, st.wantRan) {
			t.Fatalf("%s: ran %v, want %v", st.name, sum.Ran, st.wantRan)
		}
		if err != nil && st.from == "" && !strings.Contains(err.Error(), "stage c: boom") {
			t.Fatalf("%s: error %q does not name the stage", st.name, err)
		}
	}
	// The final outputs reflect the final configs, through every stage.
	b, err := os.ReadFile(filepath.Join(s.dir, "d.out"))
	if err != nil || string(b) != "a=1;b=1;c=3;d=1;" {
		t.Fatalf("d.out = %q, %v", b, err)
	}
	rec, err := ReadRecord(s.dir, "d")
	if err != nil || rec == nil || rec.Outputs["out"] != "d.out" {
		t.Fatalf("record of d: %+v, %v (outputs must be stored relative to the run dir)", rec, err)
	}
}

func TestRunnerRemovesRecordBeforeRedoing(t *testing.T) {
	s := &stubs{dir: t.TempDir(), cfg: map[string]string{"a": "1", "b": "1", "c": "1", "d": "1"}, calls: map[string]int{}}
	if _, err := s.run(t, ""); err != nil {
		t.Fatal(err)
	}
	s.cfg["b"], s.failAt = "2", "b"
	if _, err := s.run(t, ""); err == nil {
		t.Fatal("want failure")
	}
	// b's old record must be gone: its outputs are from the old config, and c must not be skipped next time.
	if rec, _ := ReadRecord(s.dir, "b"); rec != nil {
		t.Fatalf("stale record of b kept: %+v", rec)
	}
	s.failAt = ""
	sum, err := s.run(t, "")
	if err != nil || !slices.Equal(sum.Ran, []string{"b", "c", "d"}) {
		t.Fatalf("ran %v, %v", sum.Ran, err)
	}
}

// A Cutoff stage redone with the same result keeps its ID and the stages after it; any other redo does not.
func TestRunnerCutsOffAtUnchangedOutputs(t *testing.T) {
	cases := []struct {
		name    string
		cutoff  bool
		mutate  func(s *stubs)
		from    string
		wantRan []string
		wantOut string // d.out afterwards
	}{
		{name: "inputs changed, same result: the stages after it are kept", cutoff: true,
			mutate:  func(s *stubs) { s.cfg["a"] = "copied" },
			wantRan: []string{"a"}, wantOut: "a=1;b=1;c=1;d=1;"},
		{name: "inputs changed, another result: everything after it is redone", cutoff: true,
			mutate:  func(s *stubs) { s.cfg["a"] = "copied"; s.result["a"] = "2" },
			wantRan: []string{"a", "b", "c", "d"}, wantOut: "a=2;b=1;c=1;d=1;"},
		{name: "a stage without the cutoff redoes everything after it", cutoff: false,
			mutate:  func(s *stubs) { s.cfg["a"] = "copied" },
			wantRan: []string{"a", "b", "c", "d"}, wantOut: "a=1;b=1;c=1;d=1;"},
		{name: "a record from before digests: compared with the outputs on disk", cutoff: true,
			mutate: func(s *stubs) {
				s.cfg["a"] = "copied"
				rec, err := ReadRecord(s.dir, "a")
				if err != nil || rec == nil || rec.Digest == "" {
					panic(fmt.Sprintf("record of a: %+v, %v: want a digest", rec, err))
				}
				rec.Digest = ""
				if err := writeRecord(s.dir, rec); err != nil {
					panic(err)
				}
			},
			wantRan: []string{"a"}, wantOut: "a=1;b=1;c=1;d=1;"},
		{name: "--from still redoes every stage after it", cutoff: true, from: "a",
			wantRan: []string{"a", "b", "c", "d"}, wantOut: "a=1;b=1;c=1;d=1;"},
		{name: "a changed output file on disk is a changed result", cutoff: true,
			mutate: func(s *stubs) {
				s.cfg["a"] = "copied"
				rec, _ := ReadRecord(s.dir, "a")
				rec.Digest = "" // compared with the disk, which someone edited
				_ = writeRecord(s.dir, rec)
				_ = os.WriteFile(filepath.Join(s.dir, "a.out"), []byte("edited"), 0o644)
			},
			wantRan: []string{"a", "b", "c", "d"}, wantOut: "a=1;b=1;c=1;d=1;"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := &stubs{dir: t.TempDir(), cfg: map[string]string{"a": "1", "b": "1", "c": "1", "d": "1"}, calls: map[string]int{},
				result: map[string]string{"a": "1"}, cutoff: map[string]bool{"a": tc.cutoff}}
			if _, err := s.run(t, ""); err != nil {
				t.Fatal(err)
			}
			before, _ := ReadRecord(s.dir, "a")
			if tc.mutate != nil {
				tc.mutate(s)
			}
			sum, err := s.run(t, tc.from)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(sum.Ran, tc.wantRan) {
				t.Fatalf("ran %v, want %v", sum.Ran, tc.wantRan)
			}
			if b, err := os.ReadFile(filepath.Join(s.dir, "d.out")); err != nil || string(b) != tc.wantOut {
				t.Fatalf("d.out = %q, %v; want %q", b, err, tc.wantOut)
			}
			after, _ := ReadRecord(s.dir, "a")
			kept := len(tc.wantRan) == 1
			if (after.ID == before.ID) != kept {
				t.Fatalf("ID of a %s -> %s: want kept %v", before.ID, after.ID, kept)
			}
			// A third run changes nothing: the kept ID and the new hash are one consistent record.
			if sum, err := s.run(t, ""); err != nil || len(sum.Ran) != 0 {
				t.Fatalf("third run ran %v, %v", sum.Ran, err)
			}
		})
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	t.Setenv("H6_DATA", "/data/x")
	base := "data:\n  root: ${H6_DATA}\nfinetune_ae:\n  max_steps: 10\ntrain:\n  max_steps: 10\n"
	for _, c := range []struct {
		name, yaml, want string
	}{
		{"ok", base, ""},
		{"unknown top-level key", base + "trian: {}\n", "trian: unknown field"},
		{"unknown nested key", strings.Replace(base, "max_steps: 10\ntrain", "max_step: 10\ntrain", 1), "finetune_ae.max_step: unknown field"},
		{"type error names the field", base + "seed: abc\n", "seed: cannot unmarshal"},
		{"nested type error", strings.Replace(base, "train:\n  max_steps: 10", "train:\n  max_steps: lots", 1), "train.max_steps: cannot unmarshal"},
		{"missing env", strings.Replace(base, "H6_DATA", "H6_UNSET_VAR", 1), "H6_UNSET_VAR is not set"},
		{"bad preset", base + "preset: huge\n", "preset: \"huge\" is not a preset"},
		{"required root", "finetune_ae:\n  max_steps: 10\ntrain:\n  max_steps: 10\n", "data.root: required"},
		{"bad method", base + "calibrate:\n  method: f1:0.5\n", "calibrate.method"},
		{"val fraction", base[:len("data:\n  root: ${H6_DATA}\n")] + "  val_fraction: 1\n" + base[len("data:\n  root: ${H6_DATA}\n"):], "data.val_fraction"},
		{"no training length", "data:\n  root: /x\nfinetune_ae:\n  max_steps: 1\n", "train.max_steps"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := ParseConfig([]byte(c.yaml), "/base")
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if cfg.Data.Root != "/data/x" || cfg.Data.Size != 64 || *cfg.Data.ValFraction != 0.1 || cfg.Name != "vlmdiff-tiny" {
					t.Fatalf("defaults/env not applied: %+v", cfg)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
		})
	}
}

func TestPresetConfigsParse(t *testing.T) {
	t.Setenv("VLMDIFF_DATA", "/data")
	t.Setenv("VLMDIFF_BACKBONES", "/backbones")
	t.Setenv("VLMDIFF_WEIGHTS", "/weights")
	t.Setenv("VLMDIFF_TAEF", "/weights/taef2")
	files, _ := filepath.Glob("../../configs/train/*.yaml")
	if len(files) < 3 {
		t.Fatalf("want the tiny, small and sd15 presets, found %v", files)
	}
	for _, f := range files {
		if _, err := LoadConfig(f); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func TestFormatEvent(t *testing.T) {
	ep, loss, eta := 3, 0.0213, 80.0
	got := FormatEvent("train", Event{Step: 120, Total: 500, Epoch: &ep, Loss: &loss, ETA: &eta})
	if want := "[train] step 120/500 (24%) epoch 3 loss 0.0213 ETA 1m20s"; got != want {
		t.Fatalf("%q, want %q", got, want)
	}
}

// TestSmallBundleConfig: the config scripts/small_bundle.sh derives from configs/train/small.yaml (the bundle of
// `make memory`) loads, trains one step a stage on one thread, chooses nothing at random in the select stage, and
// builds the nearest-normal term at a fixed factor. Its edits are line edits of small.yaml: when that file grows a
// setting they do not remove (select.pixel_sigmas did, and `make memory` failed at its training for sessions), this
// fails in `make test` instead.
func TestSmallBundleConfig(t *testing.T) {
	dir := t.TempDir()
	out, err := exec.Command("bash", "../../scripts/small_bundle.sh", "--config", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("small_bundle.sh --config: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != filepath.Join(dir, "train.yaml") {
		t.Errorf("printed %q, want the config's path", got)
	}
	t.Setenv("VLMDIFF_DATA", dir)
	t.Setenv("VLMDIFF_BACKBONES", "/backbones")
	c, err := LoadConfig(filepath.Join(dir, "train.yaml"))
	if err != nil {
		t.Fatalf("the derived config does not load: %v", err)
	}
	if c.Preset != "small" || c.Threads != 1 || c.FinetuneAE.MaxSteps != 1 || c.Train.MaxSteps != 1 || c.Train.Epochs != 0 {
		t.Errorf("preset %s, threads %d, AE steps %d, train steps %d epochs %d: want small, 1, 1, 1, 0", c.Preset, c.Threads,
			c.FinetuneAE.MaxSteps, c.Train.MaxSteps, c.Train.Epochs)
	}
	s := c.Select
	if len(s.Ensembles)+len(s.LayerWeights)+len(s.PixelFactors)+len(s.PixelSigmas)+len(s.KnnFactors)+len(s.KnnSigmas)+
		len(s.KnnKs)+len(s.StartSteps) != 0 {
		t.Errorf("select still weighs something: %+v", s)
	}
	if c.Calibrate.KnnFactor != 4 || c.Calibrate.Knn == nil {
		t.Errorf("calibrate: knn factor %v, knn %+v; want the term at 4", c.Calibrate.KnnFactor, c.Calibrate.Knn)
	}
}

// TestFileOutputs: a Python stage's "done" event mixes files with facts; only files count, and a relative name is
// looked up in the run directory, not in the working directory. Before, `vlmdiff train --run-dir taef2` started
// from the run directory's parent failed its build stage: the event's "preset": "taef2" named the run directory
// itself from there, became an output, and the record's check then missed RUN/taef2.
func TestFileOutputs(t *testing.T) {
	parent := t.TempDir()
	run := filepath.Join(parent, "taef2")
	if err := os.MkdirAll(filepath.Join(run, "ae"), 0o755); err != nil {
		t.Fatal(err)
	}
	model := filepath.Join(run, "model.pt")
	if err := os.WriteFile(model, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(parent)
	got := fileOutputs(run, map[string]any{
		"model":        model,        // absolute, exists
		"ae":           "ae",         // relative to the run directory, exists
		"preset":       "taef2",      // a fact that names the run directory from the working directory
		"merges":       24.0,         // not a string
		"latent_scale": 1.000015,     // not a string
		"gone":         "missing.pt", // a file the stage claimed but did not write
		"empty":        "",
	})
	want := map[string]string{"model": model, "ae": "ae"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("fileOutputs = %v, want %v", got, want)
	}
	if miss := missingOutputs(run, got); miss != "" {
		t.Fatalf("the kept outputs are not all in the run directory: %s", miss)
	}
}

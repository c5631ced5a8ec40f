// Package run is the `vlmdiff train` stage runner: it runs the training stages (index, caption, finetune-ae,
// build, train, select, export, calibrate, evaluate, register) as resumable steps in one run directory.
//
// Each stage records, in RUN/stages/<stage>.json, a hash of its inputs (its config section plus the identity of
// every upstream stage's last execution) and the outputs it produced. A rerun skips a stage whose hash matches
// and whose outputs still exist, so an interrupted run continues where it stopped and an edited config redoes
// exactly the stages it affects and everything after them. Training takes hours to days on real data: redoing a
// finished stage by accident is the expensive failure this design avoids.
//
// A stage marked Cutoff also records a digest of its outputs' contents. When such a stage is redone and writes
// byte for byte what its previous execution wrote, it keeps that execution's ID, so the stages after it stay
// done (early cutoff, as build systems have it). The case it is for: the index stage fingerprints the dataset
// by file count, size and newest modification time, so a dataset restored from a backup or copied to a new disk
// redoes the index; without the cutoff that redid the autoencoder finetune and the denoiser training too, hours
// on real data, although not one image had changed.
package run

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/vlmdiff/edge/internal/fsutil"
	"github.com/vlmdiff/edge/trainer/eval"
)

// Stage is one step of a run.
type Stage struct {
	Name string
	// Inputs returns what the stage's result depends on besides its upstream stages (usually its config
	// section). It is hashed as JSON, so it must marshal deterministically (structs and sorted maps do).
	Inputs func() (any, error)
	// Run does the work and returns its outputs: name -> path (absolute, or relative to the run directory).
	// Every output path must exist afterwards; a later run checks them before skipping.
	Run func(ctx context.Context, sc *StageContext) (map[string]string, error)
	// Cutoff: a redo whose outputs have the previous execution's contents keeps that execution's ID, and so
	// the stages after it. Only for a stage whose outputs no later stage changes in place (calibrate writes into
	// the export stage's bundle, so export must not have it: a redone export would leave an uncalibrated bundle
	// behind a skipped calibrate) and whose outputs are cheap to hash.
	Cutoff bool
}

// Record is RUN/stages/<stage>.json.
type Record struct {
	Stage string `json:"stage"`
	// Hash is sha256 over the stage's inputs and the upstream records' IDs.
	Hash string `json:"hash"`
	// ID is random per execution: a downstream stage's hash includes it, so redoing an upstream stage always
	// redoes what depends on it, even when the redone stage's own inputs did not change (--from).
	ID      string            `json:"id"`
	Outputs map[string]string `json:"outputs"`
	// Digest is sha256 over the outputs' names, paths and contents when they were written (Cutoff stages only).
	Digest   string    `json:"digest,omitempty"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Seconds  float64   `json:"seconds"`
}

// StageContext is what a running stage sees.
type StageContext struct {
	Name string
	Dir  string // the run directory
	// Log is RUN/logs/<stage>.log: subprocess output and anything else worth keeping.
	Log io.Writer
	// Progress receives human progress lines (the runner's output).
	Progress io.Writer
	Logger   *slog.Logger
	records  map[string]*Record
}

// Output returns an upstream stage's output path (absolute), or "" when it has none by that name.
func (sc *StageContext) Output(stage, name string) string {
	r := sc.records[stage]
	if r == nil {
		return ""
	}
	return absIn(sc.Dir, r.Outputs[name])
}

// Path returns a path inside the run directory.
func (sc *StageContext) Path(elem ...string) string {
	return filepath.Join(append([]string{sc.Dir}, elem...)...)
}

// Runner runs stages in order in one run directory.
type Runner struct {
	Dir    string
	Stages []Stage
	// From, when set, redoes that stage and every stage after it regardless of their records.
	From string
	// Until, when set, stops after that stage.
	Until string
	// Out receives one line per stage (skipped, started, done with its time) and progress lines.
	Out    io.Writer
	Logger *slog.Logger
}

// Summary says what a Run did.
type Summary struct {
	Ran, Skipped []string
}

// Run executes the stages. It stops at the first failing stage; the stages before it keep their records, so
// the next run resumes there.
func (rn *Runner) Run(ctx context.Context) (Summary, error) {
	var sum Summary
	out := rn.Out
	if out == nil {
		out = io.Discard
	}
	log := rn.Logger
	if log == nil {
		log = slog.Default()
	}
	names := make([]string, len(rn.Stages))
	for i, s := range rn.Stages {
		names[i] = s.Name
	}
	if rn.From != "" && !slices.Contains(names, rn.From) {
		return sum, fmt.Errorf("--from %s: no such stage (stages: %v)", rn.From, names)
	}
	if rn.Until != "" && !slices.Contains(names, rn.Until) {
		return sum, fmt.Errorf("--until %s: no such stage (stages: %v)", rn.Until, names)
	}
	for _, d := range []string{"stages", "logs"} {
		if err := os.MkdirAll(filepath.Join(rn.Dir, d), 0o755); err != nil {
			return sum, fmt.Errorf("run dir: %w", err)
		}
	}
	records := map[string]*Record{}
	forced := false
	var upstream []string // IDs of the stages before the current one
	for _, st := range rn.Stages {
		if err := ctx.Err(); err != nil {
			return sum, err
		}
		if st.Name == rn.From {
			forced = true
		}
		in, err := st.Inputs()
		if err != nil {
			return sum, fmt.Errorf("stage %s: inputs: %w", st.Name, err)
		}
		hash, err := hashOf(st.Name, in, upstream)
		if err != nil {
			return sum, fmt.Errorf("stage %s: hashing inputs: %w", st.Name, err)
		}
		prev, _ := readRecord(rn.Dir, st.Name)
		if !forced && prev != nil && prev.Hash == hash {
			if missing := missingOutputs(rn.Dir, prev.Outputs); missing == "" {
				fmt.Fprintf(out, "[%s] up to date, skipped (finished %s)\n", st.Name, prev.Finished.Format(time.DateTime))
				records[st.Name] = prev
				upstream = append(upstream, prev.ID)
				sum.Skipped = append(sum.Skipped, st.Name)
				if st.Name == rn.Until {
					break
				}
				continue
			} else {
				fmt.Fprintf(out, "[%s] output %s is missing: redoing the stage\n", st.Name, missing)
			}
		}
		before := "" // --from redoes every stage after it anyway: no cutoff there
		if !forced {
			if before, err = previousDigest(rn.Dir, st, prev); err != nil {
				return sum, fmt.Errorf("stage %s: %w", st.Name, err)
			}
		}
		// Redoing a stage invalidates its old record first: a crash mid-stage must not leave a record that
		// claims the half-written outputs are complete.
		_ = os.Remove(recordPath(rn.Dir, st.Name))
		fmt.Fprintf(out, "[%s] running\n", st.Name)
		rec, err := rn.runStage(ctx, st, hash, cutoff{prev, before}, records, out, log)
		if err != nil {
			fmt.Fprintf(out, "[%s] FAILED: %v\n", st.Name, err)
			return sum, fmt.Errorf("stage %s: %w (log: %s)", st.Name, err, logPath(rn.Dir, st.Name))
		}
		fmt.Fprintf(out, "[%s] done in %s\n", st.Name, eval.FormatDuration(time.Duration(rec.Seconds*float64(time.Second))))
		if before != "" && rec.ID == prev.ID {
			fmt.Fprintf(out, "[%s] its outputs are the same as the run of %s wrote: the stages after it keep theirs\n",
				st.Name, prev.Finished.Format(time.DateTime))
		}
		records[st.Name] = rec
		upstream = append(upstream, rec.ID)
		sum.Ran = append(sum.Ran, st.Name)
		if st.Name == rn.Until {
			break
		}
	}
	return sum, nil
}

// cutoff is what a redo of a Cutoff stage compares its outputs with: the previous execution's record and the
// digest of what it wrote ("" when there is nothing to compare with).
type cutoff struct {
	prev   *Record
	digest string
}

func (rn *Runner) runStage(ctx context.Context, st Stage, hash string, co cutoff, records map[string]*Record, out io.Writer, log *slog.Logger) (*Record, error) {
	lf, err := os.OpenFile(logPath(rn.Dir, st.Name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	start := time.Now()
	fmt.Fprintf(lf, "=== %s %s start (inputs %s)\n", start.Format(time.RFC3339), st.Name, hash[:12])
	sc := &StageContext{Name: st.Name, Dir: rn.Dir, Log: lf, Progress: out,
		Logger: log.With("stage", st.Name), records: records}
	outputs, err := st.Run(ctx, sc)
	if err != nil {
		fmt.Fprintf(lf, "=== %s failed: %v\n", st.Name, err)
		return nil, err
	}
	if outputs == nil {
		outputs = map[string]string{}
	}
	for k, v := range outputs {
		if rel, err := filepath.Rel(rn.Dir, v); err == nil && filepath.IsAbs(v) && filepath.IsLocal(rel) {
			outputs[k] = rel
		}
	}
	if missing := missingOutputs(rn.Dir, outputs); missing != "" {
		return nil, fmt.Errorf("the stage finished but its output %s does not exist", missing)
	}
	rec := &Record{Stage: st.Name, Hash: hash, ID: newID(), Outputs: outputs, Started: start, Finished: time.Now()}
	if st.Cutoff {
		if rec.Digest, err = outputsDigest(rn.Dir, outputs); err != nil {
			return nil, err
		}
		if co.digest != "" && rec.Digest == co.digest {
			rec.ID = co.prev.ID // the same result: the stages after it stay done
		}
	}
	rec.Seconds = rec.Finished.Sub(start).Seconds()
	if err := writeRecord(rn.Dir, rec); err != nil {
		return nil, err
	}
	fmt.Fprintf(lf, "=== %s done in %.1fs\n", st.Name, rec.Seconds)
	return rec, nil
}

// previousDigest is the digest of what a Cutoff stage's previous execution wrote, "" when there is nothing to
// compare with. A record written before digests were recorded gets it from the outputs still on disk: no later
// stage changes a Cutoff stage's outputs, so they are what that execution wrote.
func previousDigest(dir string, st Stage, prev *Record) (string, error) {
	if !st.Cutoff || prev == nil {
		return "", nil
	}
	if prev.Digest != "" {
		return prev.Digest, nil
	}
	if missingOutputs(dir, prev.Outputs) != "" {
		return "", nil
	}
	return outputsDigest(dir, prev.Outputs)
}

// outputsDigest hashes a stage's outputs: each name and path, and under it every file's relative path, size
// and contents (a directory's files in lexical order; a symbolic link by its target). Modification times are
// left out on purpose: identical bytes written again are the same result.
func outputsDigest(dir string, outputs map[string]string) (string, error) {
	h := sha256.New()
	keys := slices.Sorted(maps.Keys(outputs))
	for _, k := range keys {
		fmt.Fprintf(h, "output %q %q\n", k, outputs[k])
		if outputs[k] == "" {
			continue
		}
		root := absIn(dir, outputs[k])
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			switch {
			case d.IsDir():
				fmt.Fprintf(h, "dir %q\n", rel)
			case d.Type()&fs.ModeSymlink != 0:
				target, err := os.Readlink(p)
				if err != nil {
					return err
				}
				fmt.Fprintf(h, "link %q %q\n", rel, target)
			default:
				return hashFile(h, rel, p)
			}
			return nil
		})
		if err != nil {
			return "", fmt.Errorf("hashing output %s: %w", k, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func hashFile(h io.Writer, rel, p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	fmt.Fprintf(h, "file %q %d\n", rel, st.Size())
	_, err = io.Copy(h, f)
	return err
}

func hashOf(stage string, inputs any, upstream []string) (string, error) {
	b, err := json.Marshal(struct {
		Stage    string   `json:"stage"`
		Inputs   any      `json:"inputs"`
		Upstream []string `json:"upstream"`
	}{stage, inputs, upstream})
	if err != nil {
		return "", err
	}
	return sha256Hex(b), nil
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func absIn(dir, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

func missingOutputs(dir string, outputs map[string]string) string {
	keys := make([]string, 0, len(outputs))
	for k := range outputs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if outputs[k] == "" {
			continue
		}
		if _, err := os.Stat(absIn(dir, outputs[k])); err != nil {
			return fmt.Sprintf("%s (%s)", k, outputs[k])
		}
	}
	return ""
}

func recordPath(dir, stage string) string { return filepath.Join(dir, "stages", stage+".json") }
func logPath(dir, stage string) string    { return filepath.Join(dir, "logs", stage+".log") }

// ReadRecord reads a stage's record; nil without error when the stage never finished.
func ReadRecord(dir, stage string) (*Record, error) { return readRecord(dir, stage) }

func readRecord(dir, stage string) (*Record, error) {
	b, err := os.ReadFile(recordPath(dir, stage))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("stage record %s: %w", recordPath(dir, stage), err)
	}
	return &r, nil
}

func writeRecord(dir string, r *Record) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(recordPath(dir, r.Stage), append(b, '\n'))
}

// writeFileAtomic writes a run-directory file (record, stage config) with fsutil.WriteFileAtomic.
func writeFileAtomic(path string, data []byte) error {
	return fsutil.WriteFileAtomic(path, data, 0o644)
}

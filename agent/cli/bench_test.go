package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
)

// TestBenchJSON: `bench --json` prints one JSON object with every stage of every batch size measured, the
// provider it ran on and the frame rate, so a build can be tracked by a script; the table output carries the
// same figures.
func TestBenchJSON(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), []string{"bench", "--bundle", fixtureBundle, "--providers", "cpu", "--threads", "1",
		"--batches", "1,2", "--frames", "2", "--json"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var rep benchReport
	dec := json.NewDecoder(&stdout)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("not one JSON report: %v", err)
	}
	if rep.Provider != "cpu" || rep.Bundle == "" || rep.Width <= 0 || len(rep.Batches) != 2 {
		t.Fatalf("report %+v", rep)
	}
	totals := map[int]float64{}
	for _, st := range rep.Stages {
		if st.P50MS < 0 || st.P95MS < st.P50MS {
			t.Errorf("stage %+v: want 0 <= p50 <= p95", st)
		}
		if st.Stage == "total" {
			totals[st.Batch] = st.P50MS
		}
	}
	if totals[1] <= 0 || totals[2] <= 0 {
		t.Errorf("total stage missing or zero per batch: %v", totals)
	}
	for _, b := range rep.Batches {
		if b.Frames != 2 || !(b.FramesPerSec > 0) {
			t.Errorf("batch %+v", b)
		}
	}

	var table bytes.Buffer
	writeBenchTables(&table, &rep)
	if !strings.Contains(table.String(), "provider cpu") || !strings.Contains(table.String(), "batch 2:") {
		t.Errorf("table output:\n%s", table.String())
	}
}

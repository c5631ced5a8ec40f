package agent

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/vlmdiff/edge/agent/evidence"
	"github.com/vlmdiff/edge/agent/httpapi"
	"github.com/vlmdiff/edge/agent/mqttout"
	"github.com/vlmdiff/edge/agent/store"
	"github.com/vlmdiff/edge/pipeline"
)

// Evidence (config `evidence`): NG frames, and every ok_every-th OK frame, kept as files after their result
// is committed. Written on the worker, after the commit: a failed write is logged and counted, never a lost
// result. NG frames are rare on a working line, so the PNG encode stays off the common path.

func (a *Agent) openEvidence() error {
	ec := a.cfg.Evidence
	if !ec.Enabled {
		return nil
	}
	t, err := evidence.Open(evidence.Options{Dir: ec.Dir, MaxAge: ec.MaxAge, MaxBytes: int64(ec.MaxSize)})
	if err != nil {
		return err
	}
	a.evidence = t
	return nil
}

// evidenceDue decides, before the heatmap is rendered, whether this result's evidence will be kept: NG
// always, every ok_every-th OK frame per camera. A due OK frame gets its heatmap whatever the heatmap rate
// limit (mqtt.heatmap.min_interval), so every evidence item of a camera with heatmaps on has its frame,
// heatmap and result.
func (a *Agent) evidenceDue(c *camera, verdict string) bool {
	if a.evidence == nil {
		return false
	}
	if verdict == pipeline.VerdictNG {
		return true
	}
	every := a.cfg.Evidence.OKEvery
	return every > 0 && c.evidenceOK.Add(1)%uint64(every) == 0
}

// keepEvidence writes a committed result's evidence (due: evidenceDue's answer for it).
func (a *Agent) keepEvidence(c *camera, j *job, rec *store.Record, hm *mqttout.Heatmap, due bool) {
	if !due {
		return
	}
	frame, err := encodePNG(frameImage(j))
	if err == nil {
		var result []byte
		result, err = json.Marshal(mqttout.NewResultPayload(rec, rec.StoredAt))
		if err == nil {
			it := evidence.Item{Camera: c.name, Seq: rec.Seq, Verdict: rec.Verdict, Time: frameTimeOr(j), Frame: frame, Result: result}
			if hm != nil {
				it.Heatmap, it.HeatmapFormat = hm.Data, hm.Format
			}
			_, err = a.evidence.Save(it)
		}
	}
	if err != nil {
		c.evidenceErrs.Add(1)
		c.mu.Lock()
		c.errLog.log(a.log, time.Minute, "evidence not kept", "camera", c.name, "seq", rec.Seq, "err", err)
		c.mu.Unlock()
		return
	}
	c.evidenceKept.Add(1)
}

// pruneEvidence applies evidence.max_age and max_size (housekeeping, hourly and at start).
func (a *Agent) pruneEvidence() {
	if a.evidence == nil {
		return
	}
	st, err := a.evidence.Prune(time.Now())
	if err != nil {
		a.log.Warn("evidence prune", "err", err)
	}
	if st.Removed > 0 {
		a.log.Info("evidence pruned", "removed", st.Removed, "removed_bytes", st.RemovedBytes, "files", st.Files, "bytes", st.Bytes)
	}
}

// EvidenceList is GET /api/evidence.
func (a *Agent) EvidenceList(camera, day string) (any, error) {
	if a.evidence == nil {
		return nil, fmt.Errorf("evidence is off (evidence.enabled): %w", httpapi.ErrNotFound)
	}
	files, err := a.evidence.List(camera, day)
	if err != nil {
		return nil, err
	}
	type entry struct {
		evidence.File
		URL string `json:"url"`
	}
	out := make([]entry, 0, len(files))
	for i := len(files) - 1; i >= 0; i-- { // newest first
		out = append(out, entry{File: files[i], URL: "/api/evidence/files/" + files[i].Path})
	}
	return out, nil
}

// EvidenceDir is the evidence root ("" when off).
func (a *Agent) EvidenceDir() string {
	if a.evidence == nil {
		return ""
	}
	return a.evidence.Dir()
}

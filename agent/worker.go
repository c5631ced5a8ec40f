package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/jpeg"
	"image/png"
	"math"
	"time"

	"github.com/vlmdiff/edge/agent/mqttout"
	"github.com/vlmdiff/edge/agent/store"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/pipeline/roi"
)

// Extra latency keys the daemon adds to the pipeline's stages in result.latency_ms.
const (
	LatQueue            = "queue"              // received from the source -> taken by a worker
	LatModel            = "model"              // the pipeline's total for this frame
	LatHeatmap          = "heatmap"            // rendering and encoding the heatmap
	LatCommit           = "commit"             // the store transaction (history + outbox + origin)
	LatCaptureToPublish = "capture_to_publish" // frame capture time -> handed to the outbox for publishing
	LatOverhead         = "overhead"           // taken by a worker -> handed to the outbox, minus model time
)

// worker scores batches until the scheduler is closed and empty.
func (a *Agent) worker(ctx context.Context, id int) {
	for {
		jobs := a.sched.take(a.cfg.Models.Batch, a.cfg.Models.BatchWait)
		if jobs == nil {
			return
		}
		a.heartbeat.Store(time.Now().UnixNano())
		a.scoreBatch(ctx, jobs)
		a.heartbeat.Store(time.Now().UnixNano())
	}
}

// scoreBatch scores jobs with the current model and hands each result on. Errors of single frames are counted
// and reported; an error of the whole batch fails each frame of it.
func (a *Agent) scoreBatch(ctx context.Context, jobs []*job) {
	m := a.waitModel(ctx)
	if m == nil {
		// Shutting down with no model: give up on the frames without acknowledging them.
		for _, j := range jobs {
			j.trig.finish(scoreReply{err: errors.New("the daemon stopped before a model was loaded")})
			j.cam.doneTurn(j.seq)
		}
		return
	}
	defer m.release()
	reqs := make([]pipeline.Request, len(jobs))
	rois := make([]*roi.Config, len(jobs))
	for i, j := range jobs {
		class := j.cam.cfg.Class
		if j.class != "" {
			class = j.class
		}
		reqs[i] = pipeline.Request{Image: frameImage(j), Class: class, Seq: j.seq}
		rois[i] = j.cam.cfg.ROI
	}
	t0 := time.Now()
	// Scoring is not cancelled by shutdown: frames already taken finish (bounded by the drain timeout). Each
	// camera's region of interest is applied around the model (pipeline/roi): results come back in frame
	// coordinates, rescored and calibrated for the region.
	res, err := roi.Score(context.WithoutCancel(ctx), m.scorer, reqs, rois)
	modelWall := time.Since(t0)
	for i, j := range jobs {
		var r *pipeline.Result
		ferr := err
		if ferr == nil && i < len(res) {
			r = &res[i]
			ferr = r.Err
			if ferr == nil {
				ferr = checkResult(r)
			}
		} else if ferr == nil {
			ferr = fmt.Errorf("model returned %d results for %d frames", len(res), len(jobs))
		}
		if errors.Is(ferr, roi.ErrRegion) {
			ferr = fmt.Errorf("camera %q roi (config cameras[].roi): %w", j.cam.name, ferr)
		}
		if ferr != nil {
			a.frameFailed(j, ferr)
			continue
		}
		a.handleResult(ctx, m, j, r, modelWall/time.Duration(len(jobs)))
	}
}

// waitModel returns the current model, waiting while none is loaded yet (start-up, or every bundle refused).
func (a *Agent) waitModel(ctx context.Context) *loaded {
	for {
		if m := a.models.acquire(); m != nil {
			return m
		}
		select {
		case <-a.models.ready:
		case <-ctx.Done():
			if m := a.models.acquire(); m != nil {
				return m
			}
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// checkResult refuses what must not be published: a non-finite score or a map of the wrong size.
func checkResult(r *pipeline.Result) error {
	if math.IsNaN(r.RawScore) || math.IsInf(r.RawScore, 0) {
		return fmt.Errorf("model output: raw score %v is not finite", r.RawScore)
	}
	if len(r.Map) != r.MapWidth*r.MapHeight {
		return fmt.Errorf("model output: anomaly map has %d values, want %dx%d", len(r.Map), r.MapWidth, r.MapHeight)
	}
	return nil
}

func frameImage(j *job) pipeline.Image {
	return pipeline.Image{Width: j.frame.Width, Height: j.frame.Height, Pix: j.frame.Pix}
}

// frameFailed counts, logs (once per burst) and reports a frame that could not be scored. A folder file is
// acknowledged as failed (moved to failed/), so it is not retried forever.
func (a *Agent) frameFailed(j *job, err error) {
	c := j.cam
	c.scoreErrs.Add(1)
	c.mu.Lock()
	c.errLog.log(a.log, 10*time.Second, "frame not scored", "camera", c.name, "seq", j.seq, "file", j.frame.Origin, "err", err)
	c.mu.Unlock()
	a.cameraTransient(c, fmt.Sprintf("frame %d not scored: %v", j.seq, err))
	j.frame.Ack(false)
	j.trig.finish(scoreReply{err: fmt.Errorf("frame not scored: %w", err)})
	c.doneTurn(j.seq)
}

// handleResult applies the camera's threshold, renders the heatmap and hands the result with its outbox
// messages (and the folder origin) to the store's committer, which writes them in one transaction (shared
// with other results that arrive within store.commit_interval); the frame is acknowledged only after that
// transaction is on disk (committed).
func (a *Agent) handleResult(ctx context.Context, m *loaded, j *job, r *pipeline.Result, modelWall time.Duration) {
	c := j.cam
	if thr, ok := c.thresholdOverride(); ok {
		pipeline.Calibrate(r, m.manifest.CalibrationFor(r.Class), thr)
	}
	lat := make(map[string]float64, len(r.LatencyMS)+6)
	for k, v := range r.LatencyMS {
		lat[k] = v
	}
	modelMS := r.LatencyMS[pipeline.StageTotal]
	if modelMS == 0 {
		modelMS = ms(modelWall)
	}
	lat[LatModel] = modelMS
	lat[LatQueue] = ms(j.taken.Sub(j.received))

	var hm *mqttout.Heatmap
	render, evidence := a.heatmapAndEvidence(c, r.Verdict, j.heatmap)
	if render {
		t := time.Now()
		data, err := a.renderHeatmap(m, j, r)
		lat[LatHeatmap] = ms(time.Since(t))
		if err != nil {
			c.mu.Lock()
			c.errLog.log(a.log, 10*time.Second, "heatmap not rendered", "camera", c.name, "seq", j.seq, "err", err)
			c.mu.Unlock()
		} else {
			hm = &mqttout.Heatmap{Format: a.cfg.MQTT.Heatmap.Format, Data: data}
		}
	}

	mf := m.manifest
	rec := &store.Record{Camera: c.name, Seq: j.seq, FrameTime: j.frame.Time, Score: r.Score, RawScore: r.RawScore,
		Threshold: r.Threshold, Verdict: r.Verdict, Class: r.Class, Model: store.Model{Name: mf.Name, Version: mf.Version},
		LatencyMS: lat, AnomalyAreaPct: r.AnomalyAreaPct, Origin: j.frame.Origin,
		OriginKey: originKey(j.frame)}

	c.waitTurn(j.seq)
	now := time.Now()
	lat[LatCaptureToPublish] = ms(now.Sub(frameTimeOr(j)))
	lat[LatOverhead] = max(0, ms(now.Sub(j.taken))-modelMS)
	annotate(rec, j, lat, now)
	// The store commits results in groups (store.commit_interval): the worker goes on with the next frame,
	// and committed runs once this result's transaction is on disk. Handing results over in turn keeps each
	// camera's results in seq order in the outbox. From here on lat belongs to the commit.
	a.submit(rec, hm, func(err error) {
		lat[LatCommit] = ms(time.Since(now))
		a.committed(j, r, rec, hm, evidence, modelMS, now, err)
	})
	c.doneTurn(j.seq)
}

// committed finishes a result after its store transaction: acknowledges the frame to its source, answers
// its trigger, counts it and keeps its sample and evidence; or, when the result was not stored, reports that
// and leaves the frame with its source. Runs on the store committer's goroutine, in commit order.
func (a *Agent) committed(j *job, r *pipeline.Result, rec *store.Record, hm *mqttout.Heatmap, evidence bool,
	modelMS float64, now time.Time, err error) {
	c := j.cam
	lat := rec.LatencyMS
	switch {
	case errors.Is(err, store.ErrAlreadyProcessed):
		// An earlier run committed this file and died before moving it: acknowledge without a second result.
		c.skipped.Add(1)
		j.frame.Ack(true)
		j.trig.finish(scoreReply{err: err})
		return
	case err != nil:
		c.scoreErrs.Add(1)
		c.mu.Lock()
		c.errLog.log(a.log, 10*time.Second, "result not stored", "camera", c.name, "seq", j.seq, "err", err)
		c.mu.Unlock()
		a.cameraTransient(c, fmt.Sprintf("result %d not stored: %v", j.seq, err))
		// Not acknowledged: a folder file stays in place and is scored again at the next start.
		j.trig.finish(scoreReply{err: fmt.Errorf("result not stored: %w", err)})
		return
	}
	j.frame.Ack(true)
	if hm != nil {
		j.trig.finish(scoreReply{rec: rec, heatmap: hm.Data, format: hm.Format})
	} else {
		j.trig.finish(scoreReply{rec: rec})
	}
	c.scored.Add(1)
	if r.Verdict == pipeline.VerdictNG {
		c.ng.Add(1)
	}
	c.lastScore.Store(math.Float64bits(r.Score))
	if a.cfg.Agent.LogResults {
		a.log.Info("result", "camera", c.name, "seq", j.seq, "verdict", r.Verdict, "score", fmt.Sprintf("%.3f", r.Score),
			"raw_score", fmt.Sprintf("%.4f", r.RawScore), "threshold", fmt.Sprintf("%.4f", r.Threshold),
			"area_pct", fmt.Sprintf("%.1f", r.AnomalyAreaPct), "model_ms", fmt.Sprintf("%.0f", modelMS))
	}
	c.fps.tick(now)
	a.metrics.observe(c.name, lat)
	a.prom.observe(c.name, lat)
	// The job's hold on its pixels passes to lastFrame (the dashboard's picture, a false alarm's frame). The
	// frame it replaces goes back to its source's pool: it was the previous result's, whose sample and evidence
	// were written before this callback ran (one committer goroutine), and readers outside c.mu retain it.
	c.mu.Lock()
	prev := c.lastFrame
	c.lastFrame, c.lastFrameSeq = j.frame, j.seq
	c.lastJPEG = nil
	if hm != nil {
		c.lastHeatmap = hm.Data
	}
	c.mu.Unlock()
	prev.Release()
	a.maybeSample(c, j, r)
	a.keepEvidence(c, j, rec, hm, evidence)
}

// renderHeatmap renders and encodes a result's heatmap, over the frame shrunk to mqtt.heatmap.max_size.
func (a *Agent) renderHeatmap(m *loaded, j *job, r *pipeline.Result) ([]byte, error) {
	img, err := pipeline.Downscale(frameImage(j), a.cfg.MQTT.Heatmap.MaxSize)
	if err != nil {
		return nil, fmt.Errorf("heatmap: %w", err)
	}
	return m.scorer.Heatmap(img, r, a.cfg.MQTT.Heatmap.Format)
}

// heatmapAndEvidence decides whether a result gets a heatmap and whether it is kept as evidence: a heatmap
// when one is due (heatmapDue), asked for (POST /api/score?heatmap=1), or when an OK frame is kept as
// evidence on a camera with heatmaps on, so every evidence item has its heatmap.
func (a *Agent) heatmapAndEvidence(c *camera, verdict string, asked bool) (heatmap, evidence bool) {
	evidence = a.evidenceDue(c, verdict)
	due := a.heatmapDue(c, verdict)
	return due || asked || (evidence && c.cfg.HeatmapOn()), evidence
}

// heatmapDue decides per camera whether this result gets a heatmap: never when the camera has them off, always
// for NG, and for OK at most once per the camera's interval.
func (a *Agent) heatmapDue(c *camera, verdict string) bool {
	if !c.cfg.HeatmapOn() {
		return false
	}
	iv := a.cfg.HeatmapInterval(&c.cfg)
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if verdict != pipeline.VerdictNG && iv > 0 && !c.lastHMTime.IsZero() && now.Sub(c.lastHMTime) < iv {
		return false
	}
	c.lastHMTime = now
	return true
}

// maybeSample keeps every Nth OK frame of the camera as a normal sample for retraining; a full disk or
// store stops collection, never scoring.
func (a *Agent) maybeSample(c *camera, j *job, r *pipeline.Result) {
	every := a.cfg.SampleEvery(&c.cfg)
	if r.Verdict != pipeline.VerdictOK {
		return // a requested sample waits for the next OK frame
	}
	_, want := a.sampleReq.LoadAndDelete(c.name)
	if every <= 0 && !want {
		return
	}
	c.mu.Lock()
	c.sampleN++
	due := (every > 0 && c.sampleN%every == 0) || want
	c.mu.Unlock()
	if !due {
		return
	}
	pngData, err := encodePNG(frameImage(j))
	if err != nil {
		a.log.Warn("sample not encoded", "camera", c.name, "seq", j.seq, "err", err)
		return
	}
	if ok, reason := a.store.SampleGuard(len(pngData)); !ok {
		c.mu.Lock()
		c.errLog.log(a.log, time.Minute, "sample collection paused", "camera", c.name, "reason", reason)
		c.mu.Unlock()
		return
	}
	err = a.store.AddSample(store.Sample{Camera: c.name, Class: c.cfg.Class, Seq: j.seq, CapturedAt: frameTimeOr(j), Score: r.Score, PNG: pngData})
	if err != nil {
		a.log.Warn("sample not stored", "camera", c.name, "seq", j.seq, "err", err)
		return
	}
	c.samples.Add(1)
}

func frameTimeOr(j *job) time.Time {
	if j.frame.Time.IsZero() {
		return j.received
	}
	return j.frame.Time
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// toImage wraps packed RGB as an image.Image for the standard encoders.
func toImage(im pipeline.Image) image.Image {
	out := image.NewRGBA(image.Rect(0, 0, im.Width, im.Height))
	for i, o := 0, 0; i+2 < len(im.Pix) && o+3 < len(out.Pix); i, o = i+3, o+4 {
		out.Pix[o], out.Pix[o+1], out.Pix[o+2], out.Pix[o+3] = im.Pix[i], im.Pix[i+1], im.Pix[i+2], 255
	}
	return out
}

func encodePNG(im pipeline.Image) ([]byte, error) {
	var b bytes.Buffer
	if err := png.Encode(&b, toImage(im)); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func encodeJPEG(im pipeline.Image) ([]byte, error) {
	var b bytes.Buffer
	if err := jpeg.Encode(&b, toImage(im), &jpeg.Options{Quality: 85}); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

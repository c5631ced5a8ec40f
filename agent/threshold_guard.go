package agent

import (
	"errors"
	"fmt"
	"math"

	"github.com/vlmdiff/edge/agent/mqttout"
	"github.com/vlmdiff/edge/models"
)

// checkThreshold refuses a threshold command the camera does not accept: remote control switched off, or
// a value outside the camera's allowed range. WHY: anyone who may publish on the broker could set any
// camera's threshold, 1e300 included (every frame OK), and it persisted across restarts. The range keeps a
// remote change to what calibration makes plausible; who may publish at all is the broker's business
// (embedded: mqtt.embedded.users[].commands; external: its ACLs, docs/operations.md).
func (a *Agent) checkThreshold(c *camera, cmd mqttout.ThresholdCommand) error {
	if !c.cfg.RemoteThresholdOn() {
		return errors.New("remote threshold control is disabled for this camera (cameras[].remote_threshold: false)")
	}
	if cmd.Reset {
		return nil
	}
	lo, hi, from, err := a.thresholdBounds(c)
	if err != nil {
		return err
	}
	if math.IsNaN(cmd.Threshold) || cmd.Threshold < lo || cmd.Threshold > hi {
		return fmt.Errorf("threshold %g is outside the allowed range [%g, %g] (%s)", cmd.Threshold, lo, hi, from)
	}
	return nil
}

// thresholdBounds is the range a remote threshold must fall in: cameras[].threshold_range when set, else
// ThresholdBounds of the current model's calibration for the camera's class.
func (a *Agent) thresholdBounds(c *camera) (lo, hi float64, from string, err error) {
	if r := c.cfg.ThresholdRange; len(r) == 2 {
		return r[0], r[1], "cameras[].threshold_range", nil
	}
	m := a.models.acquire()
	if m == nil {
		return 0, 0, "", errors.New("no model is loaded to derive the allowed threshold range from; " +
			"set cameras[].threshold_range or retry once a model runs")
	}
	defer m.release()
	lo, hi = ThresholdBounds(m.manifest.CalibrationFor(c.cfg.Class))
	return lo, hi, "from the bundle's calibration; cameras[].threshold_range overrides it", nil
}

// ThresholdBounds derives a plausible threshold range from a calibration: the span of raw scores seen in
// calibration (and the calibrated threshold), widened by that span on both sides and floored at 0. A
// threshold below it makes (nearly) every frame NG, one above it (nearly) every frame OK: neither is a
// tuning, both are a misconfiguration or an attack.
func ThresholdBounds(cal models.ClassCalib) (lo, hi float64) {
	minV := math.Min(cal.Min, cal.Threshold)
	maxV := math.Max(cal.Max, cal.Threshold)
	span := maxV - minV
	if !(span > 0) || math.IsInf(span, 0) {
		span = math.Max(math.Abs(cal.Threshold), 1e-6)
	}
	return math.Max(0, minV-span), maxV + span
}

// dropImplausibleOverrides clears stored threshold overrides that fall outside their camera's allowed range
// once a model is loaded. WHY: an override persists across restarts; one stored by a version before the range
// check (1e300: every frame OK), or one that fit an earlier model, must not keep a camera silently all-OK or
// all-NG. It is cleared (the calibrated threshold applies again) and the reason is logged.
func (a *Agent) dropImplausibleOverrides() {
	for _, c := range a.cams {
		v, ok := c.thresholdOverride()
		if !ok {
			continue
		}
		lo, hi, from, err := a.thresholdBounds(c)
		if err != nil {
			continue // no model yet: checked again when one loads
		}
		if !math.IsNaN(v) && v >= lo && v <= hi {
			continue
		}
		if err := a.store.ClearThreshold(c.name); err != nil {
			a.log.Error("clearing an out-of-range threshold override", "camera", c.name, "err", err)
			continue
		}
		c.threshold.Store(math.Float64bits(math.NaN()))
		a.log.Warn("stored threshold override is outside the allowed range: cleared, the calibrated threshold applies",
			"camera", c.name, "threshold", v, "range", fmt.Sprintf("[%g, %g]", lo, hi), "range_from", from)
		a.refreshThresholdState(c)
	}
}

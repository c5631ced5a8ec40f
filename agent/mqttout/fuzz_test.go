package mqttout

import (
	"math"
	"testing"
)

// FuzzParseThresholdCommand: every threshold/set payload is either a finite threshold >= 0, a reset, or an
// error wrapping ErrBadCommand whose text stays short whatever the payload's size (it ends up retained on
// threshold/state and in the log).
func FuzzParseThresholdCommand(f *testing.F) {
	for _, s := range []string{"0.42", `{"threshold": 0.42}`, `{"reset": true}`, "1e300", "NaN", "-1", "Inf",
		`{"threshold": "x"}`, `{"reset": true, "threshold": 1}`, "", "  7  ", "\x00\xff"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		cmd, err := ParseThresholdCommand(payload)
		if err != nil {
			if len(err.Error()) > 600 {
				t.Fatalf("error of %d bytes for a %d-byte payload", len(err.Error()), len(payload))
			}
			return
		}
		if !cmd.Reset && (math.IsNaN(cmd.Threshold) || math.IsInf(cmd.Threshold, 0) || cmd.Threshold < 0) {
			t.Fatalf("accepted threshold %v", cmd.Threshold)
		}
	})
}

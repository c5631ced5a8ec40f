package agent

import (
	"context"
	"io"

	"github.com/vlmdiff/edge/agent/httpapi"
	"github.com/vlmdiff/edge/agent/store"
)

// WriteSamples streams the collected samples for GET /api/samples/export (httpapi.SampleStore).
func (a *Agent) WriteSamples(ctx context.Context, w io.Writer) (int, error) {
	refs, err := a.store.WriteSamplesTar(ctx, w)
	return len(refs), err
}

// DeleteSamples removes exported samples for POST /api/samples/delete; samples collected after the export
// are not named and stay.
func (a *Agent) DeleteSamples(refs []httpapi.SampleRef) (int, error) {
	sr := make([]store.SampleRef, len(refs))
	for i, r := range refs {
		sr[i] = store.SampleRef{Camera: r.Camera, Seq: r.Seq}
	}
	n, err := a.store.DeleteSampleRefs(sr)
	if err == nil && n > 0 {
		a.log.Info("exported samples deleted over HTTP", "samples", n)
	}
	return n, err
}

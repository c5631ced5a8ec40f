package cli

import (
	"errors"

	"github.com/vlmdiff/edge/agent/config"
	"github.com/vlmdiff/edge/pipeline/roi"
)

// roiFlags select the region of interest eval and calibrate apply to every image, so that their scores and
// thresholds are those the daemon computes for a camera with that region (docs/config.md, cameras[].roi).
type roiFlags struct {
	file, agentConfig, camera string
}

func (r *roiFlags) register(fs interface {
	StringVar(*string, string, string, string)
}) {
	fs.StringVar(&r.file, "roi", "", "region of interest file (YAML/JSON: `roi: {crop: {x, y, width, height}, mask: [[x, y], ...], fit: squash|letterbox}`), applied to every image as the daemon applies a camera's")
	fs.StringVar(&r.agentConfig, "agent-config", "", "take the region of interest of --camera from this daemon config (`vlmdiff run --config` file)")
	fs.StringVar(&r.camera, "camera", "", "the camera of --agent-config whose roi block to apply")
}

// load returns the selected region: nil (the whole image) when no flag is given.
func (r *roiFlags) load() (*roi.Config, error) {
	switch {
	case r.file != "" && (r.agentConfig != "" || r.camera != ""):
		return nil, errors.New("--roi and --agent-config/--camera are exclusive: give a roi file or a camera of a daemon config")
	case (r.agentConfig == "") != (r.camera == ""):
		return nil, errors.New("--agent-config and --camera go together")
	case r.file != "":
		return roi.Load(r.file)
	case r.agentConfig != "":
		return config.CameraROI(r.agentConfig, r.camera)
	}
	return nil, nil
}

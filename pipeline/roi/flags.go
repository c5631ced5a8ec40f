package roi

import "errors"

// Flags are the command-line flags that select a region for the commands that score files (`vlmdiff score`,
// `eval`, `calibrate`), spelled and checked the same way in each.
type Flags struct {
	File, AgentConfig, Camera string
}

// Register declares --roi, --agent-config and --camera on fs (a *flag.FlagSet).
func (f *Flags) Register(fs interface {
	StringVar(*string, string, string, string)
}) {
	fs.StringVar(&f.File, "roi", "", "region of interest file (YAML/JSON: `roi: {crop: {x, y, width, height}, mask: [[x, y], ...], fit: squash|letterbox}`), applied to every image as the daemon applies a camera's")
	fs.StringVar(&f.AgentConfig, "agent-config", "", "take the region of interest of --camera from this daemon config (`vlmdiff run --config` file)")
	fs.StringVar(&f.Camera, "camera", "", "the camera of --agent-config whose roi block to apply")
}

// Load returns the selected region, nil (the whole image) when no flag is given. camera reads one camera's
// block from a daemon config (agent/config.CameraROI; passed in so this package does not depend on the
// daemon's config).
func (f *Flags) Load(camera func(path, name string) (*Config, error)) (*Config, error) {
	switch {
	case f.File != "" && (f.AgentConfig != "" || f.Camera != ""):
		return nil, errors.New("--roi and --agent-config/--camera are exclusive: give a roi file or a camera of a daemon config")
	case (f.AgentConfig == "") != (f.Camera == ""):
		return nil, errors.New("--agent-config and --camera go together")
	case f.File != "":
		return Load(f.File)
	case f.AgentConfig != "":
		return camera(f.AgentConfig, f.Camera)
	}
	return nil, nil
}

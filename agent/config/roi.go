package config

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/vlmdiff/edge/internal/yamlconf"
	"github.com/vlmdiff/edge/pipeline/roi"
)

// CameraROI reads the region of interest of one camera from a daemon config file, for `vlmdiff calibrate` and
// `vlmdiff eval --agent-config FILE --camera NAME`. Only that camera's `roi` block is decoded and checked (with
// ${VAR} substitution, unknown keys refused, as Load does): the machine that calibrates need not have the
// line's secrets, certificates or models that a full Load would insist on. A camera without a roi block gives
// nil, the whole frame.
func CameraROI(path, camera string) (*roi.Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	var loose struct {
		Cameras []struct {
			Name string    `yaml:"name"`
			ROI  yaml.Node `yaml:"roi"`
		} `yaml:"cameras"`
	}
	if err := yaml.Unmarshal(data, &loose); err != nil {
		return nil, fmt.Errorf("agent config %s: %w", path, err)
	}
	var names []string
	for i, c := range loose.Cameras {
		names = append(names, c.Name)
		if c.Name != camera {
			continue
		}
		if c.ROI.Kind == 0 {
			return nil, nil
		}
		block, err := yaml.Marshal(map[string]*yaml.Node{"roi": &c.ROI})
		if err != nil {
			return nil, fmt.Errorf("agent config %s: cameras[%d].roi: %w", path, i, err)
		}
		var f roi.File
		if err := yamlconf.Decode(block, &f, os.LookupEnv); err != nil {
			return nil, fmt.Errorf("agent config %s: cameras[%d].%w", path, i, err)
		}
		if errs := f.ROI.Validate(); len(errs) > 0 {
			for k, e := range errs {
				errs[k] = fmt.Errorf("cameras[%d].roi.%w (camera %q)", i, e, camera)
			}
			return nil, fmt.Errorf("agent config %s: %w", path, errors.Join(errs...))
		}
		return f.ROI, nil
	}
	return nil, fmt.Errorf("agent config %s: no camera %q (cameras: %s)", path, camera, strings.Join(names, ", "))
}

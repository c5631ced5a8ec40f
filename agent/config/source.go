package config

// Source is the capture configuration of a camera. Placeholder until capture.Config lands; then this becomes
// `type Source = capture.Config`.
type Source struct {
	Name string `yaml:"name"`
	Kind string `yaml:"kind"`
	URL  string `yaml:"url"`
	Path string `yaml:"path"`
}

// validateSource checks the capture fields.
func validateSource(s *Source) error { return nil }

// CameraName is the camera's name.
func (c *Camera) CameraName() string { return c.Source.Name }

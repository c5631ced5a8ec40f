// Package buildinfo says which build of vlmdiff is running: `vlmdiff version`, the vlmdiff_build_info metric
// and Home Assistant's device sw_version all read it, so an operator sees one version everywhere.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
)

// version is set at link time: go build -ldflags "-X github.com/vlmdiff/edge/internal/buildinfo.version=1.2.3"
// (the Makefile passes `git describe`). Empty: the module version from the build info, else "dev".
var version string

// Info is what the binary knows about its own build.
type Info struct {
	Version   string `json:"version"`
	Revision  string `json:"revision"` // VCS commit, "" when built without VCS stamping (-buildvcs=false)
	Modified  bool   `json:"modified"` // built from a tree with uncommitted changes
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"` // GOOS/GOARCH
}

var (
	once sync.Once
	info Info
)

// Get returns the build's Info.
func Get() Info {
	once.Do(func() {
		info = Info{Version: version, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
		bi, ok := debug.ReadBuildInfo()
		if ok {
			if info.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
				info.Version = bi.Main.Version
			}
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					info.Revision = s.Value
				case "vcs.modified":
					info.Modified = s.Value == "true"
				}
			}
		}
		if info.Version == "" {
			info.Version = "dev"
		}
	})
	return info
}

// String is the one-line form `vlmdiff version` prints.
func (i Info) String() string {
	s := "vlmdiff " + i.Version
	if i.Revision != "" {
		rev := i.Revision
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if i.Modified {
			rev += "+modified"
		}
		s += " (" + rev + ")"
	}
	return fmt.Sprintf("%s %s %s", s, i.GoVersion, i.Platform)
}

package run

import (
	"context"
	"os/exec"
	"runtime/debug"
	"strings"
	"time"
)

// gitCommit is the commit recorded in a bundle's provenance: the revision the vlmdiff binary was built from
// (Go stamps it into the build info when building inside a git checkout), else what `git rev-parse HEAD` says
// in dir (the trainer's directory), else "". Asking git, rather than reading .git/HEAD by hand, also covers
// packed refs, worktrees (where .git is a file) and detached heads.
func gitCommit(dir string) string {
	if rev := buildRevision(); rev != "" {
		return rev
	}
	return gitRevParse(dir)
}

// buildRevision is the binary's vcs.revision, with "-dirty" when it was built from modified sources.
func buildRevision() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev != "" && modified == "true" {
		rev += "-dirty"
	}
	return rev
}

// gitRevParse asks git for dir's HEAD commit; "" when dir is not in a repository or git is missing.
func gitRevParse(dir string) string {
	if dir == "" {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "git", "-C", dir, "rev-parse", "--verify", "--quiet", "HEAD").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

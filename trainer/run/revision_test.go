package run

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestGitRevParseSeesPackedRefs: a branch whose ref lives only in packed-refs (after `git pack-refs`, or a
// fresh clone) and a worktree (where .git is a file) both give the commit, as the hand-written reader did not.
func TestGitRevParseSeesPackedRefs(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("no git")
	}
	dir := t.TempDir()
	git := func(d string, args ...string) string {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-C", d}, args...)...)
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@t", "GIT_COMMITTER_NAME=t",
			"GIT_COMMITTER_EMAIL=t@t", "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	repo := filepath.Join(dir, "repo")
	git(dir, "init", "-q", "-b", "main", repo)
	git(repo, "commit", "-q", "--allow-empty", "-m", "one")
	want := git(repo, "rev-parse", "HEAD")
	git(repo, "pack-refs", "--all")
	if _, err := os.Stat(filepath.Join(repo, ".git", "refs", "heads", "main")); !os.IsNotExist(err) {
		t.Fatalf("the ref is still loose after pack-refs (%v); the test would not test packed refs", err)
	}
	sub := filepath.Join(repo, "trainer", "python")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if got := gitRevParse(sub); got != want {
		t.Errorf("packed ref: gitRevParse = %q, want %q", got, want)
	}
	wt := filepath.Join(dir, "wt")
	git(repo, "worktree", "add", "-q", "-b", "other", wt)
	if got := gitRevParse(wt); got != want {
		t.Errorf("worktree: gitRevParse = %q, want %q", got, want)
	}
	if got := gitRevParse(t.TempDir()); got != "" {
		t.Errorf("outside a repository: %q, want \"\"", got)
	}
}

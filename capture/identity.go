package capture

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"syscall"
)

// fileIdentity names one version of a file: its path, size, modification time, inode and a hash of the
// bytes that were read. WHY all of them: the agent remembers scored origins (for 30 days) so that a file met
// again after a crash between commit and move is not scored twice; keyed on the name alone, a camera that
// reuses file names (a counter that resets, "part.png" every cycle) would go uninspected. The hash alone would
// skip a genuine second exposure that happens to be byte-identical; the metadata alone could miss a rewrite
// within the file system's timestamp granularity. Together they match only the very same file.
func fileIdentity(path string, data []byte) string {
	sum := sha256.Sum256(data)
	var ino uint64
	var mtime int64
	if st, err := os.Stat(path); err == nil {
		mtime = st.ModTime().UnixNano()
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			ino = sys.Ino
		}
	}
	return fmt.Sprintf("%s|%d|%d|%d|%s", path, len(data), mtime, ino, hex.EncodeToString(sum[:12]))
}

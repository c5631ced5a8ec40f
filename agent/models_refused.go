package agent

import (
	"fmt"
	"strings"
)

// reportUnreadable logs and puts on model/status every bundle directory whose manifest cannot be read (no
// bundle.json, or one that is not JSON), once per version of the file. WHY: such a directory sorts last (it
// has no created time), so while a good bundle runs the choice never reached it and it sat in the models
// directory with no word about it. Called with m.mu held, after the choice: the status that stays
// (running, or failed) then carries the reason.
func (m *modelManager) reportUnreadable(cands []candidate) {
	for _, c := range cands {
		if c.err == nil {
			continue
		}
		if t, seen := m.failed[c.dir]; seen && t.Equal(c.mtime) {
			continue
		}
		m.failed[c.dir] = c.mtime
		err := c.err
		if !strings.Contains(err.Error(), c.dir) {
			err = fmt.Errorf("bundle %s refused: %w", c.dir, err)
		}
		m.log.Error("model bundle refused: manifest unreadable", "dir", c.dir, "err", c.err)
		m.fail(err)
	}
}

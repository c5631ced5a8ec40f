package dataset

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Collected samples: the directory the agent exports its stored normal frames into.
//
//	<root>/samples.jsonl   one {"file","camera","class","seq","captured_at","score"} per line
//	<root>/<file>          file relative to root
//
// The agent stores only frames it judged normal, so every item is a train normal; the class falls back to the
// camera name when the sample has none, because a camera usually looks at one product.

const collectedFile = "samples.jsonl"

type collectedSample struct {
	File       string   `json:"file"`
	Camera     string   `json:"camera"`
	Class      string   `json:"class"`
	Seq        uint64   `json:"seq"`
	CapturedAt string   `json:"captured_at"`
	Score      *float64 `json:"score"`
}

func readCollected(root string) ([]Item, error) {
	path := filepath.Join(root, collectedFile)
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("collected: %s: missing: expected %s with one sample per line", path, collectedFile)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	var items []Item
	for line := 1; sc.Scan(); line++ {
		b := strings.TrimSpace(sc.Text())
		if b == "" {
			continue
		}
		where := fmt.Sprintf("collected: %s line %d", path, line)
		var s collectedSample
		if err := json.Unmarshal([]byte(b), &s); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		it := Item{Class: s.Class, Split: SplitTrain, Label: LabelNormal}
		if it.Class == "" {
			it.Class = s.Camera
		}
		if it.Class == "" {
			return nil, fmt.Errorf("%s: neither class nor camera set", where)
		}
		if it.Path, err = fileUnder(root, s.File, "file"); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		items = append(items, it)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("collected: %s: %w", path, err)
	}
	return items, nil
}

package caption

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/vlmdiff/edge/internal/fsutil"
)

// Cache maps (image content, model, prompt) to a caption, persisted as one JSON file. Keying on the image's
// SHA-256 rather than its path means a renamed or copied dataset reuses its captions, and an edited image or a
// new prompt or model is described again. Safe for concurrent use.
type Cache struct {
	path    string
	mu      sync.Mutex
	entries map[string]CacheEntry
}

// CacheEntry is one cached caption, with what it was made from, so the file can be read on its own.
type CacheEntry struct {
	Caption     string `json:"caption"`
	ImageSHA256 string `json:"image_sha256"`
	Model       string `json:"model"`
	Prompt      string `json:"prompt"`
}

type cacheFile struct {
	Version int                   `json:"version"`
	Entries map[string]CacheEntry `json:"entries"`
}

// CacheKey is the key of an image (hex SHA-256 of its bytes) described by model with prompt.
func CacheKey(imageSHA, model, prompt string) string {
	h := sha256.New()
	for _, s := range []string{imageSHA, model, prompt} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// OpenCache reads the cache at path; a missing file is an empty cache. A file that exists but cannot be read
// is an error rather than an empty cache, so hours of captions are never silently overwritten.
func OpenCache(path string) (*Cache, error) {
	c := &Cache{path: path, entries: map[string]CacheEntry{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("caption: reading cache: %w", err)
	}
	var f cacheFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("caption: cache %s is not a caption cache (%v); move it away to start a new one", path, err)
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("caption: cache %s: version %d, want 1", path, f.Version)
	}
	if f.Entries != nil {
		c.entries = f.Entries
	}
	return c, nil
}

// Get returns the cached caption for key.
func (c *Cache) Get(key string) (CacheEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	return e, ok
}

// Put stores a caption; Save writes it out.
func (c *Cache) Put(key string, e CacheEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries[key] = e
}

// Len is the number of cached captions.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// Save writes the cache through a temporary file and a rename, so a crash leaves the old or the new file.
func (c *Cache) Save() error {
	c.mu.Lock()
	b, err := json.MarshalIndent(cacheFile{Version: 1, Entries: c.entries}, "", " ")
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("caption: encoding cache: %w", err)
	}
	return writeAtomic(c.path, b)
}

func writeAtomic(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("caption: writing %s: %w", path, err)
	}
	if err := fsutil.WriteFileAtomic(path, b, 0o644); err != nil {
		return fmt.Errorf("caption: %w", err)
	}
	return nil
}

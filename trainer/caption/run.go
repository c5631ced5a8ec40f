package caption

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/vlmdiff/edge/trainer/dataset"
)

// Sources of a caption.
const (
	SourceVLM      = "vlm"      // described by the model (now or, with Cached, in an earlier run)
	SourceTemplate = "template" // the class-name template: no model was asked
)

// DefaultTemplate is the offline caption; {class} is the class name with underscores as spaces.
const DefaultTemplate = "a photo of a {class}"

// Caption is the outcome for one index item.
type Caption struct {
	Path    string `json:"path"`
	Class   string `json:"class"`
	Split   string `json:"split"`
	Label   int    `json:"label"`
	Caption string `json:"caption"`
	Source  string `json:"source,omitempty"`
	Cached  bool   `json:"cached,omitempty"`
	Model   string `json:"model,omitempty"`
	// Error says why the item has no caption; "" on success.
	Error string `json:"error,omitempty"`
}

// Options configure Run.
type Options struct {
	// Client asks the VLM; it may be nil only when Offline.
	Client *Client
	// Offline writes template captions for every item without contacting any server.
	Offline bool
	// FallbackTemplate gives an item whose VLM request failed the template caption (marked as such) instead of
	// leaving it without one.
	FallbackTemplate bool
	// Template is the offline caption pattern (DefaultTemplate when empty).
	Template string
	// Concurrency is the number of requests in flight (default 4).
	Concurrency int
	// Cache, when set, is consulted before asking and updated after; it is saved every SaveEvery new captions
	// (default 50) and at the end, also when Run fails or is cancelled.
	Cache     *Cache
	SaveEvery int
	Logger    *slog.Logger
}

// Template returns the template caption of a class.
func Template(pattern, class string) string {
	if pattern == "" {
		pattern = DefaultTemplate
	}
	return strings.ReplaceAll(pattern, "{class}", strings.ReplaceAll(class, "_", " "))
}

// Run captions every item, in parallel, and returns one Caption per item in the items' order. Items that
// could not be captioned carry their error and Run returns an error counting them; everything captioned is in
// the result and in the cache either way.
func Run(ctx context.Context, items []dataset.Item, opts Options) ([]Caption, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	out := make([]Caption, len(items))
	for i, it := range items {
		out[i] = Caption{Path: it.Path, Class: it.Class, Split: it.Split, Label: it.Label}
	}
	if opts.Offline {
		log.Info("captions: offline, writing class-name template captions", "template", Template(opts.Template, "{class}"), "items", len(items))
		for i := range out {
			out[i].Caption = Template(opts.Template, out[i].Class)
			out[i].Source = SourceTemplate
		}
		return out, nil
	}
	if opts.Client == nil {
		return nil, errors.New("caption: no client and not offline")
	}
	model, prompt := opts.Client.Model, opts.Client.prompt()
	workers := opts.Concurrency
	if workers <= 0 {
		workers = 4
	}
	saveEvery := opts.SaveEvery
	if saveEvery <= 0 {
		saveEvery = 50
	}

	var (
		mu       sync.Mutex
		fresh    int
		saveErr  error
		hits     int
		failures int
	)
	save := func() {
		if opts.Cache == nil {
			return
		}
		if err := opts.Cache.Save(); err != nil && saveErr == nil {
			saveErr = err
		}
	}
	work := func(i int) {
		c := &out[i]
		img, err := os.ReadFile(c.Path)
		if err != nil {
			c.Error = fmt.Sprintf("reading image: %v", err)
			return
		}
		sum := sha256.Sum256(img)
		key := CacheKey(hex.EncodeToString(sum[:]), model, prompt)
		if opts.Cache != nil {
			if e, ok := opts.Cache.Get(key); ok {
				c.Caption, c.Source, c.Cached, c.Model = e.Caption, SourceVLM, true, model
				mu.Lock()
				hits++
				mu.Unlock()
				return
			}
		}
		text, err := opts.Client.Describe(ctx, img, MIMEType(c.Path))
		if err != nil {
			c.Error = err.Error()
			if opts.FallbackTemplate && ctx.Err() == nil {
				c.Caption, c.Source = Template(opts.Template, c.Class), SourceTemplate
				log.Warn("captions: VLM failed, using the class-name template", "path", c.Path, "err", err)
			}
			return
		}
		c.Caption, c.Source, c.Model = text, SourceVLM, model
		if opts.Cache != nil {
			opts.Cache.Put(key, CacheEntry{Caption: text, ImageSHA256: hex.EncodeToString(sum[:]), Model: model, Prompt: prompt})
			mu.Lock()
			fresh++
			if fresh%saveEvery == 0 {
				save()
			}
			mu.Unlock()
		}
	}
	var g errgroup.Group
	g.SetLimit(workers)
	for i := range items {
		if err := ctx.Err(); err != nil {
			for j := i; j < len(items); j++ {
				out[j].Error = err.Error()
			}
			break
		}
		g.Go(func() error { work(i); return nil }) // waits for a free worker
	}
	_ = g.Wait() // work records its errors per item
	mu.Lock()
	save()
	mu.Unlock()

	var errs []string
	for _, c := range out {
		if c.Error != "" && c.Source == "" {
			failures++
			if len(errs) < 3 {
				errs = append(errs, c.Path+": "+c.Error)
			}
		}
	}
	log.Info("captions done", "items", len(items), "cached", hits, "asked", len(items)-hits-failures, "failed", failures)
	switch {
	case saveErr != nil:
		return out, saveErr
	case failures > 0:
		return out, fmt.Errorf("caption: %d of %d images have no caption (first: %s)", failures, len(items), strings.Join(errs, "; "))
	}
	return out, nil
}

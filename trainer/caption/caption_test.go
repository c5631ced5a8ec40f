package caption

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vlmdiff/edge/trainer/dataset"
)

// fakeVLM is an OpenAI-compatible chat-completions server on a real loopback socket. It checks every request
// the way a strict server would (path, auth, model, a text part with the prompt, an image part holding a PNG
// data URL that decodes) and answers with a caption derived from the image bytes, so a test can tell which
// image a caption belongs to. fail, when set, may answer instead (error injection).
type fakeVLM struct {
	t      *testing.T
	model  string
	prompt string
	key    string
	fail   func(n int64, w http.ResponseWriter, r *http.Request) bool

	requests atomic.Int64
	mu       sync.Mutex
	inflight int
	maxIn    int
	waitFor  int // when > 0, hold each request until this many were in flight together once
	cond     *sync.Cond
}

func newFake(t *testing.T) (*fakeVLM, *httptest.Server) {
	f := &fakeVLM{t: t, model: "OpenGVLab/InternVL2-8B", prompt: DefaultPrompt}
	f.cond = sync.NewCond(&f.mu)
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv
}

func expectedCaption(img []byte) string {
	s := sha256.Sum256(img)
	return "A grey test part, id " + hex.EncodeToString(s[:4]) + "."
}

func (f *fakeVLM) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := f.requests.Add(1)
	// Read the body first: the server notices a client that gave up (and cancels r.Context()) only once the
	// body has been consumed.
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	f.mu.Lock()
	f.inflight++
	f.maxIn = max(f.maxIn, f.inflight)
	f.cond.Broadcast()
	if f.waitFor > 0 {
		deadline := time.AfterFunc(5*time.Second, func() { f.mu.Lock(); f.cond.Broadcast(); f.mu.Unlock() })
		start := time.Now()
		for f.maxIn < f.waitFor && time.Since(start) < 5*time.Second {
			f.cond.Wait()
		}
		deadline.Stop()
	}
	f.mu.Unlock()
	defer func() { f.mu.Lock(); f.inflight--; f.mu.Unlock() }()

	if f.fail != nil && f.fail(n, w, r) {
		return
	}
	bad := func(format string, a ...any) {
		msg := fmt.Sprintf(format, a...)
		f.t.Errorf("fake VLM: bad request: %s", msg)
		http.Error(w, `{"error":{"message":"`+msg+`"}}`, http.StatusBadRequest)
	}
	if r.Method != http.MethodPost || r.URL.Path != "/v1/chat/completions" {
		bad("%s %s", r.Method, r.URL.Path)
		return
	}
	if f.key != "" && r.Header.Get("Authorization") != "Bearer "+f.key {
		http.Error(w, `{"error":"unauthorized"}`, http.StatusUnauthorized)
		return
	}
	var req struct {
		Model    string `json:"model"`
		Messages []struct {
			Role    string `json:"role"`
			Content []struct {
				Type     string `json:"type"`
				Text     string `json:"text"`
				ImageURL struct {
					URL string `json:"url"`
				} `json:"image_url"`
			} `json:"content"`
		} `json:"messages"`
		MaxTokens int `json:"max_tokens"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		bad("json: %v", err)
		return
	}
	if req.Model != f.model {
		bad("model %q", req.Model)
		return
	}
	if len(req.Messages) != 1 || req.Messages[0].Role != "user" || len(req.Messages[0].Content) != 2 {
		bad("messages %s", body[:min(len(body), 200)])
		return
	}
	text, img := req.Messages[0].Content[0], req.Messages[0].Content[1]
	if text.Type != "text" || text.Text != f.prompt {
		bad("text part %+v", text)
		return
	}
	const prefix = "data:image/png;base64,"
	if img.Type != "image_url" || !strings.HasPrefix(img.ImageURL.URL, prefix) {
		bad("image part type %q url %.40q", img.Type, img.ImageURL.URL)
		return
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(img.ImageURL.URL, prefix))
	if err != nil {
		bad("base64: %v", err)
		return
	}
	if _, err := png.Decode(bytes.NewReader(raw)); err != nil {
		bad("png: %v", err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"id": fmt.Sprintf("chatcmpl-%d", n), "object": "chat.completion", "model": f.model,
		"choices": []any{map[string]any{"index": 0, "finish_reason": "stop",
			"message": map[string]any{"role": "assistant", "content": " " + expectedCaption(raw) + "\n"}}},
	})
}

// tree writes a small MVTec-style dataset of distinct real PNGs and reads it with the dataset package.
func tree(t *testing.T, train, test int) (string, []dataset.Item) {
	t.Helper()
	root := t.TempDir()
	write := func(rel string, v int) {
		p := filepath.Join(root, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		img := image.NewGray(image.Rect(0, 0, 16, 16))
		for i := range img.Pix {
			img.Pix[i] = uint8(v*7 + i%5)
		}
		var b bytes.Buffer
		png.Encode(&b, img)
		if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < train; i++ {
		write(fmt.Sprintf("metal_plate/train/good/%03d.png", i), i)
	}
	for i := 0; i < test; i++ {
		write(fmt.Sprintf("metal_plate/test/good/%03d.png", i), 100+i)
	}
	items, err := dataset.Open(root, "mvtec")
	if err != nil {
		t.Fatal(err)
	}
	return root, items
}

// hang blocks until the client gives up on r (bounded, so a broken client cannot hang the test binary).
func hang(r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-time.After(20 * time.Second):
	}
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func client(srv *httptest.Server, f *fakeVLM) *Client {
	return &Client{Endpoint: srv.URL, Model: f.model, APIKey: f.key, Timeout: 5 * time.Second,
		Backoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, Logger: quiet()}
}

func TestCaptionAndRerun(t *testing.T) {
	f, srv := newFake(t)
	f.key = "sk-test"
	root, items := tree(t, 4, 2)
	cachePath := filepath.Join(t.TempDir(), "cache.json")
	cache, err := OpenCache(cachePath)
	if err != nil {
		t.Fatal(err)
	}
	caps, err := Run(context.Background(), items, Options{Client: client(srv, f), Concurrency: 3, Cache: cache, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if got := f.requests.Load(); got != int64(len(items)) {
		t.Errorf("%d requests for %d images", got, len(items))
	}
	for i, c := range caps {
		img, _ := os.ReadFile(items[i].Path)
		if c.Path != items[i].Path || c.Caption != expectedCaption(img) || c.Source != SourceVLM || c.Cached {
			t.Errorf("item %d: %+v", i, c)
		}
	}

	out := t.TempDir()
	if err := WriteOutputs(out, caps, f.model, DefaultPrompt, SeedLayout{Dataset: "mvtec"}); err != nil {
		t.Fatal(err)
	}
	flat, err := ReadCaptions(filepath.Join(out, CaptionsFile))
	if err != nil {
		t.Fatal(err)
	}
	if len(flat) != len(items) || flat[items[0].Path] != caps[0].Caption {
		t.Errorf("captions.json: %v", flat)
	}
	sdir := filepath.Join(out, "mvtec_captions_OpenGVLab-InternVL2-8B_pd")
	var trainCaps, trainNames, testNames []string
	for p, v := range map[string]*[]string{
		"train_captions_mvtec_OpenGVLab-InternVL2-8B.json": &trainCaps,
		"train_labels_mvtec_OpenGVLab-InternVL2-8B.json":   &trainNames,
		"test_labels_mvtec_OpenGVLab-InternVL2-8B.json":    &testNames,
	} {
		b, err := os.ReadFile(filepath.Join(sdir, p))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatal(err)
		}
	}
	// The seed's names are relative to the data root ("bottle/train/good/000.png"), aligned with the captions.
	wantNames := []string{"metal_plate/train/good/000.png", "metal_plate/train/good/001.png", "metal_plate/train/good/002.png", "metal_plate/train/good/003.png"}
	if !reflect.DeepEqual(trainNames, wantNames) || len(testNames) != 2 || trainCaps[1] != caps[1].Caption {
		t.Errorf("seed layout: names %v test %v caps %v", trainNames, testNames, trainCaps)
	}
	_ = root

	// A rerun with the saved cache sends nothing.
	cache2, err := OpenCache(cachePath)
	if err != nil {
		t.Fatal(err)
	}
	if cache2.Len() != len(items) {
		t.Fatalf("cache holds %d entries, want %d", cache2.Len(), len(items))
	}
	before := f.requests.Load()
	caps2, err := Run(context.Background(), items, Options{Client: client(srv, f), Cache: cache2, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if n := f.requests.Load() - before; n != 0 {
		t.Errorf("rerun sent %d requests, want 0", n)
	}
	for i := range caps2 {
		if !caps2[i].Cached || caps2[i].Caption != caps[i].Caption {
			t.Errorf("rerun item %d: %+v", i, caps2[i])
		}
	}
	// Another prompt is another key: everything is asked again.
	f.prompt = "Describe the part."
	c := client(srv, f)
	c.Prompt = f.prompt
	before = f.requests.Load()
	if _, err := Run(context.Background(), items, Options{Client: c, Cache: cache2, Logger: quiet()}); err != nil {
		t.Fatal(err)
	}
	if n := f.requests.Load() - before; n != int64(len(items)) {
		t.Errorf("new prompt sent %d requests, want %d", n, len(items))
	}
}

func TestRetries(t *testing.T) {
	_, items := tree(t, 1, 1)
	img, _ := os.ReadFile(items[0].Path)
	tests := []struct {
		name      string
		fail      func(n int64, w http.ResponseWriter, r *http.Request) bool
		retries   int
		timeout   time.Duration
		wantErr   string // "" for success
		wantTries int64
	}{
		{"503 then ok", func(n int64, w http.ResponseWriter, r *http.Request) bool {
			if n <= 2 {
				http.Error(w, "loading model", http.StatusServiceUnavailable)
				return true
			}
			return false
		}, 4, 0, "", 3},
		{"429 then ok", func(n int64, w http.ResponseWriter, r *http.Request) bool {
			if n == 1 {
				http.Error(w, "slow down", http.StatusTooManyRequests)
				return true
			}
			return false
		}, 4, 0, "", 2},
		{"503 forever", func(n int64, w http.ResponseWriter, r *http.Request) bool {
			http.Error(w, "down", http.StatusBadGateway)
			return true
		}, 2, 0, "after 3 tries: server answered 502", 3},
		{"400 is not retried", func(n int64, w http.ResponseWriter, r *http.Request) bool {
			http.Error(w, `{"error":"image too large"}`, http.StatusBadRequest)
			return true
		}, 4, 0, "server answered 400", 1},
		{"timeout then ok", func(n int64, w http.ResponseWriter, r *http.Request) bool {
			if n == 1 {
				hang(r) // until the client gives up
				return true
			}
			return false
		}, 4, 200 * time.Millisecond, "", 2},
		{"timeout forever", func(n int64, w http.ResponseWriter, r *http.Request) bool {
			hang(r)
			return true
		}, 1, 100 * time.Millisecond, "after 2 tries", 2},
		{"not a completion", func(n int64, w http.ResponseWriter, r *http.Request) bool {
			w.Write([]byte(`{"choices":[]}`))
			return true
		}, 0, 0, "no choices", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, srv := newFake(t)
			f.fail = tc.fail
			c := client(srv, f)
			c.Retries = tc.retries
			if tc.retries == 0 {
				c.Retries = -1
			}
			if tc.timeout > 0 {
				c.Timeout = tc.timeout
			}
			got, err := c.Describe(context.Background(), img, "image/png")
			if tc.wantErr == "" {
				if err != nil || got != expectedCaption(img) {
					t.Errorf("got %q, %v", got, err)
				}
			} else if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %v, want %q", err, tc.wantErr)
			}
			if n := f.requests.Load(); n != tc.wantTries {
				t.Errorf("%d requests, want %d", n, tc.wantTries)
			}
		})
	}
}

func TestCancelStopsRetries(t *testing.T) {
	f, srv := newFake(t)
	ctx, cancel := context.WithCancel(context.Background())
	f.fail = func(n int64, w http.ResponseWriter, r *http.Request) bool {
		cancel()
		http.Error(w, "down", http.StatusServiceUnavailable)
		return true
	}
	_, items := tree(t, 1, 1)
	img, _ := os.ReadFile(items[0].Path)
	c := client(srv, f)
	c.Backoff = time.Hour // a retry would block the test: cancellation must end the wait
	if _, err := c.Describe(ctx, img, "image/png"); err == nil || !strings.Contains(err.Error(), "canceled") {
		t.Errorf("error %v", err)
	}
	if n := f.requests.Load(); n != 1 {
		t.Errorf("%d requests after cancel, want 1", n)
	}
}

func TestConcurrencyLimit(t *testing.T) {
	f, srv := newFake(t)
	f.waitFor = 3
	_, items := tree(t, 8, 1)
	caps, err := Run(context.Background(), items, Options{Client: client(srv, f), Concurrency: 3, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if len(caps) != 9 {
		t.Fatalf("%d captions", len(caps))
	}
	if f.maxIn != 3 {
		t.Errorf("at most %d requests were in flight together, want exactly 3", f.maxIn)
	}
}

func TestPartialFailureKeepsTheRest(t *testing.T) {
	f, srv := newFake(t)
	_, items := tree(t, 3, 1)
	bad, _ := os.ReadFile(items[1].Path)
	f.fail = func(n int64, w http.ResponseWriter, r *http.Request) bool {
		b, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(b))
		if strings.Contains(string(b), base64.StdEncoding.EncodeToString(bad)) {
			http.Error(w, "unsupported image", http.StatusUnprocessableEntity)
			return true
		}
		return false
	}
	cachePath := filepath.Join(t.TempDir(), "c.json")
	cache, _ := OpenCache(cachePath)
	caps, err := Run(context.Background(), items, Options{Client: client(srv, f), Cache: cache, Logger: quiet()})
	if err == nil || !strings.Contains(err.Error(), "1 of 4 images have no caption") {
		t.Fatalf("error %v", err)
	}
	if caps[1].Error == "" || caps[0].Caption == "" || caps[2].Caption == "" {
		t.Errorf("captions %+v", caps)
	}
	reopened, err := OpenCache(cachePath)
	if err != nil || reopened.Len() != 3 {
		t.Errorf("cache after a partial run: %v entries, %v", reopened.Len(), err)
	}
	out := t.TempDir()
	if err := WriteOutputs(out, caps, f.model, "", SeedLayout{}); err == nil || !strings.Contains(err.Error(), "seed caption layout not written") {
		t.Errorf("WriteOutputs: %v", err)
	}
	flat, err := ReadCaptions(filepath.Join(out, CaptionsFile))
	if err != nil || len(flat) != 3 {
		t.Errorf("captions.json %v %v", flat, err)
	}

	// With the template fallback the failed item gets a marked template caption.
	caps, err = Run(context.Background(), items, Options{Client: client(srv, f), FallbackTemplate: true, Logger: quiet()})
	if err != nil || caps[1].Source != SourceTemplate || caps[1].Caption != "a photo of a metal plate" {
		t.Errorf("fallback: %+v %v", caps[1], err)
	}
}

func TestOffline(t *testing.T) {
	_, items := tree(t, 2, 1)
	caps, err := Run(context.Background(), items, Options{Offline: true, Template: "a close-up photo of a {class}", Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range caps {
		if c.Caption != "a close-up photo of a metal plate" || c.Source != SourceTemplate {
			t.Errorf("%+v", c)
		}
	}
	out := t.TempDir()
	if err := WriteOutputs(out, caps, "", "", SeedLayout{Dataset: "mvtec"}); err != nil {
		t.Fatal(err)
	}
	var detail []Caption
	b, _ := os.ReadFile(filepath.Join(out, DetailFile))
	if err := json.Unmarshal(b, &detail); err != nil || len(detail) != 3 || detail[0].Source != "template" {
		t.Errorf("detail %s", b)
	}
	if _, err := os.Stat(filepath.Join(out, "mvtec_captions_template_pd", "test_captions_mvtec_template.json")); err != nil {
		t.Error(err)
	}
}

func TestCacheFileErrors(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.json")
	os.WriteFile(p, []byte("not json"), 0o644)
	if _, err := OpenCache(p); err == nil || !strings.Contains(err.Error(), "not a caption cache") {
		t.Errorf("corrupt cache: %v", err)
	}
	os.WriteFile(p, []byte(`{"version":7}`), 0o644)
	if _, err := OpenCache(p); err == nil || !strings.Contains(err.Error(), "version 7") {
		t.Errorf("version: %v", err)
	}
}

func TestEndpointForms(t *testing.T) {
	for in, want := range map[string]string{
		"http://h:23333":                        "http://h:23333/v1/chat/completions",
		"http://h:23333/":                       "http://h:23333/v1/chat/completions",
		"http://h:11434/v1":                     "http://h:11434/v1/chat/completions",
		"https://api.x/v1/chat/completions":     "https://api.x/v1/chat/completions",
		"https://api.x/openai/chat/completions": "https://api.x/openai/chat/completions",
	} {
		if got := (&Client{Endpoint: in}).url(); got != want {
			t.Errorf("%s -> %s, want %s", in, got, want)
		}
	}
}

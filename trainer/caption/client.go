// Package caption describes dataset images with a vision-language model, the VLMDiff training condition
// (docs/algorithm.md §2.5). It speaks the OpenAI-compatible /v1/chat/completions API with an image content part, which
// is what LMDeploy, vLLM, Ollama and SGLang serve, so any of them (or a hosted API) can caption without
// Python on the training machine. Captions are cached by image hash, model and prompt, so a rerun after a
// crash, or after adding images, asks the server only about what it has not described yet.
package caption

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// DefaultPrompt is the seed's "pd" prompt (captioner_lmdeploy_deepseekvl.py).
const DefaultPrompt = "Describe the visual features of image in detail with a focus on the main object, with around 60 words and maybe 4 or 5 sentences."

// Client calls one chat-completions endpoint. The zero values of the tuning fields pick the defaults below.
type Client struct {
	// Endpoint is the server's base URL (http://host:23333), its /v1, or the full .../chat/completions URL.
	Endpoint string
	Model    string
	// APIKey, when set, goes in "Authorization: Bearer ..." (vLLM --api-key, LMDeploy --api-keys, hosted APIs).
	APIKey string
	Prompt string // DefaultPrompt when empty
	// Timeout bounds one request (default 120 s: a 1B-8B VLM writes ~60 words in seconds, but a cold server
	// loads weights on the first request).
	Timeout time.Duration
	// Retries is how many times a failed request is repeated after 429, 5xx, timeouts and connection errors
	// (default 4; negative means none). Other 4xx mean the request itself is wrong and are not repeated.
	Retries int
	// Backoff is the first wait between tries (default 1 s), doubled each time up to MaxBackoff (default 30 s).
	// A Retry-After header in seconds overrides it, capped at MaxBackoff.
	Backoff    time.Duration
	MaxBackoff time.Duration
	MaxTokens  int // default 256: ~60 words with room; CLIP reads only 77 tokens anyway
	HTTP       *http.Client
	Logger     *slog.Logger
}

// StatusError is a non-2xx answer from the server.
type StatusError struct {
	Status int
	Body   string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("server answered %d: %s", e.Status, e.Body)
}

// retryable reports whether a failed try may succeed if repeated.
func retryable(parent context.Context, err error) bool {
	if parent.Err() != nil {
		return false
	}
	var se *StatusError
	if errors.As(err, &se) {
		return se.Status == http.StatusTooManyRequests || se.Status >= 500
	}
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, io.EOF)
}

func (c *Client) url() string {
	e := strings.TrimRight(c.Endpoint, "/")
	switch {
	case strings.HasSuffix(e, "/chat/completions"):
		return e
	case strings.HasSuffix(e, "/v1"):
		return e + "/chat/completions"
	}
	return e + "/v1/chat/completions"
}

func (c *Client) prompt() string {
	if c.Prompt == "" {
		return DefaultPrompt
	}
	return c.Prompt
}

func (c *Client) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.Default()
	}
	return c.Logger
}

// MIMEType returns the media type sent for an image file, by its extension.
func MIMEType(path string) string {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".jpg", ".jpeg":
		return "image/jpeg"
	case ".bmp":
		return "image/bmp"
	case ".tif", ".tiff":
		return "image/tiff"
	case ".webp":
		return "image/webp"
	}
	return "image/png"
}

type contentPart struct {
	Type     string    `json:"type"`
	Text     string    `json:"text,omitempty"`
	ImageURL *imageURL `json:"image_url,omitempty"`
}

type imageURL struct {
	URL string `json:"url"`
}

type chatMessage struct {
	Role    string        `json:"role"`
	Content []contentPart `json:"content"`
}

type chatRequest struct {
	Model       string        `json:"model"`
	Messages    []chatMessage `json:"messages"`
	MaxTokens   int           `json:"max_tokens"`
	Temperature float64       `json:"temperature"`
}

type chatResponse struct {
	Choices []struct {
		Message struct {
			Content json.RawMessage `json:"content"`
		} `json:"message"`
	} `json:"choices"`
}

// Describe returns the model's caption of one image (its encoded bytes and media type), retrying as the
// Client's fields say. Greedy decoding (temperature 0), as the seed's InternVL captioner.
func (c *Client) Describe(ctx context.Context, img []byte, mime string) (string, error) {
	body, err := json.Marshal(chatRequest{
		Model: c.Model,
		Messages: []chatMessage{{Role: "user", Content: []contentPart{
			{Type: "text", Text: c.prompt()},
			{Type: "image_url", ImageURL: &imageURL{URL: "data:" + mime + ";base64," + base64.StdEncoding.EncodeToString(img)}},
		}}},
		MaxTokens: cmp(c.MaxTokens, 256),
	})
	if err != nil {
		return "", fmt.Errorf("caption: encoding request: %w", err)
	}
	retries := c.Retries
	if retries == 0 {
		retries = 4
	}
	if retries < 0 {
		retries = 0
	}
	wait := cmpDur(c.Backoff, time.Second)
	maxWait := cmpDur(c.MaxBackoff, 30*time.Second)
	for try := 0; ; try++ {
		text, retryAfter, err := c.once(ctx, body)
		if err == nil {
			return text, nil
		}
		if ctx.Err() != nil {
			return "", fmt.Errorf("caption: %s: %w (last error: %v)", c.url(), ctx.Err(), err)
		}
		if try >= retries || !retryable(ctx, err) {
			if try > 0 {
				return "", fmt.Errorf("caption: %s: after %d tries: %w", c.url(), try+1, err)
			}
			return "", fmt.Errorf("caption: %s: %w", c.url(), err)
		}
		d := wait
		if retryAfter > 0 {
			d = retryAfter
		}
		d = min(d, maxWait)
		c.logger().Warn("caption request failed, retrying", "endpoint", c.url(), "try", try+1, "wait", d, "err", err)
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("caption: %s: %w (last error: %v)", c.url(), ctx.Err(), err)
		case <-time.After(d):
		}
		wait = min(2*wait, maxWait)
	}
}

// once makes one request; it returns the server's Retry-After, if any, with a failure.
func (c *Client) once(ctx context.Context, body []byte) (string, time.Duration, error) {
	rctx, cancel := context.WithTimeout(ctx, cmpDur(c.Timeout, 120*time.Second))
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, c.url(), bytes.NewReader(body))
	if err != nil {
		return "", 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	if c.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.APIKey)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return "", 0, fmt.Errorf("reading answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var ra time.Duration
		if s, err := strconv.Atoi(strings.TrimSpace(resp.Header.Get("Retry-After"))); err == nil && s > 0 {
			ra = time.Duration(s) * time.Second
		}
		msg := strings.TrimSpace(string(b))
		if len(msg) > 300 {
			msg = msg[:300] + "..."
		}
		return "", ra, &StatusError{Status: resp.StatusCode, Body: msg}
	}
	var cr chatResponse
	if err := json.Unmarshal(b, &cr); err != nil {
		return "", 0, fmt.Errorf("answer is not a chat completion: %w", err)
	}
	if len(cr.Choices) == 0 {
		return "", 0, errors.New("answer has no choices")
	}
	text, err := contentText(cr.Choices[0].Message.Content)
	if err != nil {
		return "", 0, err
	}
	if text == "" {
		return "", 0, errors.New("answer has an empty caption")
	}
	return text, 0, nil
}

// contentText reads message.content, a string in the OpenAI API, or a list of text parts in some servers.
func contentText(raw json.RawMessage) (string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return strings.TrimSpace(s), nil
	}
	var parts []contentPart
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", fmt.Errorf("answer content is neither text nor text parts: %s", raw)
	}
	var b strings.Builder
	for _, p := range parts {
		if p.Type == "text" {
			b.WriteString(p.Text)
		}
	}
	return strings.TrimSpace(b.String()), nil
}

func cmp(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}

func cmpDur(v, def time.Duration) time.Duration {
	if v > 0 {
		return v
	}
	return def
}

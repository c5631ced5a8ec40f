package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/vlmdiff/edge/agent/store"
)

func init() {
	Register(Command{Name: "samples", Summary: "export the normal samples the daemon collected as a training dataset", Run: runSamples})
}

const samplesSynopsis = "(--store FILE | --api URL [--token T]) --out DIR [--delete]"

// runSamples is `vlmdiff samples export`: it writes the collected-samples layout (samples.jsonl +
// images/<camera>/<seq>.png) that `vlmdiff train` reads with data.layout collected. From the store file
// (--store) when no daemon holds it, or through the running daemon's HTTP API (--api), so retraining does
// not stop the line.
func runSamples(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "export" {
		fmt.Fprintln(stderr, "Usage: vlmdiff samples export "+samplesSynopsis)
		return ErrUsage
	}
	fs := NewFlagSet("samples export", samplesSynopsis, stderr)
	path := fs.String("store", "/var/lib/vlmdiff/vlmdiff.db", "the daemon's store file (store.path), when the daemon is stopped")
	api := fs.String("api", "", "the running daemon's HTTP API (http.listen), e.g. http://127.0.0.1:8080: export while it runs")
	token := fs.String("token", os.Getenv("VLMDIFF_API_TOKEN"), "with --api: a bearer token from http.auth.tokens (default $VLMDIFF_API_TOKEN)")
	out := fs.String("out", "", "dataset directory to write (required)")
	del := fs.Bool("delete", false, "delete the exported samples from the store after a successful export")
	if err := Parse(fs, args[1:]); err != nil {
		return err
	}
	if *out == "" || fs.NArg() != 0 {
		fs.Usage()
		return ErrUsage
	}
	var n int
	var err error
	if *api != "" {
		n, err = exportFromAPI(ctx, strings.TrimRight(*api, "/"), *token, *out, *del)
	} else {
		n, err = exportFromStore(*path, *out, *del)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "exported %d samples to %s (train with data.layout: collected, data.root: %s)\n", n, *out, *out)
	return nil
}

func exportFromStore(path, out string, del bool) (int, error) {
	if _, err := os.Stat(path); err != nil {
		return 0, fmt.Errorf("store %s: %w", path, err)
	}
	st, err := store.Open(store.Options{Path: path, OpenTimeout: 2 * time.Second})
	if errors.Is(err, store.ErrLocked) {
		return 0, fmt.Errorf("%w\nthe daemon is running and holds the store: export through its HTTP API instead, "+
			"e.g. vlmdiff samples export --api http://127.0.0.1:8080 --out %s (the address is the daemon's http.listen)", err, out)
	}
	if err != nil {
		return 0, err
	}
	defer st.Close()
	n, err := st.ExportSamples(out)
	if err != nil {
		return n, err
	}
	if del && n > 0 {
		if _, err := st.DeleteSamples(""); err != nil {
			return n, fmt.Errorf("exported %d samples to %s but could not delete them from the store: %w", n, out, err)
		}
	}
	return n, nil
}

// exportFromAPI downloads GET /api/samples/export into out and, with del, deletes exactly the samples it
// got (ones collected meanwhile stay).
func exportFromAPI(ctx context.Context, api, token, out string, del bool) (int, error) {
	resp, err := apiRequest(ctx, http.MethodGet, api+"/api/samples/export", token, nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	lines, err := store.ExtractSamplesTar(resp.Body, out)
	if err != nil {
		return len(lines), fmt.Errorf("export from %s: %w", api, err)
	}
	if !del || len(lines) == 0 {
		return len(lines), nil
	}
	refs := make([]store.SampleRef, len(lines))
	for i, l := range lines {
		refs[i] = store.SampleRef{Camera: l.Camera, Seq: l.Seq}
	}
	body, _ := json.Marshal(map[string]any{"samples": refs})
	dresp, err := apiRequest(ctx, http.MethodPost, api+"/api/samples/delete", token, body)
	if err != nil {
		return len(lines), fmt.Errorf("exported %d samples to %s but could not delete them: %w", len(lines), out, err)
	}
	dresp.Body.Close()
	return len(lines), nil
}

// apiRequest sends one request and turns a non-2xx answer into an error carrying the daemon's message.
func apiRequest(ctx context.Context, method, url, token string, body []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, url, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, url, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	var e struct{ Error string }
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if json.Unmarshal(msg, &e) == nil && e.Error != "" {
		msg = []byte(e.Error)
	}
	hint := ""
	if resp.StatusCode == http.StatusUnauthorized {
		hint = " (the daemon has http.auth on: pass --token or set VLMDIFF_API_TOKEN)"
	}
	return nil, fmt.Errorf("%s %s: %s: %s%s", method, url, resp.Status, strings.TrimSpace(string(msg)), hint)
}

// Package dashboard is the daemon's operator page: one HTML page, a stylesheet and a script, embedded in the
// binary (nothing is fetched from elsewhere at run time: no CDN, no web fonts). The page reads the daemon's
// JSON API (docs/operations.md, "HTTP API") by polling: /api/stats for cameras, model and health,
// /api/history for the score charts, /api/events?verdict=NG for the NG list, and each camera's
// frame.jpg/heatmap.png whenever its last_seq moves. When the API does not answer it shows a
// "disconnected" badge, keeps the last data on screen and retries with backoff.
//
// Mount it on the daemon's HTTP server with (*httpapi.Server).Handle("/", dashboard.Handler()); the API's own
// routes are more specific and keep precedence.
package dashboard

import (
	"embed"
	"io/fs"
	"net/http"
	"path"
	"strings"
)

//go:embed assets
var assets embed.FS

// csp allows only this origin: scripts, styles and images come from the binary or the API.
const csp = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; " +
	"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"

// Handler serves the dashboard: "/" is the page, "/ui/<file>" its assets; any other path is 404.
func Handler() http.Handler {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embed directive guarantees the directory
	}
	files := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		p := path.Clean("/" + r.URL.Path)
		var name string
		switch {
		case p == "/" || p == "/index.html":
			name = "index.html"
		case strings.HasPrefix(p, "/ui/") && p != "/ui/index.html":
			name = strings.TrimPrefix(p, "/ui/")
		default:
			http.NotFound(w, r)
			return
		}
		if _, err := fs.Stat(sub, name); err != nil {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		// Assets are small and change with the binary: revalidate every time (the embed FS has no mod times).
		h.Set("Cache-Control", "no-cache")
		if name == "index.html" {
			// FileServer redirects /index.html to ./; serve the page directly instead.
			data, err := fs.ReadFile(sub, name)
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			h.Set("Content-Type", "text/html; charset=utf-8")
			if r.Method == http.MethodHead {
				return
			}
			w.Write(data)
			return
		}
		r2 := r.Clone(r.Context())
		r2.URL.Path = "/" + name
		files.ServeHTTP(w, r2)
	})
}

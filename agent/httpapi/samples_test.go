package httpapi

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestSamplesDeleteLocalWithoutAuth: without http.auth the samples delete is let through from loopback
// clients only.
func TestSamplesDeleteLocalWithoutAuth(t *testing.T) {
	s := &Server{}
	h := s.machineOrLocal(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	for _, tc := range []struct {
		remote string
		code   int
	}{
		{"127.0.0.1:5000", 204}, {"[::1]:5000", 204}, {"127.0.0.2:5000", 204},
		{"10.0.0.5:5000", 403}, {"192.168.1.20:5000", 403}, {"[fe80::1]:5000", 403}, {"garbage", 403},
	} {
		req := httptest.NewRequest("POST", "/api/samples/delete", nil)
		req.RemoteAddr = tc.remote
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != tc.code {
			t.Errorf("from %s: %d, want %d", tc.remote, rec.Code, tc.code)
		}
	}
}

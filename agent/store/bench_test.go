package store

import (
	"fmt"
	"path/filepath"
	"testing"
)

// BenchmarkCommit measures one result commit (history + one outbox message, fsynced) and one Peek+Ack, the
// per-frame store cost of the daemon. Run: go test -run '^$' -bench . ./agent/store/
func BenchmarkCommit(b *testing.B) {
	for _, payload := range []int{512, 64 << 10} {
		b.Run(fmt.Sprintf("payload=%dB", payload), func(b *testing.B) {
			s, err := Open(Options{Path: filepath.Join(b.TempDir(), "db")})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			m := Message{Topic: "p/c/result", Payload: make([]byte, payload), QoS: 1, Kind: MsgResult, Verdict: "OK"}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := s.Commit(rec("c", uint64(i+1), "OK"), []Message{m}, CommitOptions{}); err != nil {
					b.Fatal(err)
				}
				ms, err := s.Peek(1)
				if err != nil || len(ms) != 1 {
					b.Fatal(err)
				}
				if err := s.Ack(ms[0].ID); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

package store

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// payloads lists the outbox's payloads from the head.
func payloads(t *testing.T, s *Store) string {
	t.Helper()
	ms, err := s.Peek(1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range ms {
		out = append(out, string(m.Payload))
	}
	return strings.Join(out, ",")
}

// indexed counts the outbox's priority index entries, which must match its messages one to one (an entry
// left behind by an ack would later count as a dropped message).
func indexed(t *testing.T, s *Store) uint64 {
	t.Helper()
	var n uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bOutboxPri).ForEachBucket(func(k []byte) error {
			n += uint64(tx.Bucket(bOutboxPri).Bucket(k).Stats().KeyN)
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestCommitMany: several results and acknowledgements in one transaction; each result keeps Commit's
// outcome (one refused costs the others nothing), the outbox keeps the given order, and when the shared
// transaction fails on one result the others are still committed, each in its own.
func TestCommitMany(t *testing.T) {
	R := MsgResult
	withOrigin := func(r *Record, o string) *Record { r.Origin = o; return r }
	tests := []struct {
		name     string
		bound    int64 // OutboxMaxBytes
		items    []Pending
		wantErrs []error  // per item: nil or the sentinel
		wantSeqs []uint64 // committed seqs of camera a, newest first
		wantOut  string   // outbox payloads after the acks
	}{
		{"all committed in order, acks applied", 0, []Pending{
			{Rec: rec("a", 1, "OK"), Msgs: []Message{msg(R, "OK", 1)}},
			{Rec: rec("a", 2, "NG"), Msgs: []Message{msg(R, "NG", 2), msg(MsgHeatmap, "NG", 2)}},
			{Rec: rec("a", 3, "OK"), Msgs: []Message{msg(R, "OK", 3)}},
		}, []error{nil, nil, nil}, []uint64{3, 2, 1}, "result-OK-1,result-NG-2,heatmap-NG-2,result-OK-3"},
		{"refused ones cost the others nothing", 0, []Pending{
			{Rec: withOrigin(rec("a", 1, "OK"), "f1.png"), Msgs: []Message{msg(R, "OK", 1)}},
			{Rec: rec("bad name", 2, "OK"), Msgs: []Message{msg(R, "OK", 2)}},
			{Rec: withOrigin(rec("a", 3, "OK"), "f1.png"), Msgs: []Message{msg(R, "OK", 3)}}, // same file again
			{Rec: rec("a", 4, "maybe")},
			{Rec: rec("a", 5, "OK"), Msgs: []Message{msg(R, "OK", 5)}},
		}, []error{nil, ErrInvalid, ErrAlreadyProcessed, ErrInvalid, nil}, []uint64{5, 1}, "result-OK-1,result-OK-5"},
		{"a failed transaction: each on its own", 4096, []Pending{
			{Rec: rec("a", 1, "OK"), Msgs: []Message{msg(R, "OK", 1)}},
			{Rec: rec("a", 2, "OK"), Msgs: []Message{{Topic: "t", Payload: bytes.Repeat([]byte("x"), 5000), Kind: R}}},
			{Rec: rec("a", 3, "NG"), Msgs: []Message{msg(R, "NG", 3)}},
		}, []error{nil, ErrTooLarge, nil}, []uint64{3, 1}, "result-OK-1,result-NG-3"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t, Options{OutboxMaxBytes: tc.bound})
			// Two messages already delivered, acknowledged with the results.
			if err := s.Enqueue(msg(MsgOther, "", 100), msg(MsgOther, "", 101)); err != nil {
				t.Fatal(err)
			}
			head, _ := s.Peek(2)
			errs := s.CommitMany(tc.items, []uint64{head[0].ID, head[1].ID})
			for i, want := range tc.wantErrs {
				if (want == nil) != (errs[i] == nil) || (want != nil && !errors.Is(errs[i], want)) {
					t.Errorf("item %d: error %v, want %v", i, errs[i], want)
				}
				if errs[i] == nil && (tc.items[i].Rec.ID == 0 || tc.items[i].Rec.StoredAt.IsZero()) {
					t.Errorf("item %d: committed without id/stored_at: %+v", i, tc.items[i].Rec)
				}
			}
			got, err := s.Latest("a", 10)
			if err != nil {
				t.Fatal(err)
			}
			var seqs []uint64
			for _, r := range got {
				seqs = append(seqs, r.Seq)
			}
			if fmt.Sprint(seqs) != fmt.Sprint(tc.wantSeqs) {
				t.Errorf("camera a history %v, want %v", seqs, tc.wantSeqs)
			}
			if p := payloads(t, s); p != tc.wantOut {
				t.Errorf("outbox %q, want %q", p, tc.wantOut)
			}
			if st, _ := s.OutboxStats(); st.Messages != uint64(strings.Count(tc.wantOut, ",")+1) || indexed(t, s) != st.Messages {
				t.Errorf("outbox count %d (%d indexed), want %d", st.Messages, indexed(t, s), strings.Count(tc.wantOut, ",")+1)
			}
		})
	}
}

// TestCommitterGroups: a burst of results shares few transactions; each callback runs after its result is
// readable from the store, in submit order; acknowledgements ride along; Close commits what is queued and
// refuses what comes after.
func TestCommitterGroups(t *testing.T) {
	s := open(t, Options{})
	c := s.NewCommitter(50 * time.Millisecond)
	var (
		mu    sync.Mutex
		order []uint64
		fails []string
	)
	submit := func(seq uint64) {
		r := rec("cam", seq, "OK")
		c.Submit(Pending{Rec: r, Msgs: []Message{msg(MsgResult, "OK", seq)}}, func(err error) {
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				fails = append(fails, err.Error())
				return
			}
			if _, err := s.FindResult("cam", seq); err != nil {
				fails = append(fails, fmt.Sprintf("seq %d: callback before the result is readable: %v", seq, err))
			}
			order = append(order, seq)
		})
	}
	const n = 40
	for seq := uint64(1); seq <= n; seq++ {
		submit(seq)
	}
	c.Flush()
	st := c.Stats()
	if st.Results != n || st.Transactions > n/4 {
		t.Errorf("stats %+v: want %d results in at most %d transactions", st, n, n/4)
	}
	mu.Lock()
	if len(fails) > 0 || len(order) != n {
		t.Fatalf("callbacks: %d ok, failures %v", len(order), fails)
	}
	for i, seq := range order {
		if seq != uint64(i+1) {
			t.Fatalf("callback order %v", order)
		}
	}
	mu.Unlock()

	// Acknowledged messages stay in the file until the next transaction; PeekAfter goes past them.
	head, _ := s.Peek(10)
	if err := c.Ack(head[0].ID, head[1].ID); err != nil {
		t.Fatal(err)
	}
	next, _ := s.PeekAfter(head[1].ID, 1)
	if len(next) != 1 || next[0].Seq != 3 {
		t.Fatalf("PeekAfter(%d) = %+v, want seq 3", head[1].ID, next)
	}
	submit(n + 1)
	c.Close()
	if st, _ := s.OutboxStats(); st.Messages != n+1-2 || indexed(t, s) != st.Messages {
		t.Errorf("after Close: %d messages in the outbox, want %d (acks and the last result committed)", st.Messages, n-1)
	}
	if len(order) != n+1 {
		t.Errorf("the result queued before Close: callback not run")
	}
	var late error
	c.Submit(Pending{Rec: rec("cam", n+2, "OK")}, func(err error) { late = err })
	if !errors.Is(late, ErrClosed) {
		t.Errorf("submit after Close: %v, want ErrClosed", late)
	}
	c.Close() // a second Close is harmless
}

package store

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// clock is a settable time source shared by a test and its store.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newClock() *clock { return &clock{t: time.Date(2025, 3, 1, 8, 0, 0, 0, time.UTC)} }

func open(t *testing.T, o Options) *Store {
	t.Helper()
	if o.Path == "" {
		o.Path = filepath.Join(t.TempDir(), "vlmdiff.db")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Statfs == nil {
		o.Statfs = func(string) (uint64, error) { return 100 << 30, nil }
	}
	s, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func rec(camera string, seq uint64, verdict string) *Record {
	return &Record{Camera: camera, Seq: seq, Verdict: verdict, FrameTime: time.Unix(int64(seq), 0).UTC(),
		Score: 0.1, RawScore: 1.5, Threshold: 2, Model: Model{Name: "m", Version: "1"},
		LatencyMS: map[string]float64{"total": 12.5}}
}

func TestCommitAndQueries(t *testing.T) {
	clk := newClock()
	s := open(t, Options{Now: clk.Now})
	verdicts := []string{"OK", "NG", "OK", "OK", "NG", "OK"}
	for i, v := range verdicts {
		for _, cam := range []string{"cam1", "cam2"} {
			r := rec(cam, uint64(i+1), v)
			r.Origin = fmt.Sprintf("%s-frame-%d.png", cam, i+1)
			if err := s.Commit(r, nil, CommitOptions{}); err != nil {
				t.Fatal(err)
			}
			if r.ID == 0 || !r.StoredAt.Equal(clk.Now()) {
				t.Fatalf("commit did not fill id/stored_at: %+v", r)
			}
		}
		clk.Add(time.Minute)
	}
	tests := []struct {
		name string
		got  func() ([]Record, error)
		want []string // camera/seq, newest first
	}{
		{"latest cam1", func() ([]Record, error) { return s.Latest("cam1", 3) }, []string{"cam1/6", "cam1/5", "cam1/4"}},
		{"latest all", func() ([]Record, error) { return s.Latest("", 3) }, []string{"cam2/6", "cam1/6", "cam2/5"}},
		{"latest unknown", func() ([]Record, error) { return s.Latest("nope", 3) }, nil},
		{"ng all", func() ([]Record, error) { return s.NG(NGQuery{}) }, []string{"cam2/5", "cam1/5", "cam2/2", "cam1/2"}},
		{"ng last 1", func() ([]Record, error) { return s.NG(NGQuery{Limit: 1}) }, []string{"cam2/5"}},
		{"ng cam1", func() ([]Record, error) { return s.NG(NGQuery{Camera: "cam1"}) }, []string{"cam1/5", "cam1/2"}},
		{"ng since", func() ([]Record, error) { return s.NG(NGQuery{Since: clk.Now().Add(-3 * time.Minute)}) }, []string{"cam2/5", "cam1/5"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rs, err := tc.got()
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range rs {
				got = append(got, fmt.Sprintf("%s/%d", r.Camera, r.Seq))
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	latest, _ := s.Latest("cam1", 1)
	byID, err := s.Get(latest[0].ID)
	if err != nil || byID.Seq != 6 || byID.LatencyMS["total"] != 12.5 || byID.Model.Version != "1" {
		t.Fatalf("Get(%d) = %+v, %v", latest[0].ID, byID, err)
	}
	if _, err := s.Get(99999); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(missing) error = %v, want ErrNotFound", err)
	}
	if seq, ok, err := s.LastSeq("cam2"); err != nil || !ok || seq != 6 {
		t.Fatalf("LastSeq = %d %v %v", seq, ok, err)
	}
	if _, ok, _ := s.LastSeq("cam3"); ok {
		t.Fatal("LastSeq of unknown camera reported ok")
	}
	// A second commit of a processed origin writes nothing, not even the outbox message.
	dup := rec("cam1", 7, "OK")
	dup.Origin = "cam1-frame-1.png"
	err = s.Commit(dup, []Message{{Topic: "t", Payload: []byte("x"), Kind: MsgResult}}, CommitOptions{})
	if !errors.Is(err, ErrAlreadyProcessed) {
		t.Fatalf("duplicate origin: error = %v, want ErrAlreadyProcessed", err)
	}
	if ob, _ := s.OutboxStats(); ob.Messages != 0 {
		t.Fatalf("rejected commit left %d outbox messages", ob.Messages)
	}
	if seq, _, _ := s.LastSeq("cam1"); seq != 6 {
		t.Fatalf("rejected commit moved last seq to %d", seq)
	}
	if ok, _ := s.Processed("cam1", "cam1-frame-3.png"); !ok {
		t.Fatal("origin not recorded as processed")
	}
}

func TestCommitRejectsBadInput(t *testing.T) {
	s := open(t, Options{})
	tests := []struct {
		name string
		rec  *Record
		msgs []Message
		opts CommitOptions
	}{
		{"bad camera", rec("a/b", 1, "OK"), nil, CommitOptions{}},
		{"reserved camera", rec("stats", 1, "OK"), nil, CommitOptions{}},
		{"bad verdict", rec("c", 1, "maybe"), nil, CommitOptions{}},
		{"empty topic", rec("c", 1, "OK"), []Message{{Payload: []byte("x")}}, CommitOptions{}},
		{"bad qos", rec("c", 1, "OK"), []Message{{Topic: "t", QoS: 3}}, CommitOptions{}},
		{"bad image kind", rec("c", 1, "OK"), nil, CommitOptions{Images: []Image{{Kind: "x", Format: "png", Data: []byte{1}}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := s.Commit(tc.rec, tc.msgs, tc.opts); !errors.Is(err, ErrInvalid) {
				t.Fatalf("error = %v, want ErrInvalid", err)
			}
		})
	}
	if st, _ := s.Stats(); st.HistoryRecords != 0 || st.Outbox.Messages != 0 {
		t.Fatalf("rejected commits stored something: %+v", st)
	}
}

func msg(kind, verdict string, seq uint64) Message {
	return Message{Topic: "p/c/" + kind, Payload: []byte(fmt.Sprintf("%s-%s-%d", kind, verdict, seq)), QoS: 1,
		Kind: kind, Camera: "c", Seq: seq, Verdict: verdict}
}

func TestOutboxBoundDropsOKBeforeNG(t *testing.T) {
	R, H := MsgResult, MsgHeatmap
	tests := []struct {
		name     string
		max      int
		in       []Message
		want     []string // payloads left, in order
		wantDrop OutboxStats
	}{
		{"under bound", 5, []Message{msg(R, "OK", 1), msg(R, "NG", 2)}, []string{"result-OK-1", "result-NG-2"}, OutboxStats{}},
		{"oldest OK result goes first", 3,
			[]Message{msg(R, "OK", 1), msg(R, "NG", 2), msg(R, "OK", 3), msg(R, "OK", 4)},
			[]string{"result-NG-2", "result-OK-3", "result-OK-4"}, OutboxStats{DroppedOKResults: 1}},
		{"OK heatmaps before OK results", 3,
			[]Message{msg(R, "OK", 1), msg(H, "OK", 1), msg(R, "OK", 2), msg(H, "OK", 2), msg(R, "OK", 3)},
			[]string{"result-OK-1", "result-OK-2", "result-OK-3"}, OutboxStats{DroppedHeatmaps: 2}},
		{"NG kept while OK remain", 3,
			[]Message{msg(R, "NG", 1), msg(R, "NG", 2), msg(R, "OK", 3), msg(R, "NG", 4), msg(R, "NG", 5)},
			[]string{"result-NG-2", "result-NG-4", "result-NG-5"}, OutboxStats{DroppedOKResults: 1, DroppedNGResults: 1}},
		{"NG heatmap before NG result", 2,
			[]Message{msg(R, "NG", 1), msg(H, "NG", 1), msg(R, "NG", 2)},
			[]string{"result-NG-1", "result-NG-2"}, OutboxStats{DroppedHeatmaps: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t, Options{OutboxMaxMessages: tc.max})
			for _, m := range tc.in {
				if err := s.Enqueue(m); err != nil {
					t.Fatal(err)
				}
			}
			got, err := s.Peek(100)
			if err != nil {
				t.Fatal(err)
			}
			var payloads []string
			for _, m := range got {
				payloads = append(payloads, string(m.Payload))
			}
			if strings.Join(payloads, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("outbox = %v, want %v", payloads, tc.want)
			}
			st, _ := s.OutboxStats()
			if st.DroppedOKResults != tc.wantDrop.DroppedOKResults || st.DroppedNGResults != tc.wantDrop.DroppedNGResults ||
				st.DroppedHeatmaps != tc.wantDrop.DroppedHeatmaps || st.Messages != uint64(len(tc.want)) {
				t.Fatalf("stats = %+v, want drops %+v and %d messages", st, tc.wantDrop, len(tc.want))
			}
		})
	}
}

func TestOutboxByteBound(t *testing.T) {
	s := open(t, Options{OutboxMaxBytes: 4096})
	big := Message{Topic: "t", Payload: bytes.Repeat([]byte("x"), 5000), Kind: MsgResult}
	if err := s.Enqueue(big); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized message: error = %v, want ErrTooLarge", err)
	}
	for i := range 20 {
		m := Message{Topic: "t", Payload: bytes.Repeat([]byte("y"), 1000), Kind: MsgResult, Verdict: "OK", Seq: uint64(i)}
		if err := s.Enqueue(m); err != nil {
			t.Fatal(err)
		}
	}
	st, _ := s.OutboxStats()
	if st.Bytes > 4096 || st.Messages+st.DroppedOKResults != 20 || st.Messages == 0 {
		t.Fatalf("byte bound not kept: %+v", st)
	}
	msgs, _ := s.Peek(100)
	if last := msgs[len(msgs)-1].Seq; last != 19 {
		t.Fatalf("newest message seq = %d, want 19 (the newest are kept)", last)
	}
}

func TestOutboxSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	s := open(t, Options{Path: path})
	for i := range 10 {
		r := rec("cam", uint64(i+1), "OK")
		if err := s.Commit(r, []Message{msg(MsgResult, "OK", uint64(i+1))}, CommitOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	head, _ := s.Peek(4)
	var ids []uint64
	for _, m := range head {
		ids = append(ids, m.ID)
	}
	if err := s.Ack(ids...); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2 := open(t, Options{Path: path})
	left, err := s2.Peek(100)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 6 || left[0].Seq != 5 || left[5].Seq != 10 || string(left[0].Payload) != "result-OK-5" {
		t.Fatalf("after reopen: %d messages, first %+v", len(left), left[0])
	}
	// New ids continue after the old ones: order is kept across restarts.
	if err := s2.Enqueue(msg(MsgResult, "OK", 11)); err != nil {
		t.Fatal(err)
	}
	all, _ := s2.Peek(100)
	if all[len(all)-1].Seq != 11 || all[len(all)-1].ID <= left[5].ID {
		t.Fatalf("new message not at the tail: %+v", all[len(all)-1])
	}
	if seq, _, _ := s2.LastSeq("cam"); seq != 10 {
		t.Fatalf("last seq after reopen = %d, want 10", seq)
	}
}

// TestOutboxSurvivesKill9 commits results in a child process, kills it with SIGKILL mid-stream, and checks
// that every commit the child reported done is in the reopened file, in order.
func TestOutboxSurvivesKill9(t *testing.T) {
	if os.Getenv("STORE_KILL_CHILD") != "" {
		killChild()
		return
	}
	path := filepath.Join(t.TempDir(), "db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestOutboxSurvivesKill9$")
	cmd.Env = append(os.Environ(), "STORE_KILL_CHILD="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	var last uint64
	for sc.Scan() {
		var n uint64
		if _, err := fmt.Sscanf(sc.Text(), "committed %d", &n); err == nil {
			last = n
			if n == 50 {
				break
			}
		}
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if last < 50 {
		t.Fatalf("child reported only %d commits", last)
	}
	s := open(t, Options{Path: path})
	msgs, err := s.Peek(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	if uint64(len(msgs)) < last {
		t.Fatalf("reopened outbox holds %d messages, child had committed %d", len(msgs), last)
	}
	for i, m := range msgs {
		if m.Seq != uint64(i+1) {
			t.Fatalf("message %d has seq %d: order or gap broken", i, m.Seq)
		}
	}
	if seq, _, _ := s.LastSeq("cam"); seq < last {
		t.Fatalf("last seq %d < committed %d", seq, last)
	}
}

func killChild() {
	s, err := Open(Options{Path: os.Getenv("STORE_KILL_CHILD"), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(1)
	}
	for i := uint64(1); ; i++ {
		if err := s.Commit(rec("cam", i, "OK"), []Message{msg(MsgResult, "OK", i)}, CommitOptions{}); err != nil {
			fmt.Println("commit:", err)
			os.Exit(1)
		}
		fmt.Printf("committed %d\n", i)
	}
}

func TestRetention(t *testing.T) {
	t.Run("by age", func(t *testing.T) {
		clk := newClock()
		s := open(t, Options{Now: clk.Now, HistoryMaxAge: time.Hour})
		for i := range 10 {
			if err := s.Commit(rec("c", uint64(i+1), "NG"), nil, CommitOptions{}); err != nil {
				t.Fatal(err)
			}
			clk.Add(10 * time.Minute)
		}
		// Now = start+100m; cutoff = start+40m: records stored at 0..30m (seq 1-4) are too old.
		st, err := s.Prune(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		left, _ := s.Latest("c", 100)
		ng, _ := s.NG(NGQuery{})
		if st.ByAge != 4 || len(left) != 6 || left[len(left)-1].Seq != 5 || len(ng) != 6 {
			t.Fatalf("prune by age: %+v, %d left (oldest seq %d), %d NG", st, len(left), left[len(left)-1].Seq, len(ng))
		}
	})
	t.Run("by size on write and in Prune", func(t *testing.T) {
		s := open(t, Options{HistoryMaxBytes: 2000})
		for i := range 100 {
			if err := s.Commit(rec("c", uint64(i+1), "OK"), nil, CommitOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		stats, _ := s.Stats()
		left, _ := s.Latest("c", 1000)
		if stats.HistoryBytes > 2000 || len(left) == 0 || left[0].Seq != 100 || uint64(len(left)) != stats.HistoryRecords {
			t.Fatalf("size bound: %+v, %d records, newest %d", stats, len(left), left[0].Seq)
		}
		for i := 1; i < len(left); i++ {
			if left[i].Seq != left[i-1].Seq-1 {
				t.Fatalf("not the oldest were pruned: %d after %d", left[i].Seq, left[i-1].Seq)
			}
		}
	})
	t.Run("origins by age", func(t *testing.T) {
		clk := newClock()
		s := open(t, Options{Now: clk.Now, OriginMaxAge: time.Hour})
		_ = s.MarkProcessed("c", "old.png")
		clk.Add(2 * time.Hour)
		_ = s.MarkProcessed("c", "new.png")
		st, err := s.Prune(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		o, _ := s.Processed("c", "old.png")
		n, _ := s.Processed("c", "new.png")
		if st.Origins != 1 || o || !n {
			t.Fatalf("origin prune: %+v old=%v new=%v", st, o, n)
		}
	})
}

func TestImagesBoundedPerCameraAndVerdict(t *testing.T) {
	s := open(t, Options{ImagesPerCamera: 3, NGImagesPerCamera: 2})
	for i := range 10 {
		v := "OK"
		if i%4 == 0 {
			v = "NG"
		}
		r := rec("cam", uint64(i+1), v)
		img := Image{Kind: KindHeatmap, Format: "png", Data: []byte(fmt.Sprintf("png-%d", i+1))}
		if err := s.Commit(r, nil, CommitOptions{Images: []Image{img}}); err != nil {
			t.Fatal(err)
		}
		got, err := s.Image(r.HeatmapKey)
		if err != nil || string(got.Data) != string(img.Data) || got.Seq != r.Seq {
			t.Fatalf("Image(%q) = %+v, %v", r.HeatmapKey, got, err)
		}
	}
	// seq 1,5,9 are NG: only the 2 newest NG (9,5) kept; OK 10,8,7 kept.
	for _, tc := range []struct {
		verdict string
		want    []uint64
	}{{"OK", []uint64{10, 8, 7}}, {"NG", []uint64{9, 5}}, {"", []uint64{10, 9, 8, 7, 5}}} {
		ims, err := s.Images("cam", KindHeatmap, tc.verdict, 10)
		if err != nil {
			t.Fatal(err)
		}
		var got []uint64
		for _, im := range ims {
			got = append(got, im.Seq)
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("Images(%q) seqs = %v, want %v", tc.verdict, got, tc.want)
		}
	}
	first, _ := s.Get(1)
	if _, err := s.Image(first.HeatmapKey); !errors.Is(err, ErrNotFound) {
		t.Fatalf("evicted image: error = %v, want ErrNotFound", err)
	}
}

func TestSamplesExportLayout(t *testing.T) {
	s := open(t, Options{})
	when := time.Date(2025, 3, 1, 9, 0, 0, 0, time.UTC)
	in := []Sample{
		{Camera: "line1", Class: "bottle", Seq: 7, CapturedAt: when, Score: 0.12, PNG: []byte("\x89PNG-a")},
		{Camera: "line1", Class: "bottle", Seq: 12, CapturedAt: when.Add(time.Second), Score: 0.2, PNG: []byte("\x89PNG-b")},
		{Camera: "line2", Class: "", Seq: 3, CapturedAt: when, Score: 0.3, PNG: []byte("\x89PNG-c")},
	}
	for _, sm := range in {
		if err := s.AddSample(sm); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddSample(in[0]); err != nil { // same camera+seq replaces, not duplicates
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "export")
	n, err := s.ExportSamples(dir)
	if err != nil || n != 3 {
		t.Fatalf("ExportSamples = %d, %v", n, err)
	}
	f, err := os.Open(filepath.Join(dir, "samples.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	i := 0
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		for _, k := range []string{"file", "camera", "class", "seq", "captured_at", "score"} {
			if _, ok := line[k]; !ok {
				t.Fatalf("line %d lacks %q: %s", i+1, k, sc.Text())
			}
		}
		want := in[i]
		wantFile := fmt.Sprintf("images/%s/%d.png", want.Camera, want.Seq)
		if line["file"] != wantFile || line["camera"] != want.Camera || line["seq"] != float64(want.Seq) ||
			line["score"] != want.Score || line["captured_at"] != want.CapturedAt.Format(time.RFC3339Nano) {
			t.Fatalf("line %d = %s, want file %s", i+1, sc.Text(), wantFile)
		}
		data, err := os.ReadFile(filepath.Join(dir, wantFile))
		if err != nil || !bytes.Equal(data, want.PNG) {
			t.Fatalf("%s: %q, %v", wantFile, data, err)
		}
		i++
	}
	if i != 3 {
		t.Fatalf("samples.jsonl has %d lines, want 3", i)
	}
	if cnt, _ := s.SampleCount(); cnt != 3 {
		t.Fatalf("SampleCount = %d", cnt)
	}
}

func TestSampleFreeDiskGuard(t *testing.T) {
	var mu sync.Mutex
	free := uint64(10 << 30)
	statfs := func(string) (uint64, error) { mu.Lock(); defer mu.Unlock(); return free, nil }
	s := open(t, Options{MinFreeBytes: 1 << 30, Statfs: statfs, MaxSamples: 3})
	add := func(seq uint64) error {
		return s.AddSample(Sample{Camera: "c", Seq: seq, PNG: bytes.Repeat([]byte{1}, 1000)})
	}
	tests := []struct {
		name string
		free uint64
		seq  uint64
		want error
	}{
		{"plenty of space", 10 << 30, 1, nil},
		{"below guard", 512 << 20, 2, ErrDiskGuard},
		{"exactly at guard after write", 1<<30 + 999, 3, ErrDiskGuard},
		{"space back", 2 << 30, 4, nil},
		{"fill to MaxSamples", 2 << 30, 5, nil},
		{"over MaxSamples", 2 << 30, 6, ErrSamplesFull},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			free = tc.free
			mu.Unlock()
			err := add(tc.seq)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("AddSample error = %v, want %v", err, tc.want)
			}
			if tc.want == ErrDiskGuard && !strings.Contains(err.Error(), "MiB") {
				t.Fatalf("guard error gives no reason: %v", err)
			}
		})
	}
	// The guard stops samples only: scoring's commits still go through on a "full" disk.
	mu.Lock()
	free = 0
	mu.Unlock()
	if ok, reason := s.SampleGuard(0); ok || reason == "" {
		t.Fatalf("SampleGuard = %v %q, want refused with a reason", ok, reason)
	}
	if err := s.Commit(rec("c", 1, "OK"), []Message{msg(MsgResult, "OK", 1)}, CommitOptions{}); err != nil {
		t.Fatalf("commit refused while only the sample guard tripped: %v", err)
	}
	if n, _ := s.SampleCount(); n != 3 {
		t.Fatalf("SampleCount = %d, want 3", n)
	}
}

func TestOverridesPersistAcrossReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	s := open(t, Options{Path: path})
	if err := s.SetThreshold("cam1", 0.42); err != nil {
		t.Fatal(err)
	}
	if err := s.SetThreshold("cam2", 1.5); err != nil {
		t.Fatal(err)
	}
	if err := s.ClearThreshold("cam2"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetSetting("sample_every", []byte("25")); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []float64{-1} {
		if err := s.SetThreshold("cam1", bad); !errors.Is(err, ErrInvalid) {
			t.Fatalf("SetThreshold(%v) error = %v", bad, err)
		}
	}
	s.Close()
	s = open(t, Options{Path: path})
	o, ok, err := s.Threshold("cam1")
	if err != nil || !ok || o.Threshold != 0.42 {
		t.Fatalf("Threshold(cam1) = %+v %v %v", o, ok, err)
	}
	if _, ok, _ := s.Threshold("cam2"); ok {
		t.Fatal("cleared override came back")
	}
	all, _ := s.Thresholds()
	if len(all) != 1 {
		t.Fatalf("Thresholds = %v", all)
	}
	if v, err := s.Setting("sample_every"); err != nil || string(v) != "25" {
		t.Fatalf("Setting = %q %v", v, err)
	}
	if _, err := s.Setting("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing setting error = %v", err)
	}
}

func TestSampler(t *testing.T) {
	sm := NewSampler(3)
	var got []bool
	for _, v := range []string{"OK", "OK", "NG", "OK", "OK", "OK", "OK"} {
		got = append(got, sm.Want("c", v))
	}
	if fmt.Sprint(got) != "[false false false true false false true]" {
		t.Fatalf("every 3rd OK: %v", got)
	}
	sm.Request("c")
	if !sm.Want("c", "NG") || sm.Want("c", "NG") {
		t.Fatal("a request takes exactly the next frame, whatever its verdict")
	}
}

func TestOpenLockedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	_ = open(t, Options{Path: path})
	_, err := Open(Options{Path: path, OpenTimeout: 100 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("second Open error = %v, want a lock error", err)
	}
}

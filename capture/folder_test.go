package capture

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"
)

// folderCfg is a folder config with short intervals for tests.
func folderCfg(dir string) Config {
	return Config{Name: "inbox", Kind: KindFolder, Path: dir, RetryMin: 5 * time.Millisecond,
		RetryMax: 20 * time.Millisecond, Folder: FolderConfig{Settle: 120 * time.Millisecond, MaxInFlight: 4}}
}

// dropFile puts file i into dir in one of three ways: a plain write, a slow write in chunks, or a write
// elsewhere followed by a rename into place.
func dropFile(t *testing.T, dir, staging string, i int) {
	data := pngBytes(t, 16, 12, idColour(i))
	name := fmt.Sprintf("img%03d.png", i)
	switch i % 3 {
	case 0:
		writeFile(t, filepath.Join(dir, name), data)
	case 1:
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("create %s: %v", name, err)
			return
		}
		chunk := (len(data) + 3) / 4
		for off := 0; off < len(data); off += chunk {
			if _, err := f.Write(data[off:min(off+chunk, len(data))]); err != nil {
				t.Errorf("write %s: %v", name, err)
			}
			time.Sleep(10 * time.Millisecond) // a slow writer; well under Settle
		}
		if err := f.Close(); err != nil {
			t.Errorf("close %s: %v", name, err)
		}
	default:
		tmp := filepath.Join(staging, name)
		writeFile(t, tmp, data)
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Errorf("rename %s into place: %v", name, err)
		}
	}
}

// slowCfg is folderCfg with a Settle far above the chunked writer's 10 ms pauses, even on a loaded machine.
func slowCfg(dir string) Config {
	c := folderCfg(dir)
	c.Folder.Settle = 300 * time.Millisecond
	return c
}

func TestFolderConcurrentDropsEmittedOnceAndMoved(t *testing.T) {
	dir, staging := t.TempDir(), t.TempDir()
	src, err := New(slowCfg(dir))
	if err != nil {
		t.Fatal(err)
	}
	out, events := make(chan Frame), make(chan Event, 256)
	stop := run(t, src, out, events)
	waitEvent(t, events, func(e Event) bool { return e.State == StateOnline })

	const n = 100
	var wg sync.WaitGroup
	for w := 0; w < 10; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < n; i += 10 {
				dropFile(t, dir, staging, i)
			}
		}(w)
	}
	seen := map[int]int{}
	for len(seen) < n {
		f := recv(t, out)
		id := idOf(t, f)
		seen[id]++
		if seen[id] > 1 {
			t.Fatalf("file %d emitted twice", id)
		}
		if want := filepath.Join(dir, fmt.Sprintf("img%03d.png", id)); f.Origin != want {
			t.Fatalf("frame of file %d has origin %s", id, f.Origin)
		}
		if f.Width != 16 || f.Height != 12 || len(f.Pix) != 16*12*3 {
			t.Fatalf("file %d decoded as %dx%d (%d bytes)", id, f.Width, f.Height, len(f.Pix))
		}
		f.Ack(true)
		f.Ack(true) // a second call must do nothing
		if exists(f.Origin) {
			t.Fatalf("%s still in the folder after Done", f.Origin)
		}
	}
	wg.Wait()
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := listDir(t, filepath.Join(dir, "processed")); len(got) != n {
		t.Fatalf("processed/ holds %d files, want %d", len(got), n)
	}
	if left := listDir(t, dir); len(left) != 0 {
		t.Fatalf("files left in the folder: %v", left)
	}
	if st := src.Stats(); st.Frames != n || st.InFlight != 0 || st.DecodeErrors != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestFolderKeepsArrivalOrder(t *testing.T) {
	dir, staging := t.TempDir(), t.TempDir()
	src, err := New(slowCfg(dir))
	if err != nil {
		t.Fatal(err)
	}
	out, events := make(chan Frame, 64), make(chan Event, 64)
	run(t, src, out, events)
	waitEvent(t, events, func(e Event) bool { return e.State == StateOnline })
	const n = 30
	go func() {
		for i := 0; i < n; i++ { // one after another, mixed ways: the arrival order is the index order
			dropFile(t, dir, staging, i)
		}
	}()
	for i := 0; i < n; i++ {
		f := recv(t, out)
		if id := idOf(t, f); id != i {
			t.Fatalf("frame %d is file %d, want arrival order", i, id)
		}
		f.Ack(true)
	}
}

func TestFolderCorruptFileGoesToFailedOthersFlow(t *testing.T) {
	dir := t.TempDir()
	good := pngBytes(t, 8, 8, idColour(1))
	writeFile(t, filepath.Join(dir, "a_good.png"), good)
	writeFile(t, filepath.Join(dir, "b_corrupt.png"), good[:len(good)/2]) // truncated PNG
	writeFile(t, filepath.Join(dir, "c_noise.jpg"), []byte("this is not a jpeg at all"))
	writeFile(t, filepath.Join(dir, "d_empty.png"), nil)
	writeFile(t, filepath.Join(dir, "e_good.png"), pngBytes(t, 8, 8, idColour(2)))
	writeFile(t, filepath.Join(dir, "notes.txt"), []byte("not an image name: ignored"))
	base := time.Now().Add(-time.Hour)
	for i, name := range []string{"a_good.png", "b_corrupt.png", "c_noise.jpg", "d_empty.png", "e_good.png"} {
		if err := os.Chtimes(filepath.Join(dir, name), base, base.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	cfg := folderCfg(dir)
	cfg.Folder.Settle = 30 * time.Millisecond
	src, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	out, events := make(chan Frame), make(chan Event, 64)
	run(t, src, out, events)
	for _, want := range []int{1, 2} {
		f := recv(t, out)
		if id := idOf(t, f); id != want {
			t.Fatalf("got file %d, want %d", id, want)
		}
		f.Ack(true)
	}
	bad := map[string]bool{}
	for len(bad) < 3 {
		ev := waitEvent(t, events, func(e Event) bool { return e.Transient })
		if ev.State != StateError || ev.File == "" || ev.Reason == "" {
			t.Fatalf("transient event %+v: want an error naming the file", ev)
		}
		bad[filepath.Base(ev.File)] = true
	}
	for _, name := range []string{"b_corrupt.png", "c_noise.jpg", "d_empty.png"} {
		if !bad[name] {
			t.Errorf("no error event for %s (got %v)", name, bad)
		}
		eventually(t, name+" in failed/", func() bool { return exists(filepath.Join(dir, "failed", name)) })
	}
	if got := listDir(t, dir); len(got) != 1 || got[0] != "notes.txt" {
		t.Errorf("folder holds %v, want only notes.txt", got)
	}
	if st := src.Stats(); st.DecodeErrors != 3 || st.Frames != 2 {
		t.Errorf("stats %+v: want 3 decode errors, 2 frames", st)
	}
}

func TestFolderFilesPresentAtStartByMtimeThenName(t *testing.T) {
	dir := t.TempDir()
	base := time.Now().Add(-time.Hour)
	// Names in reverse of mtime order; two files share an mtime and are ordered by name.
	files := []struct {
		name string
		id   int
		age  time.Duration
	}{
		{"z.png", 0, 0}, {"y.bmp", 1, time.Second}, {"b.tif", 2, 2 * time.Second}, {"a.png", 3, 3 * time.Second},
		{"c.PNG", 4, 3 * time.Second},
	}
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		writeFile(t, p, pngBytes(t, 4, 4, idColour(f.id))) // OpenCV decodes by content, not name
		if err := os.Chtimes(p, base, base.Add(f.age)); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(dir, ".hidden.png"), pngBytes(t, 4, 4, idColour(99)))
	src, err := New(folderCfg(dir))
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan Frame, 8)
	run(t, src, out, nil)
	for want := 0; want < len(files); want++ {
		f := recv(t, out)
		if id := idOf(t, f); id != want {
			t.Fatalf("frame %d is file %d", want, id)
		}
		if !f.Time.Equal(base.Add(files[want].age)) {
			t.Errorf("frame time %v, want the file's mtime", f.Time)
		}
		f.Ack(true)
	}
}

func TestFolderAfterPolicies(t *testing.T) {
	tests := []struct {
		name       string
		after      string
		ok         bool
		wantIn     string // where the file ends up, relative to the folder; "" for deleted
		wantRemain bool   // still in the folder itself
	}{
		{"move ok", AfterMove, true, "processed/x.png", false},
		{"move not ok", AfterMove, false, "failed/x.png", false},
		{"delete ok", AfterDelete, true, "", false},
		{"delete not ok keeps it in failed", AfterDelete, false, "failed/x.png", false},
		{"keep", AfterKeep, true, "x.png", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, filepath.Join(dir, "x.png"), pngBytes(t, 4, 4, idColour(5)))
			cfg := folderCfg(dir)
			cfg.Folder.After = tc.after
			cfg.Folder.Settle = 20 * time.Millisecond
			src, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			out := make(chan Frame, 4)
			stop := run(t, src, out, nil)
			f := recv(t, out)
			f.Ack(tc.ok)
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			if got := exists(filepath.Join(dir, "x.png")); got != tc.wantRemain {
				t.Errorf("x.png in folder: %v, want %v", got, tc.wantRemain)
			}
			if tc.wantIn != "" && !exists(filepath.Join(dir, tc.wantIn)) {
				t.Errorf("%s missing", tc.wantIn)
			}
			if tc.wantIn == "" && (exists(filepath.Join(dir, "processed")) || exists(filepath.Join(dir, "failed"))) {
				t.Errorf("deleted file left a processed/ or failed/ folder")
			}
		})
	}
}

// With keep, acknowledged files are not emitted again in the run, even across rescans, while new files are.
func TestFolderKeepDoesNotReemit(t *testing.T) {
	dir := t.TempDir()
	for i := 0; i < 3; i++ {
		writeFile(t, filepath.Join(dir, fmt.Sprintf("k%d.png", i)), pngBytes(t, 4, 4, idColour(i)))
	}
	cfg := folderCfg(dir)
	cfg.Folder.After = AfterKeep
	cfg.Folder.Rescan = 10 * time.Millisecond
	src, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan Frame, 8)
	run(t, src, out, nil)
	got := map[int]bool{}
	for i := 0; i < 3; i++ {
		f := recv(t, out)
		got[idOf(t, f)] = true
		f.Ack(true)
	}
	// Many rescans pass while the new file settles; a re-emitted kept file would arrive before it.
	writeFile(t, filepath.Join(dir, "new.png"), pngBytes(t, 4, 4, idColour(42)))
	if f := recv(t, out); idOf(t, f) != 42 {
		t.Fatalf("got file %d again, want the new file 42", idOf(t, f))
	}
	if len(got) != 3 || len(listDir(t, dir)) != 4 {
		t.Fatalf("emitted %v; folder %v", got, listDir(t, dir))
	}
}

// Frames never acknowledged leave their files in place for the next run; MaxInFlight bounds what is read.
func TestFolderBackpressureAndUnackedFilesSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	const n = 6
	for i := 0; i < n; i++ {
		writeFile(t, filepath.Join(dir, fmt.Sprintf("f%d.png", i)), pngBytes(t, 4, 4, idColour(i)))
	}
	cfg := folderCfg(dir)
	cfg.Folder.MaxInFlight = 2
	cfg.Folder.Settle = 20 * time.Millisecond
	src, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan Frame, n)
	stop := run(t, src, out, nil)
	a, b := recv(t, out), recv(t, out)
	eventually(t, "4 files queued behind 2 in flight", func() bool {
		st := src.Stats()
		return st.InFlight == 2 && st.Backlog == n-2
	})
	if len(out) != 0 {
		t.Fatalf("%d frames delivered beyond MaxInFlight", len(out))
	}
	a.Ack(true)
	c := recv(t, out) // a freed slot lets the next one through
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	b.Ack(true) // a Done after Run returned still finishes its file
	for _, f := range []Frame{a, b} {
		if exists(f.Origin) {
			t.Errorf("acknowledged %s still in the folder", f.Origin)
		}
	}

	// "Restart": a new source over the same folder gets every file not acknowledged, c's included.
	src2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	out2 := make(chan Frame, n)
	run(t, src2, out2, nil)
	var ids []int
	for i := 0; i < n-2; i++ {
		f := recv(t, out2)
		ids = append(ids, idOf(t, f))
		f.Ack(true)
	}
	sort.Ints(ids)
	want := map[int]bool{}
	for i := 0; i < n; i++ {
		want[i] = true
	}
	delete(want, idOf(t, a))
	delete(want, idOf(t, b))
	if !want[idOf(t, c)] {
		t.Fatalf("c (file %d) was acknowledged?", idOf(t, c))
	}
	for _, id := range ids {
		if !want[id] {
			t.Fatalf("restart emitted %v; file %d was already acknowledged", ids, id)
		}
		delete(want, id)
	}
	if len(want) != 0 {
		t.Fatalf("files never emitted after restart: %v", want)
	}
}

// The folder disappearing (an unmounted share) takes the source offline; it comes back with the folder.
func TestFolderRemovedAndRecreated(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "inbox")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := New(folderCfg(dir))
	if err != nil {
		t.Fatal(err)
	}
	out, events := make(chan Frame, 4), make(chan Event, 64)
	run(t, src, out, events)
	waitEvent(t, events, func(e Event) bool { return e.State == StateOnline })
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, events, func(e Event) bool { return e.State == StateOffline })
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, events, func(e Event) bool { return e.State == StateOnline })
	writeFile(t, filepath.Join(dir, "back.png"), pngBytes(t, 4, 4, idColour(9)))
	if f := recv(t, out); idOf(t, f) != 9 {
		t.Fatalf("got file %d", idOf(t, f))
	}
}

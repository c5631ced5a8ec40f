package losscurve

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// svgShape is what the tests read back from a plot: its polylines and their points.
type svgShape struct {
	Polylines []string
	Texts     []string
}

// parseSVG parses b as XML (failing the test when it is not well-formed) and collects the polylines' points
// attributes and the text content.
func parseSVG(t *testing.T, b []byte) svgShape {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(b))
	var s svgShape
	root := ""
	inText := false
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed XML: %v\n%s", err, b)
		}
		switch e := tok.(type) {
		case xml.StartElement:
			if root == "" {
				root = e.Name.Local
			}
			if e.Name.Local == "polyline" {
				for _, a := range e.Attr {
					if a.Name.Local == "points" {
						s.Polylines = append(s.Polylines, a.Value)
					}
				}
			}
			inText = e.Name.Local == "text"
		case xml.CharData:
			if inText {
				s.Texts = append(s.Texts, string(e))
			}
		case xml.EndElement:
			inText = false
		}
	}
	if root != "svg" {
		t.Fatalf("root element %q, want svg", root)
	}
	return s
}

// csvOf generates a loss log: n steps of a decaying loss, a validation value every valEvery steps (0: none).
func csvOf(n, valEvery int) string {
	var b strings.Builder
	b.WriteString("step,epoch,loss,val_loss\n")
	for i := 0; i < n; i++ {
		val := ""
		if valEvery > 0 && (i+1)%valEvery == 0 {
			val = fmt.Sprintf("%.6f", 0.6*math.Exp(-float64(i)/40)+0.05)
		}
		fmt.Fprintf(&b, "%d,%d,%.6f,%s\n", i*10, i/10, 2*math.Exp(-float64(i)/30)+0.01, val)
	}
	return b.String()
}

func TestSVGSeries(t *testing.T) {
	tests := []struct {
		name      string
		csv       string
		polylines int
		points    []int // points per polyline
		logScale  bool
	}{
		{"loss and sparse val_loss", csvOf(100, 10), 2, []int{100, 10}, true},
		{"no validation", csvOf(50, 0), 1, []int{50}, false},
		{"single row", "step,epoch,loss,val_loss\n0,0,0.5,\n", 1, []int{1}, false},
		{"single row with val", "step,epoch,loss,val_loss\n7,1,0.5,0.7\n", 2, []int{1, 1}, false},
		{"val only row", "step,epoch,loss,val_loss\n0,0,1.0,\n10,1,,0.9\n20,2,0.8,\n", 2, []int{2, 1}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rows, err := Read(strings.NewReader(tc.csv))
			if err != nil {
				t.Fatal(err)
			}
			b := SVG("train", rows)
			s := parseSVG(t, b)
			if len(s.Polylines) != tc.polylines {
				t.Fatalf("%d polylines, want %d", len(s.Polylines), tc.polylines)
			}
			for i, pts := range s.Polylines {
				fields := strings.Fields(pts)
				if len(fields) != tc.points[i] {
					t.Errorf("polyline %d has %d points, want %d", i, len(fields), tc.points[i])
				}
				for _, f := range fields {
					var x, y float64
					if _, err := fmt.Sscanf(f, "%g,%g", &x, &y); err != nil || x < 0 || x > width || y < 0 || y > height {
						t.Errorf("point %q outside the %vx%v plot (%v)", f, width, height, err)
					}
				}
			}
			joined := strings.Join(s.Texts, "|")
			if got := strings.Contains(joined, "log scale"); got != tc.logScale {
				t.Errorf("log scale %v, want %v (texts %s)", got, tc.logScale, joined)
			}
		})
	}
}

// TestSVGDecreasingLossGoesDown checks the orientation: a falling loss must end lower on the page (larger y).
func TestSVGDecreasingLossGoesDown(t *testing.T) {
	rows, err := Read(strings.NewReader("step,epoch,loss,val_loss\n0,0,4,\n1,0,2,\n2,0,1,\n"))
	if err != nil {
		t.Fatal(err)
	}
	pts := strings.Fields(parseSVG(t, SVG("x", rows)).Polylines[0])
	var x0, y0, x1, y1 float64
	fmt.Sscanf(pts[0], "%g,%g", &x0, &y0)
	fmt.Sscanf(pts[len(pts)-1], "%g,%g", &x1, &y1)
	if !(x1 > x0 && y1 > y0) {
		t.Errorf("first point (%v,%v), last (%v,%v): want the last to the right and lower", x0, y0, x1, y1)
	}
}

func TestReadRejects(t *testing.T) {
	tests := []struct{ name, csv, want string }{
		{"empty", "", "header"},
		{"wrong header", "step,loss,epoch,val_loss\n1,2,3,4\n", "want \"step,epoch,loss,val_loss\""},
		{"no rows", "step,epoch,loss,val_loss\n", "no rows"},
		{"text", "step,epoch,loss,val_loss\n1,0,abc,\n", "line 2: loss \"abc\""},
		{"empty step", "step,epoch,loss,val_loss\n,0,1,\n", "line 2: step"},
		{"both empty", "step,epoch,loss,val_loss\n1,0,0.5,\n2,0,,\n", "line 3: both loss and val_loss are empty"},
		{"inf", "step,epoch,loss,val_loss\n1,0,inf,\n", "finite"},
		{"nan", "step,epoch,loss,val_loss\n1,0,0.5,\n2,0,NaN,\n", "line 3: loss is NaN (did the training diverge?)"},
		{"short row", "step,epoch,loss,val_loss\n1,0,1\n", "wrong number of fields"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Read(strings.NewReader(tc.csv))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestRenderDir(t *testing.T) {
	if plots, err := RenderDir(filepath.Join(t.TempDir(), "absent")); err != nil || plots != nil {
		t.Fatalf("missing dir: %v %v, want nothing", plots, err)
	}
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, "train.csv"), []byte(csvOf(30, 5)), 0o644))
	must(os.WriteFile(filepath.Join(dir, "finetune-ae.csv"), []byte(csvOf(1, 1)), 0o644))
	must(os.WriteFile(filepath.Join(dir, "broken.csv"), []byte("a,b\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("x"), 0o644))
	plots, err := RenderDir(dir)
	must(err)
	var names []string
	for _, p := range plots {
		names = append(names, p.Stage)
	}
	if strings.Join(names, ",") != "broken,finetune-ae,train" {
		t.Fatalf("stages %v", names)
	}
	if plots[0].Err == nil || plots[0].SVG != nil {
		t.Errorf("broken.csv: err %v", plots[0].Err)
	}
	if _, err := os.Stat(filepath.Join(dir, "broken.svg")); err == nil {
		t.Errorf("an SVG was written for an unreadable CSV")
	}
	for _, p := range plots[1:] {
		b, err := os.ReadFile(p.Path)
		must(err)
		if !bytes.Equal(b, p.SVG) || p.Path != filepath.Join(dir, p.Stage+".svg") {
			t.Errorf("%s: file %s differs from the returned SVG", p.Stage, p.Path)
		}
		parseSVG(t, b)
	}
	if plots[2].Rows != 30 {
		t.Errorf("train rows %d, want 30", plots[2].Rows)
	}
}

// TestRenderRun: a run directory's curves are found where the stages write them (RUN/<stage>/curves, and
// RUN/curves), and a curves directory given directly still renders; other CSVs of the run are not curves.
func TestRenderRun(t *testing.T) {
	run := t.TempDir()
	for _, p := range []string{"ae/curves/finetune-ae.csv", "train/curves/train.csv", "curves/extra.csv"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(run, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(run, p), []byte(csvOf(5, 1)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(run, "select"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(run, "select", "candidates.csv"), []byte("a,b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	stages := func(dir string) string {
		plots, err := RenderRun(dir)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, p := range plots {
			if p.Err != nil {
				t.Errorf("%s: %v", p.CSV, p.Err)
			}
			names = append(names, p.Stage)
		}
		return strings.Join(names, ",")
	}
	if got := stages(run); got != "extra,finetune-ae,train" {
		t.Errorf("run directory: stages %q", got)
	}
	if got := stages(filepath.Join(run, "train", "curves")); got != "train" {
		t.Errorf("a curves directory: stages %q", got)
	}
	if got := stages(filepath.Join(run, "absent")); got != "" {
		t.Errorf("a missing directory: stages %q", got)
	}
}

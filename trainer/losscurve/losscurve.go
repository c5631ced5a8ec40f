// Package losscurve turns the training stages' loss logs (<run-dir>/curves/<stage>.csv, written by the Python
// stages with the header step,epoch,loss,val_loss) into small self-contained SVG line plots, so a run directory
// and its evaluation report show whether each stage converged. SVG is written by hand: a plot of two polylines
// needs no plotting dependency, and the file opens in any browser and embeds in the HTML report as is.
package losscurve

import (
	"encoding/csv"
	"errors"
	"fmt"
	"html/template"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Header is the CSV header every stage writes, in this order.
var Header = []string{"step", "epoch", "loss", "val_loss"}

// Row is one logged step. ValLoss is NaN on rows without a validation pass (an empty cell).
type Row struct {
	Step    float64
	Epoch   float64
	Loss    float64
	ValLoss float64
}

// Read parses a loss CSV. The header must be exactly Header (a column added or reordered by the Python side
// must fail here, not plot the wrong series); loss may be empty only where val_loss is set, val_loss may be empty.
func Read(r io.Reader) ([]Row, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = len(Header)
	head, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("losscurve: header: %w", err)
	}
	for i, h := range head {
		if strings.TrimSpace(h) != Header[i] {
			return nil, fmt.Errorf("losscurve: header %q: want %q", strings.Join(head, ","), strings.Join(Header, ","))
		}
	}
	var rows []Row
	for line := 2; ; line++ {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("losscurve: %w", err)
		}
		var v [4]float64
		for i, cell := range rec {
			cell = strings.TrimSpace(cell)
			if cell == "" && i >= 2 {
				v[i] = math.NaN()
				continue
			}
			f, err := strconv.ParseFloat(cell, 64)
			if err == nil && math.IsNaN(f) {
				return nil, fmt.Errorf("losscurve: line %d: %s is NaN (did the training diverge?)", line, Header[i])
			}
			if err != nil || math.IsInf(f, 0) {
				return nil, fmt.Errorf("losscurve: line %d: %s %q: want a finite number", line, Header[i], cell)
			}
			v[i] = f
		}
		if math.IsNaN(v[2]) && math.IsNaN(v[3]) {
			return nil, fmt.Errorf("losscurve: line %d: both loss and val_loss are empty", line)
		}
		rows = append(rows, Row{Step: v[0], Epoch: v[1], Loss: v[2], ValLoss: v[3]})
	}
	if len(rows) == 0 {
		return nil, errors.New("losscurve: no rows after the header")
	}
	return rows, nil
}

// Plot geometry, in SVG user units.
const (
	width, height = 420.0, 260.0
	padL, padR    = 56.0, 12.0
	padT, padB    = 26.0, 40.0
)

// Series colours: training loss, validation loss.
const (
	colLoss = "#2c6fbb"
	colVal  = "#d35400"
)

// SVG renders rows as a line plot: loss and, when any row has it, val_loss against step, one <polyline> per
// series (a series with a single point is drawn as a polyline of one point plus a marker, so it stays visible).
// The y axis is logarithmic when every value is positive and they span more than a factor of 20, because
// losses fall by orders of magnitude and a linear axis hides the part where convergence is judged.
func SVG(title string, rows []Row) []byte {
	type series struct {
		name, colour string
		pts          [][2]float64
	}
	all := []*series{{name: "loss", colour: colLoss}, {name: "val_loss", colour: colVal}}
	for _, r := range rows {
		if !math.IsNaN(r.Loss) {
			all[0].pts = append(all[0].pts, [2]float64{r.Step, r.Loss})
		}
		if !math.IsNaN(r.ValLoss) {
			all[1].pts = append(all[1].pts, [2]float64{r.Step, r.ValLoss})
		}
	}
	var ss []*series
	for _, s := range all {
		if len(s.pts) > 0 {
			ss = append(ss, s)
		}
	}
	x0, x1, y0, y1 := math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
	for _, s := range ss {
		for _, p := range s.pts {
			x0, x1 = math.Min(x0, p[0]), math.Max(x1, p[0])
			y0, y1 = math.Min(y0, p[1]), math.Max(y1, p[1])
		}
	}
	logY := y0 > 0 && y1/y0 > 20
	ty := func(y float64) float64 {
		if logY {
			return math.Log10(y)
		}
		return y
	}
	ly0, ly1 := ty(y0), ty(y1)
	if ly1 == ly0 { // one point or a flat line: give the axis some height
		ly0, ly1 = ly0-0.5, ly1+0.5
		if !logY && y0 >= 0 && ly0 < 0 {
			ly0 = 0
		}
	}
	if x1 == x0 {
		x0, x1 = x0-1, x1+1
	}
	sx := func(x float64) float64 { return padL + (x-x0)/(x1-x0)*(width-padL-padR) }
	sy := func(y float64) float64 { return height - padB - (ty(y)-ly0)/(ly1-ly0)*(height-padT-padB) }
	syl := func(l float64) float64 { return height - padB - (l-ly0)/(ly1-ly0)*(height-padT-padB) }

	var b strings.Builder
	esc := template.HTMLEscapeString
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif">`, width, height, width, height)
	fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="#fff" stroke="#999"/>`, padL, padT, width-padL-padR, height-padT-padB)
	fmt.Fprintf(&b, `<text x="%.0f" y="16" font-size="12" text-anchor="middle">%s</text>`, width/2, esc(title))
	for i := 0; i <= 4; i++ {
		l := ly0 + (ly1-ly0)*float64(i)/4
		v := l
		if logY {
			v = math.Pow(10, l)
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="9" text-anchor="end">%s</text>`, padL-4, syl(l)+3, strconv.FormatFloat(v, 'g', 3, 64))
		xv := x0 + (x1-x0)*float64(i)/4
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="9" text-anchor="middle">%s</text>`, sx(xv), height-padB+12, strconv.FormatFloat(xv, 'g', 4, 64))
	}
	yl := "loss"
	if logY {
		yl = "loss (log scale)"
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" font-size="10" text-anchor="middle">step</text>`, (padL+width-padR)/2, height-padB+26)
	fmt.Fprintf(&b, `<text x="12" y="%.0f" font-size="10" text-anchor="middle" transform="rotate(-90 12 %.0f)">%s</text>`, (padT+height-padB)/2, (padT+height-padB)/2, yl)
	for i, s := range ss {
		b.WriteString(`<polyline fill="none" stroke="` + s.colour + `" stroke-width="1.5" points="`)
		for k, p := range s.pts {
			if k > 0 {
				b.WriteByte(' ')
			}
			fmt.Fprintf(&b, "%.1f,%.1f", sx(p[0]), sy(p[1]))
		}
		b.WriteString(`"/>`)
		if len(s.pts) == 1 {
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="2.5" fill="%s"/>`, sx(s.pts[0][0]), sy(s.pts[0][1]), s.colour)
		}
		last := s.pts[len(s.pts)-1][1]
		lx, lyy := width-padR-150, padT+14+14*float64(i)
		fmt.Fprintf(&b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="%s" stroke-width="2"/>`, lx, lyy-3, lx+16, lyy-3, s.colour)
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" font-size="10">%s (last %s)</text>`, lx+20, lyy, s.name, strconv.FormatFloat(last, 'g', 4, 64))
	}
	b.WriteString(`</svg>`)
	return []byte(b.String())
}

// Plot is one stage's rendered curve.
type Plot struct {
	Stage string // the CSV's base name without .csv
	CSV   string // path of the CSV
	Path  string // path of the SVG written beside it
	SVG   []byte
	Rows  int
	Err   error // a CSV that could not be read: reported, not fatal to the other stages
}

// RenderRun renders the loss curves of a run directory: those in dir itself (a curves directory given
// directly), in dir/curves, and in every dir/<stage>/curves, where the Python stages write theirs (RUN/ae/curves/
// finetune-ae.csv, RUN/train/curves/train.csv). Each directory is RenderDir's, in that order.
func RenderRun(dir string) ([]Plot, error) {
	subs, err := filepath.Glob(filepath.Join(dir, "*", "curves"))
	if err != nil {
		return nil, fmt.Errorf("losscurve: %w", err)
	}
	var plots []Plot
	for _, d := range append([]string{dir, filepath.Join(dir, "curves")}, subs...) {
		p, err := RenderDir(d)
		plots = append(plots, p...)
		if err != nil {
			return plots, err
		}
	}
	return plots, nil
}

// RenderDir renders every <stage>.csv in dir to <stage>.svg beside it, in stage-name order. A missing dir is
// no plots and no error (a run whose stages wrote no curves); a bad CSV is a Plot with Err set, so one broken
// log does not hide the others from the report.
func RenderDir(dir string) ([]Plot, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("losscurve: %w", err)
	}
	var names []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".csv") && !strings.HasPrefix(e.Name(), ".") && !e.IsDir() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	var plots []Plot
	for _, n := range names {
		stage := strings.TrimSuffix(n, ".csv")
		p := Plot{Stage: stage, CSV: filepath.Join(dir, n), Path: filepath.Join(dir, stage+".svg")}
		rows, err := readFile(p.CSV)
		if err != nil {
			p.Err = err
			plots = append(plots, p)
			continue
		}
		p.Rows = len(rows)
		p.SVG = SVG(stage, rows)
		if err := writeAtomic(p.Path, p.SVG); err != nil {
			return plots, err
		}
		plots = append(plots, p)
	}
	return plots, nil
}

func readFile(path string) ([]Row, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("losscurve: %w", err)
	}
	defer f.Close()
	rows, err := Read(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return rows, nil
}

// writeAtomic writes through a temporary file and a rename, so a report being built never embeds half a plot.
func writeAtomic(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".curve-*.svg")
	if err != nil {
		return fmt.Errorf("losscurve: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("losscurve: writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("losscurve: writing %s: %w", path, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("losscurve: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("losscurve: writing %s: %w", path, err)
	}
	return nil
}

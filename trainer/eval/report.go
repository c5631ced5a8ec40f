package eval

import (
	"bytes"
	"encoding/base64"
	"encoding/csv"
	"fmt"
	"html/template"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/losscurve"
	"github.com/vlmdiff/edge/trainer/metrics"
)

// Report file names inside the output directory.
const (
	TableFile   = "results.txt"  // the seed's table (per class + mean, x100)
	JSONFile    = "metrics.json" // trainer/metrics JSON
	CSVFile     = "metrics.csv"  // trainer/metrics CSV
	ScoresFile  = "scores.csv"   // one row per image
	HTMLFile    = "report.html"  // self-contained: table, ROC/PR curves, heatmaps
	RegionsFile = "regions.txt"  // AU-PRO by ground-truth region size (metrics.RegionRecall), per class
	heatmapSize = 160            // px, displayed size of heatmaps in the HTML report
)

// ReportInfo is the context printed at the top of the HTML report.
type ReportInfo struct {
	Title   string
	Bundle  string
	Dataset string
	Created time.Time
	// CurvesDir, when set, is a run directory (or one curves directory): every <stage>.csv of its curves
	// (losscurve.RenderRun: RUN/<stage>/curves, RUN/curves) is rendered to <stage>.svg beside it and the plots
	// are embedded in the HTML report and linked, so the report shows whether each training stage converged.
	// A run without curves leaves the section out.
	CurvesDir string
	// Validation, when set, is the synthetic-defect validation set's report, shown as its own table above the
	// test table and written as validation_<file> beside the test files: the numbers used to choose defaults are
	// never mixed up with the test numbers.
	Validation *ValidationReport
	// Baseline, when set, is the mean-diff baseline on the same sets (CompareMeanDiff): written as baseline.json
	// and shown as a table per set with the verdict, so a report says whether the bundle beats a detector that
	// knows only the average normal frame.
	Baseline []BaselineResult
}

// ValidationReport is a second evaluation (synthetic defects painted on held-out normals) shown beside the test.
type ValidationReport struct {
	Dataset string
	Report  metrics.Report
	// ByDefect, when set, is the same set's metrics by defect kind (ByDefect), written as validation_defects.txt
	// and shown under the validation table.
	ByDefect *metrics.Report
}

// DefectsTableFile is the validation set's table by defect kind (with ValidationPrefix).
const DefectsTableFile = "defects.txt"

// ValidationPrefix is prepended to the table, JSON and CSV file names of the validation report.
const ValidationPrefix = "validation_"

// WriteReports writes the table, JSON, CSV, per-image scores and the HTML report into dir. s renders the
// heatmaps (nil leaves them out).
func WriteReports(dir string, rep metrics.Report, res []ImageResult, s *pipeline.Scorer, info ReportInfo) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	write := func(name string, fn func(*bytes.Buffer) error) error {
		var b bytes.Buffer
		if err := fn(&b); err != nil {
			return fmt.Errorf("report: %s: %w", name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b.Bytes(), 0o644); err != nil {
			return fmt.Errorf("report: %w", err)
		}
		return nil
	}
	if err := write(TableFile, func(b *bytes.Buffer) error { return rep.WriteTable(b) }); err != nil {
		return err
	}
	if err := write(JSONFile, func(b *bytes.Buffer) error { return rep.WriteJSON(b) }); err != nil {
		return err
	}
	if err := write(CSVFile, func(b *bytes.Buffer) error { return rep.WriteCSV(b) }); err != nil {
		return err
	}
	if err := write(ScoresFile, func(b *bytes.Buffer) error { return writeScores(b, res) }); err != nil {
		return err
	}
	if err := write(RegionsFile, func(b *bytes.Buffer) error { return rep.WriteRegions(b) }); err != nil {
		return err
	}
	if v := info.Validation; v != nil {
		if err := write(ValidationPrefix+TableFile, func(b *bytes.Buffer) error { return v.Report.WriteTable(b) }); err != nil {
			return err
		}
		if err := write(ValidationPrefix+JSONFile, func(b *bytes.Buffer) error { return v.Report.WriteJSON(b) }); err != nil {
			return err
		}
		if err := write(ValidationPrefix+CSVFile, func(b *bytes.Buffer) error { return v.Report.WriteCSV(b) }); err != nil {
			return err
		}
		if err := write(ValidationPrefix+RegionsFile, func(b *bytes.Buffer) error { return v.Report.WriteRegions(b) }); err != nil {
			return err
		}
		if v.ByDefect != nil {
			if err := write(ValidationPrefix+DefectsTableFile, func(b *bytes.Buffer) error { return v.ByDefect.WriteTable(b) }); err != nil {
				return err
			}
		}
	}
	if len(info.Baseline) > 0 {
		if err := write(BaselineFile, func(b *bytes.Buffer) error { return writeBaselineJSON(b, info.Baseline) }); err != nil {
			return err
		}
	}
	var plots []losscurve.Plot
	if info.CurvesDir != "" {
		var err error
		if plots, err = losscurve.RenderRun(info.CurvesDir); err != nil {
			return fmt.Errorf("report: %w", err)
		}
	}
	return write(HTMLFile, func(b *bytes.Buffer) error { return writeHTML(b, dir, rep, res, s, info, plots) })
}

func writeScores(b *bytes.Buffer, res []ImageResult) error {
	w := csv.NewWriter(b)
	_ = w.Write([]string{"path", "class", "split", "label", "defect", "raw_score", "score", "verdict", "anomaly_area_pct"})
	for _, r := range res {
		_ = w.Write([]string{r.Item.Path, r.Item.Class, r.Item.Split, strconv.Itoa(r.Item.Label), r.Item.Defect,
			strconv.FormatFloat(r.Result.RawScore, 'g', 8, 64), strconv.FormatFloat(r.Result.Score, 'f', 4, 64),
			r.Result.Verdict, strconv.FormatFloat(r.Result.AnomalyAreaPct, 'f', 3, 64)})
	}
	w.Flush()
	return w.Error()
}

// point is one curve point in [0,1]^2.
type point struct{ X, Y float64 }

// Curves returns the image-level ROC (FPR, TPR) and precision-recall (recall, precision) curves of scores,
// one point per distinct threshold, as sklearn's roc_curve and precision_recall_curve compute them.
func Curves(scores []float64, positive []bool) (roc, pr []point) {
	idx := make([]int, len(scores))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return scores[idx[a]] > scores[idx[b]] })
	P, N := 0.0, 0.0
	for _, p := range positive {
		if p {
			P++
		} else {
			N++
		}
	}
	if P == 0 || N == 0 {
		return nil, nil
	}
	roc = append(roc, point{0, 0})
	pr = append(pr, point{0, 1})
	tp, fp := 0.0, 0.0
	for k := 0; k < len(idx); k++ {
		if positive[idx[k]] {
			tp++
		} else {
			fp++
		}
		if k+1 < len(idx) && scores[idx[k+1]] == scores[idx[k]] {
			continue
		}
		roc = append(roc, point{fp / N, tp / P})
		pr = append(pr, point{tp / P, tp / (tp + fp)})
	}
	return roc, pr
}

func svgCurve(title string, pts []point, xLabel, yLabel string, diagonal bool) template.HTML {
	const W, H, pad = 220.0, 220.0, 30.0
	sx := func(x float64) float64 { return pad + x*(W-2*pad) }
	sy := func(y float64) float64 { return H - pad - y*(H-2*pad) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f">`, W, H, W, H)
	fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="#fff" stroke="#999"/>`, pad, pad, W-2*pad, H-2*pad)
	if diagonal {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ccc" stroke-dasharray="4"/>`, sx(0), sy(0), sx(1), sy(1))
	}
	if len(pts) > 0 {
		b.WriteString(`<polyline fill="none" stroke="#c0392b" stroke-width="2" points="`)
		for _, p := range pts {
			fmt.Fprintf(&b, "%.1f,%.1f ", sx(p.X), sy(p.Y))
		}
		b.WriteString(`"/>`)
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="18" font-size="12" text-anchor="middle">%s</text>`, W/2, template.HTMLEscapeString(title))
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" font-size="10" text-anchor="middle">%s</text>`, W/2, H-8, template.HTMLEscapeString(xLabel))
	fmt.Fprintf(&b, `<text x="10" y="%.0f" font-size="10" text-anchor="middle" transform="rotate(-90 10 %.0f)">%s</text>`, H/2, H/2, template.HTMLEscapeString(yLabel))
	for _, t := range []float64{0, 0.5, 1} {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="9" text-anchor="middle">%g</text>`, sx(t), H-pad+11, t)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="9" text-anchor="end">%g</text>`, pad-3, sy(t)+3, t)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

type htmlImage struct {
	Caption string
	Src     template.URL
	Err     string
}

type htmlClass struct {
	Name     string
	ROC, PR  template.HTML
	Examples []htmlImage
}

// htmlTable is one metrics table of the report.
type htmlTable struct {
	Caption string
	Dataset string
	Head    []string
	Rows    [][]string
	Note    string // the paper-flip note, when requested
}

// htmlCurve is one training stage's loss plot.
type htmlCurve struct {
	Stage string
	Link  string // the SVG's path relative to the report, for opening it alone
	SVG   template.HTML
	Err   string
}

type htmlData struct {
	Info    ReportInfo
	Tables  []htmlTable
	Curves  []htmlCurve
	Classes []htmlClass
}

var htmlTmpl = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{{.Info.Title}}</title>
<style>
body{font-family:sans-serif;margin:20px;color:#222} table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right} th:first-child,td:first-child{text-align:left}
tr:last-child{font-weight:bold} .cls{margin:18px 0;padding-top:8px;border-top:1px solid #ddd}
.row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start} figure{margin:0;font-size:11px;max-width:{{.Size}}px}
img{width:{{.Size}}px;height:{{.Size}}px;image-rendering:pixelated} .note{color:#a00;font-weight:bold}
#curves figure{max-width:none}
</style></head><body>
<h1>{{.Info.Title}}</h1>
<p>bundle: {{.Info.Bundle}}<br>data: {{.Info.Dataset}}<br>created: {{.Info.Created.Format "2006-01-02 15:04:05 MST"}}</p>
<p>Metrics x100, per class and their mean (seed format). Image scores are the pipeline's raw pooled-max scores;
pixel metrics use the anomaly maps against the masks resized as the reference does (bilinear, &gt;0).</p>
{{range .Tables}}<h2>{{.Caption}}</h2>{{if .Dataset}}<p>data: {{.Dataset}}</p>{{end}}
<table><tr>{{range .Head}}<th>{{.}}</th>{{end}}</tr>
{{range .Rows}}<tr>{{range .}}<td>{{.}}</td>{{end}}</tr>{{end}}</table>
{{if .Note}}<p class="note">{{.Note}}</p>{{end}}{{end}}
{{if .Curves}}<h2>Training loss curves</h2><div class="row" id="curves">
{{range .Curves}}<figure id="curve-{{.Stage}}">{{if .SVG}}{{.SVG}}<figcaption><a href="{{.Link}}">{{.Stage}}.svg</a></figcaption>{{else}}<div>{{.Stage}}: {{.Err}}</div>{{end}}</figure>{{end}}
</div>{{end}}
{{range .Classes}}<div class="cls"><h2>{{.Name}}</h2><div class="row">{{.ROC}}{{.PR}}
{{range .Examples}}<figure>{{if .Src}}<img src="{{.Src}}" alt="heatmap">{{else}}<div>{{.Err}}</div>{{end}}<figcaption>{{.Caption}}</figcaption></figure>{{end}}
</div></div>{{end}}
</body></html>
`))

// parseTable turns the report's seed-format table back into cells, so the HTML and results.txt always agree.
func parseTable(rep metrics.Report) (head []string, rows [][]string, err error) {
	var t bytes.Buffer
	if err := rep.WriteTable(&t); err != nil {
		return nil, nil, err
	}
	lines := strings.Split(strings.TrimSpace(t.String()), "\n")
	for i, ln := range lines {
		if i == 1 || !strings.HasPrefix(ln, "|") {
			continue // the alignment row, the flip note
		}
		cells := strings.Split(strings.Trim(ln, "|"), "|")
		for j := range cells {
			cells[j] = strings.TrimSpace(cells[j])
		}
		if i == 0 {
			head = cells
		} else {
			rows = append(rows, cells)
		}
	}
	return head, rows, nil
}

func writeHTML(b *bytes.Buffer, dir string, rep metrics.Report, res []ImageResult, s *pipeline.Scorer, info ReportInfo, plots []losscurve.Plot) error {
	if info.Title == "" {
		info.Title = "vlmdiff evaluation"
	}
	if info.Created.IsZero() {
		info.Created = time.Now()
	}
	d := struct {
		htmlData
		Size int
	}{Size: heatmapSize}
	d.Info = info
	if v := info.Validation; v != nil {
		head, rows, err := parseTable(v.Report)
		if err != nil {
			return err
		}
		d.Tables = append(d.Tables, htmlTable{Caption: "Synthetic validation (synthetic defects on held-out normals; used to choose defaults)",
			Dataset: v.Dataset, Head: head, Rows: rows, Note: v.Report.FlipNote()})
		d.Tables = appendRegions(d.Tables, "Synthetic validation", v.Report)
		if v.ByDefect != nil {
			head, rows, err := parseTable(*v.ByDefect)
			if err != nil {
				return err
			}
			d.Tables = append(d.Tables, htmlTable{Caption: "Synthetic validation by defect kind (each kind against all the normals; mean over classes)",
				Dataset: v.Dataset, Head: head, Rows: rows, Note: v.ByDefect.FlipNote()})
		}
	}
	head, rows, err := parseTable(rep)
	if err != nil {
		return err
	}
	caption := "Test"
	if info.Validation != nil {
		caption = "Test (the dataset test split; never used to choose anything)"
	}
	d.Tables = append(d.Tables, htmlTable{Caption: caption, Dataset: info.Dataset, Head: head, Rows: rows, Note: rep.FlipNote()})
	d.Tables = appendRegions(d.Tables, "Test", rep)
	for _, br := range info.Baseline {
		head, rows, err := parseTable(br.Report)
		if err != nil {
			return err
		}
		d.Tables = append(d.Tables, htmlTable{Caption: "Baseline " + BaselineMeanDiff + " on the " + br.Set + " set (per-pixel difference from each class's mean training frame)",
			Head: head, Rows: rows, Note: "bundle vs baseline: " + br.Verdict()})
	}
	for _, p := range plots {
		hc := htmlCurve{Stage: p.Stage}
		if p.Err != nil {
			hc.Err = p.Err.Error()
		} else {
			hc.SVG = template.HTML(p.SVG) // written by losscurve.SVG, which escapes its only text input
			hc.Link = p.Path
			if r, err := filepath.Rel(dir, p.Path); err == nil {
				hc.Link = filepath.ToSlash(r)
			}
		}
		d.Curves = append(d.Curves, hc)
	}
	byClass := map[string][]ImageResult{}
	for _, r := range res {
		byClass[r.Item.Class] = append(byClass[r.Item.Class], r)
	}
	for _, cr := range rep.Classes {
		rs := byClass[cr.Class]
		scores := make([]float64, len(rs))
		pos := make([]bool, len(rs))
		for i, r := range rs {
			scores[i], pos[i] = r.Result.RawScore, r.Item.Label == 1
		}
		roc, pr := Curves(scores, pos)
		hc := htmlClass{Name: cr.Class,
			ROC: svgCurve(fmt.Sprintf("ROC (I-AUROC %.1f)", 100*cr.ImageAUROC), roc, "false positive rate", "true positive rate", true),
			PR:  svgCurve(fmt.Sprintf("PR (I-AP %.1f)", 100*cr.ImageAP), pr, "recall", "precision", false)}
		if s != nil {
			hc.Examples = examples(rs, s)
		}
		d.Classes = append(d.Classes, hc)
	}
	return htmlTmpl.Execute(b, d)
}

// appendRegions adds the report's regions by size (metrics.Report.RegionTable) as a table under the set's own,
// when any class has ground-truth regions.
func appendRegions(tables []htmlTable, set string, rep metrics.Report) []htmlTable {
	head, rows := rep.RegionTable()
	if head == nil {
		return tables
	}
	return append(tables, htmlTable{Caption: set + ": AU-PRO by ground-truth region size", Head: head, Rows: rows, Note: rep.RegionNote()})
}

// examples picks the class's telling heatmaps: the best-detected anomaly (highest score), the worst-detected
// anomaly (lowest score) and the worst normal image (highest score, the likeliest false alarm).
func examples(rs []ImageResult, s *pipeline.Scorer) []htmlImage {
	var bestA, worstA, worstN *ImageResult
	for i := range rs {
		r := &rs[i]
		if r.Item.Label == 1 {
			if bestA == nil || r.Result.RawScore > bestA.Result.RawScore {
				bestA = r
			}
			if worstA == nil || r.Result.RawScore < worstA.Result.RawScore {
				worstA = r
			}
		} else if worstN == nil || r.Result.RawScore > worstN.Result.RawScore {
			worstN = r
		}
	}
	var out []htmlImage
	for _, e := range []struct {
		what string
		r    *ImageResult
	}{{"best anomaly", bestA}, {"worst anomaly", worstA}, {"worst normal", worstN}} {
		if e.r == nil {
			continue
		}
		name := filepath.Join(filepath.Base(filepath.Dir(e.r.Item.Path)), filepath.Base(e.r.Item.Path))
		hi := htmlImage{Caption: fmt.Sprintf("%s: %s (raw %.4g)", e.what, name, e.r.Result.RawScore)}
		img, err := pipeline.ReadImage(e.r.Item.Path)
		if err == nil {
			var png []byte
			if png, err = s.Heatmap(img, &e.r.Result, "png"); err == nil {
				hi.Src = template.URL("data:image/png;base64," + base64.StdEncoding.EncodeToString(png))
			}
		}
		if err != nil {
			hi.Err = err.Error()
		}
		out = append(out, hi)
	}
	return out
}

// UnflippedAUROC is the plain ROC AUC (the Mann-Whitney statistic, ties counted half), without the seed's
// "1-AUC below 0.5" flip: controls use it, because a pipeline with swapped labels must score near 0, not 1.
func UnflippedAUROC(scores []float64, positive []bool) float64 {
	var num, pairs float64
	for i := range scores {
		if !positive[i] {
			continue
		}
		for j := range scores {
			if positive[j] {
				continue
			}
			pairs++
			switch {
			case scores[i] > scores[j]:
				num++
			case scores[i] == scores[j]:
				num += 0.5
			}
		}
	}
	if pairs == 0 {
		return math.NaN()
	}
	return num / pairs
}

package metrics

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// MeanRow is the name of the mean row in tables and files, as in the seed.
const MeanRow = "mean"

// WriteTable prints the report as the seed logs it (tabulate "pipe" format, centred): a row per class and the
// mean row, the seven metrics x100 with two decimals; "nan" where undefined.
func (r Report) WriteTable(w io.Writer) error {
	head := []string{"clsname"}
	if r.RowTitle != "" {
		head[0] = r.RowTitle
	}
	for _, m := range metricNames {
		head = append(head, m.Title)
	}
	rows := [][]string{}
	add := func(name string, m Metrics) {
		row := []string{name}
		for _, v := range m.values() {
			row = append(row, pct(v))
		}
		rows = append(rows, row)
	}
	for _, c := range r.Classes {
		add(c.Class, c.Metrics)
	}
	add(MeanRow, r.Mean)

	var b strings.Builder
	writePipeTable(&b, head, rows)
	if r.PaperAUROCFlip {
		b.WriteString(r.FlipNote() + "\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writePipeTable writes head and rows in tabulate's "pipe" format, every cell centred in its column.
func writePipeTable(b *strings.Builder, head []string, rows [][]string) {
	width := make([]int, len(head))
	for i, h := range head {
		width[i] = len(h)
	}
	for _, row := range rows {
		for i, c := range row {
			width[i] = max(width[i], len(c))
		}
	}
	line := func(cells []string) {
		b.WriteString("|")
		for i, c := range cells {
			pad := width[i] - len(c)
			b.WriteString(" " + strings.Repeat(" ", pad/2) + c + strings.Repeat(" ", pad-pad/2) + " |")
		}
		b.WriteString("\n")
	}
	line(head)
	b.WriteString("|")
	for _, wd := range width {
		b.WriteString(":" + strings.Repeat("-", wd) + ":|")
	}
	b.WriteString("\n")
	for _, row := range rows {
		line(row)
	}
}

// FlipNote says whether the paper's AUROC flip was applied and to which values; "" when it was not requested.
func (r Report) FlipNote() string {
	if !r.PaperAUROCFlip {
		return ""
	}
	if len(r.Flipped) == 0 {
		return "paper AUROC flip (1 - AUC below 0.5) requested; no value was below 0.5, all AUROCs are true"
	}
	return "paper AUROC flip (1 - AUC below 0.5) APPLIED to: " + strings.Join(r.Flipped, "; ")
}

func pct(v float64) string {
	if math.IsNaN(v) {
		return "nan"
	}
	return strconv.FormatFloat(100*v, 'f', 2, 64)
}

// jsonMetrics is the JSON form of Metrics: fractions, null where undefined (JSON has no NaN).
type jsonMetrics map[string]*float64

func (m Metrics) toJSON() jsonMetrics {
	out := jsonMetrics{}
	for i, v := range m.values() {
		if math.IsNaN(v) {
			out[metricNames[i].Key] = nil
			continue
		}
		v := v
		out[metricNames[i].Key] = &v
	}
	return out
}

// MarshalJSON writes the metrics under the keys i_auroc, i_ap, i_f1max, p_auroc, p_ap, p_f1max, au_pro, as
// fractions, with null for undefined values.
func (m Metrics) MarshalJSON() ([]byte, error) { return json.Marshal(m.toJSON()) }

// UnmarshalJSON reads what MarshalJSON writes; null and absent keys read as NaN.
func (m *Metrics) UnmarshalJSON(b []byte) error {
	var j jsonMetrics
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	v := make([]float64, len(metricNames))
	for i, n := range metricNames {
		v[i] = math.NaN()
		if p := j[n.Key]; p != nil {
			v[i] = *p
		}
	}
	*m = metricsFrom(v)
	return nil
}

type jsonClass struct {
	Class     string        `json:"class"`
	Images    int           `json:"images"`
	Anomalous int           `json:"anomalous"`
	Metrics   Metrics       `json:"metrics"`
	Regions   *RegionRecall `json:"regions,omitempty"`
}

type jsonReport struct {
	Classes        []jsonClass `json:"classes"`
	Mean           Metrics     `json:"mean"`
	PaperAUROCFlip bool        `json:"paper_auroc_flip,omitempty"`
	Flipped        []string    `json:"auroc_flipped,omitempty"`
}

// MarshalJSON writes {"classes":[{"class","images","anomalous","metrics":{...},"regions":{...}}],"mean":{...}};
// "regions" (RegionRecall) only for a class with ground-truth regions.
func (r Report) MarshalJSON() ([]byte, error) {
	j := jsonReport{Classes: []jsonClass{}, Mean: r.Mean, PaperAUROCFlip: r.PaperAUROCFlip, Flipped: r.Flipped}
	for _, c := range r.Classes {
		j.Classes = append(j.Classes, jsonClass{c.Class, c.Images, c.Anomalous, c.Metrics, c.Regions})
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads what MarshalJSON writes.
func (r *Report) UnmarshalJSON(b []byte) error {
	var j jsonReport
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*r = Report{Mean: j.Mean, PaperAUROCFlip: j.PaperAUROCFlip, Flipped: j.Flipped}
	for _, c := range j.Classes {
		r.Classes = append(r.Classes, ClassReport{c.Class, c.Images, c.Anomalous, c.Metrics, c.Regions})
	}
	return nil
}

// WriteJSON writes the report as indented JSON.
func (r Report) WriteJSON(w io.Writer) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("metrics: encoding report: %w", err)
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// WriteCSV writes a header (class, images, anomalous, then the metric keys) and one row per class plus the mean
// row, metrics as fractions with full precision; undefined values are empty cells.
func (r Report) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	head := []string{"class", "images", "anomalous"}
	for _, m := range metricNames {
		head = append(head, m.Key)
	}
	if err := cw.Write(head); err != nil {
		return err
	}
	row := func(name string, n, a string, m Metrics) error {
		rec := []string{name, n, a}
		for _, v := range m.values() {
			if math.IsNaN(v) {
				rec = append(rec, "")
			} else {
				rec = append(rec, strconv.FormatFloat(v, 'g', -1, 64))
			}
		}
		return cw.Write(rec)
	}
	images, anomalous := 0, 0
	for _, c := range r.Classes {
		if err := row(c.Class, strconv.Itoa(c.Images), strconv.Itoa(c.Anomalous), c.Metrics); err != nil {
			return err
		}
		images += c.Images
		anomalous += c.Anomalous
	}
	if err := row(MeanRow, strconv.Itoa(images), strconv.Itoa(anomalous), r.Mean); err != nil {
		return err
	}
	cw.Flush()
	return cw.Error()
}

package yamlconf

import (
	"strings"
	"testing"
	"time"
)

type inner struct {
	Path  string   `yaml:"path"`
	Count int      `yaml:"count"`
	Tags  []string `yaml:"tags"`
}

type doc struct {
	Name    string         `yaml:"name"`
	Port    int            `yaml:"port"`
	On      bool           `yaml:"on"`
	Wait    time.Duration  `yaml:"wait"`
	Inner   inner          `yaml:"inner"`
	Items   []inner        `yaml:"items"`
	Extra   map[string]any `yaml:"extra"`
	Layers  [][2]any       `yaml:"layers"`
	Comment string         `yaml:"comment"`
}

// TestSubstitution is the ${VAR} rule, case by case.
func TestSubstitution(t *testing.T) {
	env := map[string]string{"HOST": "cam.local", "PORT": "1884", "EMPTY": "", "SECRET": "a: b # c", "YES": "true"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	for _, tc := range []struct {
		name, yaml string
		check      func(d doc) bool
		err        string // substring of the error; "" = no error
	}{
		{"set", "name: ${HOST}", func(d doc) bool { return d.Name == "cam.local" }, ""},
		{"inside text", "name: rtsp://${HOST}:554/x", func(d doc) bool { return d.Name == "rtsp://cam.local:554/x" }, ""},
		{"unset", "name: ${NOPE}", nil, "name: environment variable NOPE is not set (line 1)"},
		{"set but empty counts as unset", "name: ${EMPTY}", nil, "EMPTY is not set"},
		{"default when unset", "name: ${NOPE:-fallback}", func(d doc) bool { return d.Name == "fallback" }, ""},
		{"default when empty", "name: ${EMPTY:-fallback}", func(d doc) bool { return d.Name == "fallback" }, ""},
		{"default ignored when set", "name: ${HOST:-fallback}", func(d doc) bool { return d.Name == "cam.local" }, ""},
		{"empty default", "name: x${NOPE:-}y", func(d doc) bool { return d.Name == "xy" }, ""},
		{"escaped dollar", "name: $${HOST} costs $$5", func(d doc) bool { return d.Name == "${HOST} costs $5" }, ""},
		{"lone dollar kept", "name: a$b", func(d doc) bool { return d.Name == "a$b" }, ""},
		{"unquoted number", "port: ${PORT}", func(d doc) bool { return d.Port == 1884 }, ""},
		{"unquoted bool", "on: ${YES}", func(d doc) bool { return d.On }, ""},
		{"default typed", "wait: ${NOPE:-2s}", func(d doc) bool { return d.Wait == 2*time.Second }, ""},
		{"quoted stays a string", `name: "${PORT}"`, func(d doc) bool { return d.Name == "1884" }, ""},
		{"quoted into an int fails naming the field", `port: "${PORT}"`, nil, "port:"},
		{"YAML syntax in a value stays a value", "name: ${SECRET}\nport: 1", func(d doc) bool { return d.Name == "a: b # c" && d.Port == 1 }, ""},
		{"nested mapping", "inner:\n  path: /d/${HOST}\n  count: ${PORT}", func(d doc) bool { return d.Inner.Path == "/d/cam.local" && d.Inner.Count == 1884 }, ""},
		{"nested list", "items:\n  - tags: [a, '${HOST}']\n  - path: ${NOPE:-p}", func(d doc) bool {
			return len(d.Items) == 2 && d.Items[0].Tags[1] == "cam.local" && d.Items[1].Path == "p"
		}, ""},
		{"nested unset names its path", "items:\n  - path: x\n  - path: ${NOPE}", nil, "items[1].path: environment variable NOPE is not set (line 3)"},
		{"free-form extra", "extra:\n  lr: ${PORT}\n  sched:\n    kind: ${NOPE:-cos}", func(d doc) bool {
			return d.Extra["lr"] == 1884 && d.Extra["sched"].(map[string]any)["kind"] == "cos"
		}, ""},
		{"keys are not substituted", "${HOST}: 1", nil, "${HOST}: unknown field"},
		{"comments are not substituted", "comment: x # ${NOPE}", func(d doc) bool { return d.Comment == "x" }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d doc
			err := Decode([]byte(tc.yaml), &d, lookup)
			switch {
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("error %v, want one containing %q", err, tc.err)
			case tc.err == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.check != nil && !tc.check(d):
				t.Fatalf("decoded %+v", d)
			}
		})
	}
}

// TestKeysAndTypes: unknown keys, repeats and type errors are named by path and line, all at once.
func TestKeysAndTypes(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		errs       []string
	}{
		{"near miss", "nmae: x", []string{`nmae: unknown field (line 1); did you mean "name"?`}},
		{"nested unknown", "items:\n  - path: a\n  - pth: b", []string{"items[1].pth: unknown field (line 3)"}},
		{"repeated", "name: a\nname: b", []string{"name: set twice (line 2)"}},
		{"wrong type", "inner: {count: many}", []string{"inner.count:", "(line 1)"}},
		{"mapping for a value", "name: {a: 1}", []string{"name: must be a single value, not a mapping"}},
		{"all problems at once", "nmae: x\nport: ${NOPE}\ninner: {cnt: 1}", []string{"nmae: unknown field", "port: environment variable NOPE", "inner.cnt: unknown field"}},
		{"syntax", "name: [", []string{"yaml:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d doc
			err := Decode([]byte(tc.yaml), &d, func(string) (string, bool) { return "", false })
			if err == nil {
				t.Fatal("no error")
			}
			for _, want := range tc.errs {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
		})
	}
}

func TestEmptyAndFixedArrays(t *testing.T) {
	d := doc{Name: "kept"}
	if err := Decode(nil, &d, nil); err != nil || d.Name != "kept" {
		t.Fatalf("empty document: %v, %+v", err, d)
	}
	if err := Decode([]byte("layers: [[conv1, 1.0], [conv2, 0.5]]"), &d, nil); err != nil || len(d.Layers) != 2 || d.Layers[1][0] != "conv2" {
		t.Fatalf("[][2]any: %v, %+v", err, d.Layers)
	}
}

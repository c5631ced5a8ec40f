package dashboard_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// codeBlock returns the first fenced block of the given language in docs/consumers.md.
func codeBlock(t *testing.T, lang string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "consumers.md"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	i := strings.Index(s, "```"+lang+"\n")
	if i < 0 {
		t.Fatalf("docs/consumers.md has no %s block", lang)
	}
	s = s[i+len(lang)+4:]
	j := strings.Index(s, "```")
	if j < 0 {
		t.Fatalf("unterminated %s block", lang)
	}
	return s[:j]
}

// TestNodeREDFlowInDoc: the Node-RED flow in docs/consumers.md is an importable array of nodes: unique ids,
// every wire and broker reference resolves, and the chain is mqtt in -> json -> ... -> switch on the verdict.
func TestNodeREDFlowInDoc(t *testing.T) {
	var nodes []map[string]any
	if err := json.Unmarshal([]byte(codeBlock(t, "json")), &nodes); err != nil {
		t.Fatalf("the Node-RED flow is not valid JSON: %v", err)
	}
	byID := map[string]map[string]any{}
	for _, n := range nodes {
		id, _ := n["id"].(string)
		if id == "" || n["type"] == nil {
			t.Fatalf("node without id/type: %v", n)
		}
		if byID[id] != nil {
			t.Errorf("duplicate id %q", id)
		}
		byID[id] = n
	}
	next := func(id string) []string {
		var out []string
		ws, _ := byID[id]["wires"].([]any)
		for _, port := range ws {
			targets, _ := port.([]any)
			for _, tgt := range targets {
				out = append(out, tgt.(string))
			}
		}
		return out
	}
	var resultIn string
	for id, n := range byID {
		if z, ok := n["z"].(string); ok && (byID[z] == nil || byID[z]["type"] != "tab") {
			t.Errorf("%s: z %q is not a tab in the flow", id, z)
		}
		for _, tgt := range next(id) {
			if byID[tgt] == nil {
				t.Errorf("%s wires to unknown node %q", id, tgt)
			}
		}
		if b, ok := n["broker"].(string); ok && n["type"] != "mqtt-broker" && (byID[b] == nil || byID[b]["type"] != "mqtt-broker") {
			t.Errorf("%s: broker %q is not an mqtt-broker node in the flow", id, b)
		}
		if n["type"] == "mqtt in" && strings.HasSuffix(n["topic"].(string), "/+/result") {
			resultIn = id
			if n["qos"] != "1" {
				t.Errorf("results subscription at QoS %v, want 1", n["qos"])
			}
		}
		if n["type"] == "switch" && len(next(id)) != int(n["outputs"].(float64)) {
			t.Errorf("switch %s: %v outputs but %d wired", id, n["outputs"], len(next(id)))
		}
	}
	if resultIn == "" {
		t.Fatal("no mqtt in node on <prefix>/+/result")
	}
	// Walk: mqtt in -> json -> (anything) -> switch on payload.verdict with NG and OK rules.
	if n := next(resultIn); len(n) != 1 || byID[n[0]]["type"] != "json" {
		t.Fatalf("mqtt in is not wired to a json node: %v", n)
	}
	seen, queue, found := map[string]bool{}, []string{resultIn}, false
	for len(queue) > 0 {
		id := queue[0]
		queue = queue[1:]
		if seen[id] {
			continue
		}
		seen[id] = true
		n := byID[id]
		if n["type"] == "switch" && n["property"] == "payload.verdict" {
			rules, _ := json.Marshal(n["rules"])
			found = strings.Contains(string(rules), `"NG"`) && strings.Contains(string(rules), `"OK"`)
		}
		queue = append(queue, next(id)...)
	}
	if !found {
		t.Error("no switch on payload.verdict (NG, OK) downstream of the results")
	}
}

// TestPythonSnippetInDoc: the paho snippet in docs/consumers.md at least compiles.
func TestPythonSnippetInDoc(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3")
	}
	f := filepath.Join(t.TempDir(), "snippet.py")
	if err := os.WriteFile(f, []byte(codeBlock(t, "python")), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(py, "-m", "py_compile", f).CombinedOutput(); err != nil {
		t.Errorf("python snippet does not compile: %v\n%s", err, out)
	}
}

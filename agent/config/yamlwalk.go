package config

import (
	"fmt"
	"reflect"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

func typeOf(v any) reflect.Type { return reflect.TypeOf(v) }

// yamlFields maps a struct type's YAML keys to their field types, following inline embedding.
func yamlFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if strings.Contains(opts, "inline") {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for k, v := range yamlFields(ft) {
					out[k] = v
				}
			}
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = f.Type
	}
	return out
}

// checkKeys walks the YAML tree against the Go type and reports every key that no field takes, with its path
// and line, so that "cameras[1].treshold" is refused as such rather than silently ignored.
func checkKeys(n *yaml.Node, t reflect.Type, path string) []error {
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return nil
		}
		return checkKeys(n.Content[0], t, path)
	}
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		return checkKeys(n.Alias, t, path)
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	// Types that decode themselves (durations, sizes, ...) are not walked.
	if reflect.PointerTo(t).Implements(reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()) {
		return checkValue(n, t, path)
	}
	var errs []error
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
				return nil
			}
			return []error{fmt.Errorf("%s: must be a mapping (line %d)", orRoot(path), n.Line)}
		}
		fields := yamlFields(t)
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Value == "<<" { // merge key: check the merged mapping against the same type
				errs = append(errs, checkKeys(v, t, path)...)
				continue
			}
			p := join(path, k.Value)
			ft, ok := fields[k.Value]
			if !ok {
				errs = append(errs, fmt.Errorf("%s: unknown field (line %d)%s", p, k.Line, suggest(k.Value, fields)))
				continue
			}
			if seen[k.Value] {
				errs = append(errs, fmt.Errorf("%s: set twice (line %d)", p, k.Line))
			}
			seen[k.Value] = true
			errs = append(errs, checkKeys(v, ft, p)...)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
				return nil
			}
			return []error{fmt.Errorf("%s: must be a list (line %d)", orRoot(path), n.Line)}
		}
		for i, c := range n.Content {
			errs = append(errs, checkKeys(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i))...)
		}
	case reflect.Map:
		if n.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				errs = append(errs, checkKeys(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value))...)
			}
		}
	default:
		if n.Kind == yaml.MappingNode || n.Kind == yaml.SequenceNode {
			return []error{fmt.Errorf("%s: must be a single value, not a %s (line %d)", orRoot(path),
				map[yaml.Kind]string{yaml.MappingNode: "mapping", yaml.SequenceNode: "list"}[n.Kind], n.Line)}
		}
		return checkValue(n, t, path)
	}
	return errs
}

// checkValue decodes one scalar on its own so that a type error names its field ("agent.shutdown_timeout:
// cannot read "soon" as a duration") instead of only a line number.
func checkValue(n *yaml.Node, t reflect.Type, path string) []error {
	if err := n.Decode(reflect.New(t).Interface()); err != nil {
		msg := err.Error()
		if i := strings.LastIndex(msg, ": "); i >= 0 && strings.Contains(msg, "unmarshal errors") {
			msg = msg[i+2:]
		}
		return []error{fmt.Errorf("%s: %s (line %d)", orRoot(path), msg, n.Line)}
	}
	return nil
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func orRoot(p string) string {
	if p == "" {
		return "(top level)"
	}
	return p
}

// suggest names a known key close to an unknown one (one edit away or a prefix), the common typo case.
func suggest(k string, fields map[string]reflect.Type) string {
	for f := range fields {
		if editDistance(k, f) <= 2 {
			return fmt.Sprintf("; did you mean %q?", f)
		}
	}
	return ""
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

var envRef = regexp.MustCompile(`\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}`)

// substitute replaces ${VAR} and ${VAR:-default} in every scalar value (never in keys), and "$$" by "$".
// Substitution happens on parsed scalars, not on the file's text, so a secret holding YAML syntax (": ", "#")
// cannot change the document's structure. An unset variable without a default is an error naming the field.
func substitute(n *yaml.Node, path string, lookup func(string) (string, bool)) []error {
	var errs []error
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			errs = append(errs, substitute(c, path, lookup)...)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			errs = append(errs, substitute(n.Content[i+1], join(path, n.Content[i].Value), lookup)...)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			errs = append(errs, substitute(c, fmt.Sprintf("%s[%d]", path, i), lookup)...)
		}
	case yaml.ScalarNode:
		if !strings.Contains(n.Value, "$") {
			return nil
		}
		changed := false
		out := envRef.ReplaceAllStringFunc(n.Value, func(m string) string {
			if m == "$$" {
				changed = true
				return "$"
			}
			sub := envRef.FindStringSubmatch(m)
			name, hasDef, def := sub[1], sub[2] != "", sub[3]
			if v, ok := lookup(name); ok && v != "" {
				changed = true
				return v
			}
			if hasDef {
				changed = true
				return def
			}
			errs = append(errs, fmt.Errorf("%s: environment variable %s is not set (line %d); set it or write ${%s:-default}",
				orRoot(path), name, n.Line, name))
			return m
		})
		if changed {
			n.Value = out
			// Let the substituted text resolve to its natural type (number, bool), as if written literally,
			// unless the value was quoted in the file.
			if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) == 0 {
				n.Tag = ""
			}
		}
	}
	return errs
}

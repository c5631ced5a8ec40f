package caption

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/vlmdiff/edge/trainer/dataset"
)

// Output file names.
const (
	CaptionsFile = "captions.json"        // {"<image path>": "<caption>"}
	DetailFile   = "captions_detail.json" // [Caption...]: source, cache hits and errors per item
)

// SeedLayout names the VLMDiff caption files (captioner_lmdeploy_deepseekvl.py, read back by
// data_loaders/data_utils.py:get_captions): the directory <dataset>_captions_<model>_<prompt> holding
// {train,test}_captions_<dataset>_<model>.json (lists of captions) and {train,test}_labels_<dataset>_<model>.json
// (the image names, aligned), in dataset order. The seed's loaders assert that the names match their own file
// lists, so Root must be the directory the loader's names are relative to (its data root).
type SeedLayout struct {
	Dataset    string // e.g. mvtec, visa, realiad; default "custom"
	Model      string // the seed uses short tags (deepseekvl, internvl); default: the model name, sanitised
	PromptType string // "pd" for DefaultPrompt, else "custom" by default
	Root       string // names are relative to it; default: the deepest directory holding every image
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// Dir is the seed's caption directory name.
func (s SeedLayout) Dir() string {
	return fmt.Sprintf("%s_captions_%s_%s", s.Dataset, s.Model, s.PromptType)
}

func (s SeedLayout) withDefaults(caps []Caption, model, prompt string) SeedLayout {
	if s.Dataset == "" {
		s.Dataset = "custom"
	}
	if s.Model == "" {
		s.Model = model
	}
	s.Model = strings.Trim(unsafeName.ReplaceAllString(s.Model, "-"), "-")
	if s.Model == "" {
		s.Model = "model"
	}
	if s.PromptType == "" {
		s.PromptType = "custom"
		if prompt == "" || prompt == DefaultPrompt {
			s.PromptType = "pd"
		}
	}
	if s.Root == "" {
		s.Root = classRoot(caps)
	}
	return s
}

// classRoot guesses the seed's data root: the directory above the path component named like the class
// (<root>/bottle/train/good/000.png, <root>/candle/Data/Images/..., realiad_256/audiojack/OK/...), when every
// image agrees on it; otherwise the deepest directory holding every image.
func classRoot(caps []Caption) string {
	root := ""
	for _, c := range caps {
		r := ""
		for d := filepath.Dir(c.Path); d != filepath.Dir(d); d = filepath.Dir(d) {
			if filepath.Base(d) == c.Class {
				r = filepath.Dir(d)
				break
			}
		}
		if r == "" || (root != "" && r != root) {
			return commonDir(caps)
		}
		root = r
	}
	return root
}

// commonDir is the deepest directory that contains every caption's image.
func commonDir(caps []Caption) string {
	if len(caps) == 0 {
		return ""
	}
	dir := filepath.Dir(caps[0].Path)
	for _, c := range caps[1:] {
		for dir != filepath.Dir(dir) {
			if rel, err := filepath.Rel(dir, c.Path); err == nil && !strings.HasPrefix(rel, "..") {
				break
			}
			dir = filepath.Dir(dir)
		}
	}
	return dir
}

// WriteOutputs writes captions.json, captions_detail.json and, when every item has a caption, the seed's
// layout under dir. model and prompt are what the captions were made with (model "" for offline templates).
// Items without a caption are left out of captions.json and listed with their error in the detail file; the
// seed layout needs every item aligned, so it is then not written and the error says so.
func WriteOutputs(dir string, caps []Caption, model, prompt string, seed SeedLayout) error {
	flat := map[string]string{}
	missing := 0
	for _, c := range caps {
		if c.Source == "" {
			missing++
			continue
		}
		flat[c.Path] = c.Caption
	}
	if err := writeJSON(filepath.Join(dir, CaptionsFile), flat); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(dir, DetailFile), caps); err != nil {
		return err
	}
	if missing > 0 {
		return fmt.Errorf("caption: %d images have no caption: seed caption layout not written", missing)
	}
	if model == "" {
		model = SourceTemplate
	}
	seed = seed.withDefaults(caps, model, prompt)
	sdir := filepath.Join(dir, seed.Dir())
	for _, split := range []string{"train", "test"} {
		var texts, names []string
		for _, c := range caps {
			// The seed has no validation split: held-out train normals stay in its train lists.
			s := c.Split
			if s == dataset.SplitVal {
				s = dataset.SplitTrain
			}
			if s != split {
				continue
			}
			name, err := filepath.Rel(seed.Root, c.Path)
			if err != nil || strings.HasPrefix(name, "..") {
				return fmt.Errorf("caption: %s is not under the seed root %s", c.Path, seed.Root)
			}
			texts = append(texts, c.Caption)
			names = append(names, filepath.ToSlash(name))
		}
		if texts == nil {
			texts, names = []string{}, []string{}
		}
		base := fmt.Sprintf("%s_%s.json", seed.Dataset, seed.Model)
		if err := writeJSON(filepath.Join(sdir, split+"_captions_"+base), texts); err != nil {
			return err
		}
		if err := writeJSON(filepath.Join(sdir, split+"_labels_"+base), names); err != nil {
			return err
		}
	}
	return nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		return fmt.Errorf("caption: encoding %s: %w", path, err)
	}
	return writeAtomic(path, append(b, '\n'))
}

// ReadCaptions reads a captions.json map.
func ReadCaptions(path string) (map[string]string, error) {
	var m map[string]string
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("caption: %w", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("caption: %s: %w", path, err)
	}
	if m == nil {
		return nil, errors.New("caption: " + path + ": not an object")
	}
	return m, nil
}

package models

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const fixture = "testdata/fixture"

// copyBundle copies the fixture into a temp dir so a test can damage it.
func copyBundle(t *testing.T) string {
	t.Helper()
	dst := t.TempDir()
	ents, err := os.ReadDir(fixture)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(fixture, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func editManifest(t *testing.T, dir string, edit func(m map[string]any)) {
	t.Helper()
	p := filepath.Join(dir, ManifestFile)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	b, _ = json.Marshal(m)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// staticOf returns the fixture manifest's graphs.denoiser.static list.
func staticOf(m map[string]any) []any {
	return m["graphs"].(map[string]any)["denoiser"].(map[string]any)["static"].([]any)
}

func TestFixtureVerifies(t *testing.T) {
	b, err := Load(fixture)
	if err != nil {
		t.Fatal(err)
	}
	m := b.Manifest
	if len(b.Conditioning) != len(m.Conditioning.Entries) {
		t.Fatalf("%d conditioning rows for %d entries", len(b.Conditioning), len(m.Conditioning.Entries))
	}
	for _, role := range []string{RoleVAEEncoder, RoleHint, RoleDenoiser, RoleVAEDecoder, RoleFeatures} {
		io, err := ReadGraphIO(filepath.Join(fixture, m.Graphs[role].File))
		if err != nil {
			t.Fatalf("%s: %v", role, err)
		}
		if io.Opset == 0 || io.Opset > 17 {
			t.Errorf("%s: opset %d, want 1..17", role, io.Opset)
		}
	}
	if st := m.Graphs[RoleDenoiser].Static; len(st) != 1 || st[0].Batch != 1 || st[0].Context != m.Conditioning.Unconditional {
		t.Errorf("static denoisers %+v, want one of batch 1 with the unconditional context", st)
	}
	if tg := m.Graphs[RoleDenoiser].Time; tg == nil || len(tg.Outputs) == 0 || !m.Graphs[RoleDenoiser].Static[0].TimeInputs {
		t.Errorf("time graph %+v: want one whose outputs the batch-1 static graph takes", tg)
	}
}

// TestDamagedBundlesAreRefused: each kind of damage is refused by the check that finds it, naming the file.
func TestDamagedBundlesAreRefused(t *testing.T) {
	cases := []struct {
		name      string
		damage    func(t *testing.T, dir string)
		check     string
		file      string
		msgSubstr string
	}{
		{"one byte changed in a graph", func(t *testing.T, dir string) {
			p := filepath.Join(dir, "denoiser.onnx")
			b, _ := os.ReadFile(p)
			b[len(b)/2] ^= 0x01
			os.WriteFile(p, b, 0o644)
		}, "checksum", "denoiser.onnx", "sha256"},
		{"truncated graph", func(t *testing.T, dir string) {
			p := filepath.Join(dir, "vae_decoder.onnx")
			b, _ := os.ReadFile(p)
			os.WriteFile(p, b[:len(b)-10], 0o644)
		}, "checksum", "vae_decoder.onnx", "size"},
		{"missing graph", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, "hint.onnx"))
		}, "files", "hint.onnx", "no such file"},
		{"no manifest", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, ManifestFile))
		}, "manifest", ManifestFile, ""},
		{"manifest not JSON", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, ManifestFile), []byte("{not json"), 0o644)
		}, "manifest", ManifestFile, "invalid JSON"},
		{"unknown manifest field", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) { m["thresholdd"] = 1 })
		}, "manifest", ManifestFile, "unknown field"},
		{"newer format", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) { m["format"] = 2 })
		}, "schema", ManifestFile, "format"},
		{"pooling passes past a narrow input's width", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) { m["input"].(map[string]any)["width"] = 48 })
		}, "schema", ManifestFile, "8 pools of kernel 8 leave nothing of a 48x256 map"},
		{"bad schedule", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) { m["diffusion"].(map[string]any)["ddim_steps"] = 0 })
		}, "schema", ManifestFile, "diffusion.ddim_steps"},
		{"schedule past the last step", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) { m["diffusion"].(map[string]any)["ddim_steps"] = 3 })
		}, "schema", ManifestFile, "reaches timestep 1000"},
		{"sampler from a start step before the first DDIM step", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) {
				d := m["diffusion"].(map[string]any)
				d["start_step"], d["sampler_from_start_step"] = 0, true
			})
		}, "schema", ManifestFile, "diffusion.sampler_from_start_step"},
		{"guided filter wider than a quarter of the map", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) {
				m["map"].(map[string]any)["guided"] = map[string]any{"radius": 65, "eps": 1e-3}
			})
		}, "schema", ManifestFile, "map.guided.radius: must be from 1 to 64"},
		{"guided filter without a radius", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) { m["map"].(map[string]any)["guided"] = map[string]any{"eps": 1e-3} })
		}, "schema", ManifestFile, "map.guided.radius"},
		{"guided filter without regularisation", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) { m["map"].(map[string]any)["guided"] = map[string]any{"radius": 8, "eps": 0} })
		}, "schema", ManifestFile, "map.guided.eps: must be a finite number above 0, got 0"},
		{"match radius past the limit", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) {
				m["features"].(map[string]any)["layers"].([]any)[0].(map[string]any)["match"] = 4
			})
		}, "schema", ManifestFile, "features.layers[0].match: must be 0..3 cells, got 4"},
		{"match radius on token features", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) {
				f := m["features"].(map[string]any)
				f["tokens"] = true
				f["layers"].([]any)[1].(map[string]any)["match"] = 1
			})
		}, "schema", ManifestFile, "features.layers[1].match: is for map features"},
		{"ensemble past the limit", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) { m["diffusion"].(map[string]any)["ensemble"] = 17 })
		}, "schema", ManifestFile, "diffusion.ensemble"},
		{"negative ensemble", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) { m["diffusion"].(map[string]any)["ensemble"] = -1 })
		}, "schema", ManifestFile, "diffusion.ensemble"},
		{"map reference measured with another noise count", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) {
				m["diffusion"].(map[string]any)["ensemble"] = 4
				m["files"].(map[string]any)["map_reference.f32"] = map[string]any{"sha256": "00", "size": 4}
				m["map"].(map[string]any)["reference"] = map[string]any{"file": "map_reference.f32", "width": 256, "height": 256,
					"classes": []any{""}}
			})
		}, "schema", ManifestFile, "measured with 1 start noise(s), the bundle scores with diffusion.ensemble 4"},
		{"file outside the bundle", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) {
				m["files"].(map[string]any)["../evil.onnx"] = map[string]any{"sha256": "00", "size": 1}
			})
		}, "schema", ManifestFile, "relative path"},
		{"declared tensor absent from graph", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) {
				g := m["graphs"].(map[string]any)["vae_encoder"].(map[string]any)
				g["inputs"].([]any)[0].(map[string]any)["name"] = "pixels"
			})
		}, "graph", "vae_encoder.onnx", `"pixels"`},
		{"wrong rank declared", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) {
				g := m["graphs"].(map[string]any)["denoiser"].(map[string]any)
				for _, in := range g["inputs"].([]any) {
					if in.(map[string]any)["name"] == "t" {
						in.(map[string]any)["shape"] = []any{-1, 1}
					}
				}
			})
		}, "graph", "denoiser.onnx", "rank"},
		{"feature layer not an output", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) {
				m["features"].(map[string]any)["layers"].([]any)[0].(map[string]any)["name"] = "layer9"
			})
		}, "graph", "features.onnx", "layer9"},
		{"static denoiser of an unknown context", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) { staticOf(m)[0].(map[string]any)["context"] = "gadget" })
		}, "schema", ManifestFile, "graphs.denoiser.static[0].context"},
		{"two static denoisers of one batch size", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) {
				g := m["graphs"].(map[string]any)["denoiser"].(map[string]any)
				g["static"] = append(staticOf(m), staticOf(m)[0])
			})
		}, "schema", ManifestFile, "graphs.denoiser.static[1].batch"},
		{"static denoiser declared at another batch size", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) { staticOf(m)[0].(map[string]any)["batch"] = 3 })
		}, "graph", "denoiser_b1.onnx", "dim 0 is 1, manifest says 3"},
		{"static time inputs without a time graph", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) {
				delete(m["graphs"].(map[string]any)["denoiser"].(map[string]any), "time")
			})
		}, "schema", ManifestFile, "graphs.denoiser.static[0].time_inputs"},
		{"time tensor named like a denoiser input", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) {
				tg := m["graphs"].(map[string]any)["denoiser"].(map[string]any)["time"].(map[string]any)
				tg["outputs"].([]any)[1].(map[string]any)["name"] = "hint"
			})
		}, "schema", ManifestFile, "graphs.denoiser.time.outputs[1].name"},
		{"time tensor the time graph lacks", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) {
				tg := m["graphs"].(map[string]any)["denoiser"].(map[string]any)["time"].(map[string]any)
				tg["outputs"].([]any)[0].(map[string]any)["name"] = "temb.99"
			})
		}, "graph", "denoiser_time.onnx", `"temb.99"`},
		{"static graph without the time inputs it declares", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) { staticOf(m)[0].(map[string]any)["time_inputs"] = false })
		}, "graph", "denoiser_b1.onnx", "manifest declares 3 inputs"},
		{"conditioning of the wrong size", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m map[string]any) { m["conditioning"].(map[string]any)["dim"] = 17 })
		}, "conditioning", "conditioning.bin", "bytes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := copyBundle(t)
			c.damage(t, dir)
			err := Verify(dir)
			if err == nil {
				t.Fatal("damaged bundle was accepted")
			}
			var ce *CheckError
			if !errors.As(err, &ce) {
				t.Fatalf("error %v is not a CheckError", err)
			}
			if ce.Check != c.check || ce.File != c.file {
				t.Errorf("check %q file %q, want %q %q (%v)", ce.Check, ce.File, c.check, c.file, err)
			}
			if !strings.Contains(err.Error(), c.msgSubstr) || !strings.Contains(err.Error(), c.file) {
				t.Errorf("message %q should name %q and contain %q", err, c.file, c.msgSubstr)
			}
		})
	}
}

func TestRehashAcceptsEditedManifest(t *testing.T) {
	dir := copyBundle(t)
	m, err := ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	m.Calibration.Global.Threshold = 1.25
	if err := Rehash(dir, m); err != nil {
		t.Fatal(err)
	}
	b, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if b.Manifest.Calibration.Global.Threshold != 1.25 {
		t.Errorf("threshold %v after rewrite", b.Manifest.Calibration.Global.Threshold)
	}
}

func TestReadGraphIORejectsGarbage(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.onnx")
	os.WriteFile(p, []byte("this is not a protobuf at all \xff\xff\xff"), 0o644)
	if _, err := ReadGraphIO(p); err == nil {
		t.Error("garbage parsed as an ONNX model")
	}
}

// TestUndeclaredGraphOutputsAreAllowed: a supplied backbone may have outputs the bundle does not use; only
// the declared ones must exist. A declared input that the graph lacks is still refused (inputs are exact).
func TestUndeclaredGraphOutputsAreAllowed(t *testing.T) {
	dir := copyBundle(t)
	editManifest(t, dir, func(m map[string]any) {
		f := m["features"].(map[string]any)
		f["layers"] = f["layers"].([]any)[:1]
		g := m["graphs"].(map[string]any)["features"].(map[string]any)
		g["outputs"] = g["outputs"].([]any)[:1]
	})
	if err := Verify(dir); err != nil {
		t.Fatalf("bundle using one of two feature outputs refused: %v", err)
	}
	editManifest(t, dir, func(m map[string]any) {
		g := m["graphs"].(map[string]any)["hint"].(map[string]any)
		g["inputs"] = append(g["inputs"].([]any), map[string]any{"name": "extra", "type": "float32", "shape": []any{-1}})
	})
	if err := Verify(dir); err == nil || !strings.Contains(err.Error(), "hint.onnx") {
		t.Fatalf("extra declared input accepted or not named: %v", err)
	}
}

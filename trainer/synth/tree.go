package synth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// Normal is a normal image to paint defects on.
type Normal struct {
	Path  string
	Class string
}

// Summary counts what was written, per class: "train/good", "test/good", "test/<kind>".
type Summary map[string]map[string]int

// Summary keys besides the splits: draws redrawn because they stayed within the normals' own variation, and
// defect images not written because no kind of defect stood out there.
const (
	RedrawnFaint     = "faint draws redrawn"
	SkippedInvisible = "skipped (nothing visible)"
	// FloorResized counts defect images whose visibility floor was measured on the class's normals resized to
	// the frame's size (ResizedVariation), there being no other normal of that size.
	FloorResized = "floor on resized normals"
)

func (s Summary) add(class, what string) { s.addN(class, what, 1) }

func (s Summary) addN(class, what string, n int) {
	if n == 0 {
		return
	}
	if s[class] == nil {
		s[class] = map[string]int{}
	}
	s[class][what] += n
}

// Write prints one line per class.
func (s Summary) Write(w io.Writer) {
	classes := make([]string, 0, len(s))
	for c := range s {
		classes = append(classes, c)
	}
	sort.Strings(classes)
	for _, c := range classes {
		var parts []string
		for _, k := range sortedKeys(s[c]) {
			parts = append(parts, fmt.Sprintf("%s %d", k, s[c][k]))
		}
		fmt.Fprintf(w, "%-24s %s\n", c, strings.Join(parts, ", "))
	}
}

// readmeText is written at the root of every tree, so nobody mistakes it for training data.
const readmeText = `Written by vlmdiff synth. MVTec layout: <class>/test/good, <class>/test/<kind>/NAME.png,
<class>/ground_truth/<kind>/NAME_mask.png (255 = a pixel the defect changed, exactly). %s
`

// DefectsOptions configure WriteDefects.
type DefectsOptions struct {
	Out      string
	PerImage int // defect images per normal (default 2)
	Seed     uint64
	Kinds    []string // default all
	Params   Params   // zero value: DefaultParams
}

// WriteDefects writes a synthetic-defect validation set from normals: every normal is copied (re-encoded as PNG,
// pixels unchanged) to <class>/test/good and to <class>/train/good (the MVTec layout requires train/good; it
// holds the same held-out normals and is not for training), and PerImage defective copies go to
// <class>/test/<kind> with their masks. Kinds are cycled so every kind is represented; a cut-paste donor is
// another normal of the class (the image itself when it is the only one). Each defect is held against the
// variation among the class's normals of its frame size (Params.MinVisibility); where no draw of its kind
// stands out (ErrInvisible: a uniform background for a cut-paste, a texture that varies more than the allowed
// contrast) the other kinds are tried in turn, and where none does the defect image is skipped and counted
// (SkippedInvisible): a missing image costs the set one sample, a mislabelled one misleads every ranking made
// on it. A set with no defect at all is an error. Each defect depends only on the seed, the class, the
// normal's file name and its number.
func WriteDefects(ctx context.Context, normals []Normal, o DefectsOptions) (Summary, error) {
	if o.PerImage <= 0 {
		o.PerImage = 2
	}
	if len(o.Kinds) == 0 {
		o.Kinds = Defects
	}
	if o.Params == (Params{}) {
		o.Params = DefaultParams
	}
	if err := o.Params.Validate(); err != nil {
		return nil, err
	}
	if len(normals) == 0 {
		return nil, fmt.Errorf("synth: no normal images to paint defects on")
	}
	byClass := map[string][]Normal{}
	for _, n := range normals {
		byClass[n.Class] = append(byClass[n.Class], n)
	}
	classes := make([]string, 0, len(byClass))
	for c := range byClass {
		classes = append(classes, c)
	}
	sort.Strings(classes)
	sum := Summary{}
	painted := 0
	var lastInvisible error
	for _, class := range classes {
		ns := byClass[class]
		sort.Slice(ns, func(a, b int) bool { return ns[a].Path < ns[b].Path })
		imgs := make([]Image, len(ns))
		stems := map[string]string{}
		for i, n := range ns {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			stem := strings.TrimSuffix(filepath.Base(n.Path), filepath.Ext(n.Path))
			if prev, dup := stems[stem]; dup {
				return nil, fmt.Errorf("synth: class %s: %s and %s have the same name; rename one", class, prev, n.Path)
			}
			stems[stem] = n.Path
			img, err := Decode(n.Path)
			if err != nil {
				return nil, err
			}
			imgs[i] = img
		}
		root := filepath.Join(o.Out, class)
		var vars map[[3]int]*Variation
		if o.Params.MinVisibility > 0 { // the floor is off at 0: no variation to measure
			vars = variations(imgs, o.Params)
		}
		for i, n := range ns {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			stem := strings.TrimSuffix(filepath.Base(n.Path), filepath.Ext(n.Path))
			for _, split := range []string{"train", "test"} {
				if err := imgs[i].WritePNG(filepath.Join(root, split, "good", stem+".png")); err != nil {
					return nil, err
				}
				sum.add(class, split+"/good")
			}
			v := vars[o.Params.viewKey(imgs[i])]
			if v == nil && o.Params.MinVisibility > 0 {
				if v = ResizedVariation(imgs[i], imgs, o.Params); v != nil {
					sum.addN(class, FloorResized, o.PerImage)
				}
			}
			for k := 0; k < o.PerImage; k++ {
				kind := o.Kinds[(i*o.PerImage+k)%len(o.Kinds)]
				r := rngFor(o.Seed, "defect", class, stem, k)
				donor := &imgs[i]
				if len(imgs) > 1 {
					j := (i + 1 + r.IntN(len(imgs)-1)) % len(imgs)
					if imgs[j].C == imgs[i].C {
						donor = &imgs[j]
					}
				}
				kind, out, mask, err := paintVisible(imgs[i], kind, o.Kinds, donor, nil, v, o.Params, r, sum, class)
				if errors.Is(err, ErrInvisible) {
					// nothing of any kind stood out from the normals here: no defect image rather than a mislabelled one
					sum.add(class, SkippedInvisible)
					lastInvisible = fmt.Errorf("synth: %s: %w", n.Path, err)
					continue
				}
				if err != nil {
					return nil, fmt.Errorf("synth: %s: %w", n.Path, err)
				}
				name := fmt.Sprintf("%s_%d", stem, k)
				if err := writePair(root, kind, name, out, mask); err != nil {
					return nil, err
				}
				sum.add(class, "test/"+kind)
				painted++
			}
		}
	}
	if painted == 0 && lastInvisible != nil {
		return nil, fmt.Errorf("no defect could be painted that stands out from the normals (the last: %w)", lastInvisible)
	}
	return sum, writeReadme(o.Out, "The normals are held-out validation images of the source data; test/good and train/good both hold them. For evaluation only (vlmdiff eval --val-data), never for training.")
}

func writePair(root, kind, name string, img Image, mask []uint8) error {
	if err := img.WritePNG(filepath.Join(root, "test", kind, name+".png")); err != nil {
		return err
	}
	return WriteMask(filepath.Join(root, "ground_truth", kind, name+"_mask.png"), img.W, img.H, mask)
}

func writeReadme(out, what string) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	if err := os.WriteFile(filepath.Join(out, "README.txt"), []byte(fmt.Sprintf(readmeText, what)), 0o644); err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	return nil
}

// SurfacesOptions configure WriteSurfaces.
type SurfacesOptions struct {
	Out      string
	Classes  []ClassSpec
	Train    int // train/good images per class (default 40)
	TestGood int // test/good images per class (default 10)
	PerKind  int // test images per defect kind per class (default 5)
	Seed     uint64
	Kinds    []string
	Params   Params
}

// WriteSurfaces renders a complete MVTec-layout dataset of hard normal surfaces: per class, Train normals for
// training, TestGood normals and PerKind defective renders per kind for testing, with masks. Defective images
// are fresh renders (never copies of a train image), their cut-paste donors other fresh renders of the class;
// on the part family defects are placed on the part.
func WriteSurfaces(ctx context.Context, o SurfacesOptions) (Summary, error) {
	if o.Train <= 0 {
		o.Train = 40
	}
	if o.TestGood <= 0 {
		o.TestGood = 10
	}
	if o.PerKind <= 0 {
		o.PerKind = 5
	}
	if len(o.Kinds) == 0 {
		o.Kinds = Defects
	}
	if o.Params == (Params{}) {
		o.Params = DefaultParams
	}
	if err := o.Params.Validate(); err != nil {
		return nil, err
	}
	if len(o.Classes) == 0 {
		return nil, fmt.Errorf("synth: no classes to render")
	}
	seen := map[string]bool{}
	for _, c := range o.Classes {
		if seen[c.Name] {
			return nil, fmt.Errorf("synth: class %s given twice", c.Name)
		}
		seen[c.Name] = true
	}
	sum := Summary{}
	for _, spec := range o.Classes {
		root := filepath.Join(o.Out, spec.Name)
		var goods []Image
		for _, part := range []struct {
			split, dir string
			n          int
		}{{"train", "train", o.Train}, {"test", "test", o.TestGood}} {
			for i := 0; i < part.n; i++ {
				if err := ctx.Err(); err != nil {
					return nil, err
				}
				img, _ := Render(spec, o.Seed, part.split, i)
				if part.split == "test" && len(goods) <= maxVariationPairs {
					goods = append(goods, img)
				}
				if err := img.WritePNG(filepath.Join(root, part.dir, "good", fmt.Sprintf("%03d.png", i))); err != nil {
					return nil, err
				}
				sum.add(spec.Name, part.dir+"/good")
			}
		}
		var v *Variation
		if o.Params.MinVisibility > 0 {
			// the class's test normals at their view: how much its renders differ among themselves
			v = variations(goods, o.Params)[o.Params.viewKey(goods[0])]
		}
		for _, kind := range o.Kinds {
			for i := 0; i < o.PerKind; i++ {
				if err := ctx.Err(); err != nil {
					return nil, err
				}
				img, region := Render(spec, o.Seed, "defect-"+kind, i)
				donor, _ := Render(spec, o.Seed, "donor-"+kind, i)
				iv := v
				if o.Params.MinVisibility > 0 && spec.MaxW > 0 && !v.fits(o.Params.viewKey(img)) { // a class of many frame sizes
					if iv = ResizedVariation(img, goods, o.Params); iv != nil {
						sum.add(spec.Name, FloorResized)
					}
				}
				out, mask, faint, err := PaintAmong(img, kind, &donor, region, iv, o.Params, rngFor(o.Seed, "defect", spec.Name, kind, i))
				sum.addN(spec.Name, RedrawnFaint, faint)
				if errors.Is(err, ErrInvisible) {
					sum.add(spec.Name, SkippedInvisible)
					continue
				}
				if err != nil {
					return nil, fmt.Errorf("synth: class %s: %w", spec.Name, err)
				}
				if err := writePair(root, kind, fmt.Sprintf("%03d", i), out, mask); err != nil {
					return nil, err
				}
				sum.add(spec.Name, "test/"+kind)
			}
		}
	}
	return sum, writeReadme(o.Out, "Rendered surfaces: train/good for training, test for evaluation.")
}

// paintVisible paints kind, or where every draw of it stays invisible (ErrInvisible), the other kinds in the
// order of the cycle after it; the kind painted is returned. Draws redrawn for being within the normals'
// variation are counted in sum.
func paintVisible(img Image, kind string, kinds []string, donor *Image, region []bool, v *Variation, p Params, r *rand.Rand, sum Summary, class string) (string, Image, []uint8, error) {
	at := slices.Index(kinds, kind)
	var first error
	for j := 0; j < len(kinds); j++ {
		k := kinds[(at+j)%len(kinds)]
		out, mask, faint, err := PaintAmong(img, k, donor, region, v, p, r)
		sum.addN(class, RedrawnFaint, faint)
		if err == nil || !errors.Is(err, ErrInvisible) {
			return k, out, mask, err
		}
		if first == nil {
			first = err
		}
	}
	return kind, Image{}, nil, first
}

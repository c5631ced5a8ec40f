package eval

import (
	"context"
	"fmt"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
)

// TestDropIsolated: the vectors dropped are those farthest from every other image's vectors, not merely far
// from the rest: a tight cluster that only one image has is dropped although its members are each other's
// nearest neighbours; the order is kept; the pool keeps at least the bank's size; 0 keeps everything.
func TestDropIsolated(t *testing.T) {
	const dims = 4
	rng := rand.New(rand.NewPCG(5, 6))
	p := &knnPool{n: 5}
	var planted []int
	for img := range uint64(5) {
		for k := range 100 {
			v := make([]float32, dims)
			for c := range v {
				v[c] = float32(rng.NormFloat64())
				if img == 2 && k%20 == 7 { // five near-identical vectors far out, all from image 2
					v[c] = 30 + 0.01*v[c]
				}
			}
			if img == 2 && k%20 == 7 {
				planted = append(planted, len(p.src))
			}
			p.vecs, p.src = append(p.vecs, v...), append(p.src, img+1)
		}
	}
	for _, c := range []struct {
		name       string
		frac       float64
		size, keep int
	}{
		{"none", 0, 10, 500},
		{"the planted cluster", 0.01, 10, 495},
		{"a tenth", 0.1, 10, 450},
		{"never below the bank", 0.5, 480, 480},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, err := dropIsolated(context.Background(), p, dims, c.frac, c.size, rand.New(rand.NewPCG(1, 2)))
			if err != nil {
				t.Fatal(err)
			}
			if len(out.src) != c.keep || len(out.vecs) != c.keep*dims || out.n != p.n {
				t.Fatalf("kept %d vectors (%d values, %d images), want %d", len(out.src), len(out.vecs), out.n, c.keep)
			}
			// the kept vectors are pool vectors in pool order, and none of the planted ones survives a drop
			j := 0
			for k := range c.keep {
				for j < len(p.src) && !slices.Equal(p.vecs[j*dims:(j+1)*dims], out.vecs[k*dims:(k+1)*dims]) {
					j++
				}
				if j == len(p.src) || p.src[j] != out.src[k] {
					t.Fatalf("kept vector %d is not the pool's next vector in order", k)
				}
				if c.frac > 0 && slices.Contains(planted, j) {
					t.Errorf("planted vector %d (image 2's cluster) kept", j)
				}
				j++
			}
		})
	}
	if _, err := BuildKnnBanks(context.Background(), knnFixture, nil, nil, KnnDraw{Size: 8, Isolated: 0.6}, pipeline.Options{}, ""); err == nil {
		t.Errorf("isolated fraction 0.6 accepted")
	}
}

// TestKnnIsolatedForgetsAMissedDefect is the case the isolated fraction exists for: one of the training normals
// carries a defect nobody noticed (a blue disc). A coreset bank takes the disc's vectors, so the same defect on a
// new frame is close to the bank; with the most isolated tenth dropped first it is far, while the normal texture
// of the same frame stays as close as before.
func TestKnnIsolatedForgetsAMissedDefect(t *testing.T) {
	dir := t.TempDir()
	var train []dataset.Item
	for i := range 8 {
		p := filepath.Join(dir, "train", fmt.Sprintf("n%d.png", i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		writeTexture(t, p, 128, 128, int64(500+i), i == 3)
		train = append(train, dataset.Item{Path: p, Class: "widget", Split: dataset.SplitTrain})
	}
	frame := filepath.Join(dir, "test", "blob.png")
	os.MkdirAll(filepath.Dir(frame), 0o755)
	maskPath := writeTexture(t, frame, 128, 128, 611, true)
	m, err := models.ReadManifest(fixtureBundle)
	if err != nil {
		t.Fatal(err)
	}
	cpu := pipeline.Options{Providers: []string{"cpu"}, Threads: 2}
	ctx := context.Background()
	plain, err := BuildKnnBanks(ctx, knnFixture, m, train, KnnDraw{Size: 32}, cpu, "train")
	if err != nil {
		t.Fatal(err)
	}
	isolated, err := BuildKnnBanks(ctx, knnFixture, m, train, KnnDraw{Size: 32, Isolated: 0.1}, cpu, "train")
	if err != nil {
		t.Fatal(err)
	}
	g, err := pipeline.OpenKnnGraph(knnFixture, m.Input.Height, m.Input.Width, cpu)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	checkBankVectors(t, m, g, train, isolated)
	_, vecs := knnFeatures(t, m, g, dataset.Item{Path: frame})
	inDisc := discPositions(t, maskPath, isolated.Height, isolated.Width)
	mean := func(kb *KnnBanks, disc bool) float64 {
		row := kb.Rows[slices.Index(kb.Classes, "widget")]
		s, n := 0.0, 0
		for p, q := range vecs {
			if inDisc[p] != disc {
				continue
			}
			best := math.Inf(1)
			for j := range kb.Size {
				best = math.Min(best, float64(sqDist(q, row[j*kb.Dims:(j+1)*kb.Dims])))
			}
			s, n = s+math.Sqrt(best), n+1
		}
		return s / float64(n)
	}
	discPlain, discIso := mean(plain, true), mean(isolated, true)
	restPlain, restIso := mean(plain, false), mean(isolated, false)
	t.Logf("disc: %.3f plain, %.3f isolated dropped; texture: %.3f, %.3f", discPlain, discIso, restPlain, restIso)
	if discIso < 2*discPlain {
		t.Errorf("the disc's distance to the bank %.3f with the isolated tenth dropped, %.3f without: want at least twice", discIso, discPlain)
	}
	if restIso > 1.5*restPlain {
		t.Errorf("the texture's distance to the bank %.3f with the isolated tenth dropped, %.3f without: normal coverage lost", restIso, restPlain)
	}
}

// discPositions marks the knn positions (h x w over the frame) whose centre pixel and its 3 x 3-pooled
// neighbourhood lie inside the mask at maskPath.
func discPositions(t *testing.T, maskPath string, h, w int) []bool {
	t.Helper()
	f, err := os.Open(maskPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	im, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	b := im.Bounds()
	in := func(x, y int) bool {
		x, y = min(max(x, 0), b.Dx()-1), min(max(y, 0), b.Dy()-1)
		r, _, _, _ := im.At(b.Min.X+x, b.Min.Y+y).RGBA()
		return r > 0x8000
	}
	out := make([]bool, h*w)
	sx, sy := float64(b.Dx())/float64(w), float64(b.Dy())/float64(h)
	for p := range out {
		cx, cy := int((float64(p%w)+0.5)*sx), int((float64(p/w)+0.5)*sy)
		d := int(2 * sx)
		out[p] = in(cx-d, cy-d) && in(cx+d, cy-d) && in(cx-d, cy+d) && in(cx+d, cy+d)
	}
	return out
}

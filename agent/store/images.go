package store

import (
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Image kinds.
const (
	KindHeatmap   = "heatmap"
	KindThumbnail = "thumbnail"
)

// Image is an encoded picture stored with a result.
type Image struct {
	Kind   string // KindHeatmap or KindThumbnail
	Format string // "png" or "jpeg"
	Data   []byte
}

// StoredImage is an Image as kept in the store, with the frame it belongs to.
type StoredImage struct {
	Key      string    `json:"key"`
	Camera   string    `json:"camera"`
	Seq      uint64    `json:"seq"`
	Kind     string    `json:"kind"`
	Format   string    `json:"format"`
	Verdict  string    `json:"verdict"`
	StoredAt time.Time `json:"stored_at"`
	Data     []byte    `json:"-"`
}

func imageBucketName(camera, kind, verdict string) []byte {
	return []byte(camera + "\x00" + kind + "\x00" + verdict)
}

// putImage stores im and evicts the oldest images of the same camera/kind/verdict over the bound.
// The key is "<camera>/<kind>/<ok|ng>/<id hex>": readable in URLs and enough to find the bucket.
func (s *Store) putImage(tx *bolt.Tx, camera string, seq uint64, verdict string, now time.Time, im Image) (string, error) {
	if im.Kind != KindHeatmap && im.Kind != KindThumbnail {
		return "", fmt.Errorf("%w: image kind %q: want heatmap or thumbnail", ErrInvalid, im.Kind)
	}
	if im.Format != "png" && im.Format != "jpeg" {
		return "", fmt.Errorf("%w: image format %q: want png or jpeg", ErrInvalid, im.Format)
	}
	b, err := tx.Bucket(bImages).CreateBucketIfNotExists(imageBucketName(camera, im.Kind, verdict))
	if err != nil {
		return "", err
	}
	id, err := b.NextSequence()
	if err != nil {
		return "", err
	}
	key := fmt.Sprintf("%s/%s/%s/%016x", camera, im.Kind, strings.ToLower(verdict), id)
	val, err := encodeBlob(StoredImage{Key: key, Camera: camera, Seq: seq, Kind: im.Kind, Format: im.Format,
		Verdict: verdict, StoredAt: now}, im.Data)
	if err != nil {
		return "", err
	}
	if err := b.Put(u64(id), val); err != nil {
		return "", err
	}
	limit := s.opts.ImagesPerCamera
	if verdict == VerdictNG {
		limit = s.opts.NGImagesPerCamera
	}
	// Count with a cursor: Bucket.Stats is not accurate inside a write transaction. The bound is small.
	n := 0
	c := b.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		n++
	}
	for ; n > limit; n-- {
		k, _ := b.Cursor().First()
		if k == nil {
			break
		}
		if err := b.Delete(k); err != nil {
			return "", err
		}
	}
	return key, nil
}

// parseImageKey splits a key made by putImage.
func parseImageKey(key string) (bucket []byte, id []byte, err error) {
	parts := strings.Split(key, "/")
	if len(parts) != 4 || (parts[2] != "ok" && parts[2] != "ng") || len(parts[3]) != 16 {
		return nil, nil, fmt.Errorf("%w: image key %q", ErrInvalid, key)
	}
	raw, err := hex.DecodeString(parts[3])
	if err != nil {
		return nil, nil, fmt.Errorf("%w: image key %q: %v", ErrInvalid, key, err)
	}
	return imageBucketName(parts[0], parts[1], strings.ToUpper(parts[2])), raw, nil
}

// Image returns the stored image with that key (as found in Record.HeatmapKey/ThumbnailKey). ErrNotFound
// when it was evicted by the per-camera bound.
func (s *Store) Image(key string) (StoredImage, error) {
	var out StoredImage
	bn, id, err := parseImageKey(key)
	if err != nil {
		return out, fmt.Errorf("store image: %w", err)
	}
	err = s.view("image", func(tx *bolt.Tx) error {
		b := tx.Bucket(bImages).Bucket(bn)
		var v []byte
		if b != nil {
			v = b.Get(id)
		}
		if v == nil {
			return fmt.Errorf("image %s: %w", key, ErrNotFound)
		}
		out.Data, err = decodeBlob(v, &out)
		return err
	})
	return out, err
}

// Images returns up to n images of a camera and kind, newest first. verdict "OK" or "NG" selects one set;
// "" merges both by store order.
func (s *Store) Images(camera, kind, verdict string, n int) ([]StoredImage, error) {
	var out []StoredImage
	err := s.view("images", func(tx *bolt.Tx) error {
		verdicts := []string{verdict}
		if verdict == "" {
			verdicts = []string{VerdictOK, VerdictNG}
		}
		for _, vd := range verdicts {
			b := tx.Bucket(bImages).Bucket(imageBucketName(camera, kind, vd))
			if b == nil {
				continue
			}
			c := b.Cursor()
			cnt := 0
			for k, v := c.Last(); k != nil && cnt < n; k, v = c.Prev() {
				var im StoredImage
				data, err := decodeBlob(v, &im)
				if err != nil {
					return fmt.Errorf("image in %s/%s: %w", camera, kind, err)
				}
				im.Data = data
				out = append(out, im)
				cnt++
			}
		}
		return nil
	})
	if verdict == "" {
		sortImagesNewestFirst(out)
		if len(out) > n {
			out = out[:n]
		}
	}
	return out, err
}

func sortImagesNewestFirst(ims []StoredImage) {
	// Insertion sort: n is small (bounded per camera).
	for i := 1; i < len(ims); i++ {
		for j := i; j > 0 && ims[j].StoredAt.After(ims[j-1].StoredAt); j-- {
			ims[j], ims[j-1] = ims[j-1], ims[j]
		}
	}
}

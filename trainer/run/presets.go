package run

import "sort"

// presetInfo is what the Go runner knows of a network preset. The presets themselves are defined in
// trainer/python/vlmdiff_train/presets.py; TestConstantsMatchPython checks that this table agrees with them
// (through `python3 -m vlmdiff_train schema`), so adding a preset there without adding it here fails a test.
type presetInfo struct {
	InputSize      int // square input, pixels: the default data.size
	LatentChannels int
	Downsample     int // VAE downsample factor: data.size must be a multiple of it
}

// LatentSize is the side of the latent at the preset's input size.
func (p presetInfo) LatentSize() int { return p.InputSize / p.Downsample }

var presets = map[string]presetInfo{
	"tiny":  {InputSize: 64, LatentChannels: 4, Downsample: 8},
	"small": {InputSize: 256, LatentChannels: 4, Downsample: 8},
	"sd15":  {InputSize: 256, LatentChannels: 4, Downsample: 8},
	// sd15's structure with every width scaled down: the CPU proof of the sd15 path (sd15_e2e_test.go)
	"sd15-mini": {InputSize: 128, LatentChannels: 4, Downsample: 8},
	// the pretrained taef2 tiny autoencoder (32-channel latents), and its structure at test size
	"taef2":     {InputSize: 256, LatentChannels: 32, Downsample: 8},
	"tiny-taef": {InputSize: 64, LatentChannels: 8, Downsample: 8},
}

// PresetInputSize is the named preset's square input side in pixels (the default data.size), 0 for an unknown
// name.
func PresetInputSize(name string) int { return presets[name].InputSize }

// presetNames lists the presets, sorted, for messages.
func presetNames() []string {
	names := make([]string, 0, len(presets))
	for n := range presets {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

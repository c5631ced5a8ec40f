// Package pipeline scores frames with a model bundle: the VLMDiff recipe of docs/algorithm.md §1, run through
// ONNX Runtime with every number read from the bundle's manifest.
//
// A batch of frames flows through the stages of Scorer.scoreBatch (stages.go), in this order:
//
//	preprocess      resize to the input size (PIL-exact bilinear) and normalise          §1.1
//	encode          VAE encoder -> moments -> scaled posterior latent z                  §1.3
//	denoiserInputs  hint graph once per frame; text contexts, doubled for guidance       §1.2, §1.6, §1.7
//	reconstruct     forward-noise z to the start step, deterministic DDIM back to z'     §1.4-§1.6
//	decode          z' / scale -> VAE decoder -> the reconstruction                      §1.8
//	features        feature graph on frames and reconstructions in one batch             §1.9
//	mapsAndScores   1-cos per layer, upsampled and summed; Gaussian smoothing; pooled
//	                maximum = raw score; calibration -> score, verdict, anomaly area     §1.9-§1.11
//
// The graphs do the networks; the arithmetic between them is plain Go in latent.go, sampler.go, anomaly.go,
// mapplan.go and math.go, each function named after its twin in the PyTorch reference
// (trainer/python/vlmdiff_train/reference.py). The map stage computes the upsampled, summed and smoothed map
// as one banded product (mapplan.go); its step-by-step definition is kept in mapdef_test.go, and the tests
// hold the two together. Two tests hold the two together: the stage tests
// (stages_test.go) check each piece on fixed inputs, and the parity test (parity_test.go) checks whole frames,
// maps and scores, against the reference running the same bundle's torch networks.
//
// The package knows nothing of cameras, MQTT or storage: a Request goes in, a Result comes out. A camera's
// region of interest is geometry on either side of it (pipeline/roi), so the recipe and its parity stay as
// they are. It is what
// both the daemon and the trainer's evaluation score with, so evaluation measures exactly what a line runs.
package pipeline

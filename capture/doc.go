// Package capture turns cameras, video files, watched folders and a synthetic generator into one stream of
// frames, behind one interface (Source), so the agent schedules and scores them all the same way.
//
// # Frames
//
// A Frame carries packed 8-bit RGB pixels in plain Go memory (copied out of the gocv.Mat and converted from
// OpenCV's BGR), so frames cross goroutines, queues and stores without cgo lifetime rules; the agent scores
// pipeline.Image{Width: f.Width, Height: f.Height, Pix: f.Pix}. capture imports nothing of models, pipeline or
// MQTT: data flows one way, capture -> pipeline -> sinks. Every frame must end in f.Ack(ok) (a no-op except for
// folder frames, whose files are moved only then); synthetic frames carry their ground truth in Frame.Truth.
//
// Stream sources (USB, RTSP, video files) recycle their frames' memory: a consumer that is done with a frame
// calls f.Release(), and one that hands it to another reader first calls f.Retain(). A frame never released is
// simply garbage collected; releasing one more often than it was held panics (pixpool.go).
//
// # Sources
//
// New(Config) validates a config (errors are *ConfigError naming the YAML field) and returns a Source of one kind:
//
//   - "device": a camera index (USB/V4L2) through gocv.VideoCaptureDeviceWithAPI.
//   - "url": an RTSP/HTTP URL (FFmpeg backend) or a GStreamer pipeline string (detected by " ! " or
//     backend: gstreamer).
//   - "file": a video file, paced at the file's FPS (or Config.FPS; FPS < 0 means as fast as possible), optionally
//     looped by re-opening it at its end.
//   - "folder": a directory watched with fsnotify; every image file is emitted once and acknowledged by
//     Frame.Done, which moves it to processed/ (or failed/) or deletes it.
//   - "synthetic": a deterministic textured pattern with occasional synthetic defects, or sample images cycled
//     with defects pasted on, for demos and tests.
//
// Source.Run blocks until its context is done (or a finite source, a file without loop or a synthetic source
// with a count, is exhausted) and handles its own trouble: a camera missing at start or lost while running is
// re-opened with capped exponential backoff and jitter (Config.RetryMin..RetryMax) and reported "offline"; it never
// returns an error for that, so one bad camera cannot stop the others. A non-nil error from Run means the source
// can never work as configured.
//
// # Delivery and backpressure
//
// Run sends frames on out. Live sources (device, url) never block on out: when the consumer is busy the frame is
// dropped and counted (Stats.Dropped), so the camera's buffer keeps being drained and the next frame is fresh.
// Replayable sources (file, folder, synthetic) block instead, so nothing is skipped. A folder source also bounds
// its un-acknowledged frames (FolderConfig.MaxInFlight): it reads the next file only after an earlier frame's
// Done, so a folder of 100,000 files is never read into memory at once.
//
// Run reports on events (which may be nil): state changes (online, offline, error, frozen) are sent blocking, so
// the consumer must drain the channel; per-frame problems (an undecodable frame or file) are Transient events,
// sent without blocking (dropped when the channel is full; Stats still counts them). Run never sends after it
// returns, so the caller may close out and events once every Run has returned.
//
// # Folder semantics
//
// A file counts as arrived when it is complete: its size and mtime are unchanged across two checks
// FolderConfig.Settle apart after its last write event. This covers cameras that write in chunks and the
// atomic-write pattern (write elsewhere, rename into the folder; fsnotify reports that as Create). Files are
// emitted in the order they became complete, ties broken by the order they were first seen; files already in the
// folder at start come first, sorted by mtime then name. Only regular files with an image extension (png, jpg,
// jpeg, bmp, tif, tiff, webp; any case) whose name does not start with "." are taken.
//
// Frame.Done(ok) decides the file's fate, per FolderConfig.After: "move" (default) renames it into
// processed/ when ok and failed/ when not; "delete" deletes it when ok and moves it to failed/ when not; "keep"
// leaves it in place and remembers (path, size, mtime) for the life of the Source so it is not emitted again. An
// unreadable or corrupt file gets a Transient error event naming it and goes to failed/ at once (kept in place
// with "keep"); it never blocks the files behind it. A file whose frame was never acknowledged (the agent stopped
// first) stays where it is and is emitted again by the next run: files are never lost. Name collisions in
// processed/ and failed/ get a numeric suffix instead of overwriting.
//
// # Frozen streams
//
// With Config.FrozenAfter > 0 the video and synthetic sources hash a subsample of every frame; when the hash has
// not changed for FrozenAfter they report "frozen", and "online" again when the picture moves. Folder sources do
// not (identical parts in a row are normal there).
package capture

package capture

import (
	"sync"
	"sync/atomic"
)

// Frame memory is recycled: a 640x480 camera at 30 fps allocated 27 MB/s of pixels, and four of them kept the
// garbage collector busy on the cores the model needs (issue 14: no per-frame allocations on the hot path). A
// stream source takes each frame's buffer from its pool; the buffer goes back when every holder has released
// it. A holder that never releases only costs the recycling: the buffer is then garbage collected like any
// other slice. Releasing more often than retaining is a bug and panics, because it would let the next frame be
// written into pixels someone still reads.

// pixBuffer is one frame's pixels with the count of holders.
type pixBuffer struct {
	refs atomic.Int32
	pix  []byte
	pool *pixPool
}

// pixPool hands out buffers of one size; a buffer of another size (the camera changed resolution) is dropped.
type pixPool struct {
	p sync.Pool
}

// get returns a buffer of n bytes held once. Its content is the last frame's: the caller overwrites all of it.
func (pp *pixPool) get(n int) *pixBuffer {
	b, _ := pp.p.Get().(*pixBuffer)
	if b == nil || len(b.pix) != n {
		b = &pixBuffer{pix: make([]byte, n), pool: pp}
	}
	b.refs.Store(1)
	return b
}

// Retain records another holder of the frame's pixels (one that reads them after the current holder may have
// released them). Frames not from a pool (folder and synthetic sources, API uploads) need no bookkeeping.
func (f Frame) Retain() {
	if f.buf != nil {
		f.buf.refs.Add(1)
	}
}

// Release ends one holder's use of the frame's pixels; the last release returns them to the source's pool.
// Pix must not be read after it.
func (f Frame) Release() {
	if f.buf == nil {
		return
	}
	f.buf.release()
}

// release drops one holder; the last one puts the buffer back into its pool.
func (b *pixBuffer) release() {
	switch n := b.refs.Add(-1); {
	case n == 0:
		b.pool.p.Put(b)
	case n < 0:
		panic("capture: frame pixels released more often than retained")
	}
}

//go:build linux && cgo

package pipeline

/*
#include <malloc.h>
*/
import "C"

import "sync"

var mallocOnce sync.Once

// releaseLargeAllocations makes glibc return freed blocks of 128 KiB and more to the system at once (a fixed
// mmap threshold; glibc's default raises it after every large free, up to 32 MiB, so tensors freed by ONNX
// Runtime stay in the heap) and caps the malloc arenas at two (glibc makes up to 8 per core, one per thread
// that allocates, each keeping its own freed memory). Process-wide and set once: it is what Options.LeanMemory
// asks for.
func releaseLargeAllocations() {
	mallocOnce.Do(func() {
		C.mallopt(C.M_MMAP_THRESHOLD, 128<<10)
		C.mallopt(C.M_ARENA_MAX, 2)
	})
}

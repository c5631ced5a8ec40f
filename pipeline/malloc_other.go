//go:build !linux || !cgo

package pipeline

// releaseLargeAllocations is glibc tuning (malloc_linux.go); elsewhere the allocator is left as it is.
func releaseLargeAllocations() {}

//go:build !customenv && !static

package capture

// The OpenCV flags for cvthreads.cpp, as gocv's own cgo.go sets them (with -tags customenv or static the
// CGO_* environment gives them instead, for gocv and for this package alike).

/*
#cgo !windows pkg-config: opencv4
#cgo CXXFLAGS: --std=c++11
*/
import "C"

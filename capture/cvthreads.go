package capture

/*
#include "cvthreads.h"
*/
import "C"

// SetOpenCVThreads sets the threads OpenCV's own parallel loops use (cv::setNumThreads: 0 or 1 runs them on
// the calling goroutine's thread, a negative count restores OpenCV's default). gocv does not expose it.
func SetOpenCVThreads(n int) { C.vlmdiff_cv_set_num_threads(C.int(n)) }

// OpenCVThreads is cv::getNumThreads.
func OpenCVThreads() int { return int(C.vlmdiff_cv_get_num_threads()) }

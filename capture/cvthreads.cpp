#include <opencv2/core.hpp>
#include "cvthreads.h"

void vlmdiff_cv_set_num_threads(int n) { cv::setNumThreads(n); }
int vlmdiff_cv_get_num_threads(void) { return cv::getNumThreads(); }

#ifndef VLMDIFF_CVTHREADS_H
#define VLMDIFF_CVTHREADS_H
#ifdef __cplusplus
extern "C" {
#endif
void vlmdiff_cv_set_num_threads(int n);
int vlmdiff_cv_get_num_threads(void);
#ifdef __cplusplus
}
#endif
#endif

/* The one check for CUDA runtime and cuBLAS calls, and the launch check used after every kernel
 * launch. A failing call is a broken invariant of the device layer: it aborts with the statement,
 * file, line and the library's error string (two-tier errors, see STYLE.md). C++ (.cu) only. */
#ifndef KVSERVE_CUDA_CHECK_H
#define KVSERVE_CUDA_CHECK_H

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

[[noreturn]] static inline void cuda_check_fail(const char *what, const char *msg, const char *file,
                                                int line) {
    fprintf(stderr, "%s:%d: CUDA check failed: %s: %s\n", file, line, what, msg);
    abort();
}

static inline void cuda_check_status(cudaError_t e, const char *what, const char *file, int line) {
    if (e != cudaSuccess) cuda_check_fail(what, cudaGetErrorString(e), file, line);
}

static inline void cuda_check_status(cublasStatus_t s, const char *what, const char *file,
                                     int line) {
    if (s != CUBLAS_STATUS_SUCCESS) cuda_check_fail(what, cublasGetStatusString(s), file, line);
}

/* CUDA_CHECK(cudaMalloc(&p, n)); CUDA_CHECK(cublasLtMatmul(...)); */
#define CUDA_CHECK(stmt) cuda_check_status((stmt), #stmt, __FILE__, __LINE__)
/* After every <<<...>>>: catches bad launch configurations at once (asynchronous faults surface
 * at the next synchronizing call, also checked). Launches through cuda_launch (cuda_internal.h)
 * check themselves. */
#define CUDA_LAUNCH_CHECK()                                                                        \
    cuda_check_status(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

#endif

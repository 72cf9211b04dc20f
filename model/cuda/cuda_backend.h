/* The CUDA backend: bf16 activations, weights and KV pool; cuBLASLt GEMMs and the kernels of
 * model/cuda/. Implements backend.h; everything device-specific stays behind it. */
#ifndef KVSERVE_CUDA_BACKEND_H
#define KVSERVE_CUDA_BACKEND_H

#include "model/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Opens device 0. NULL with err set when there is no usable device. */
backend *cuda_backend_create(kv_error *err);
/* Number of CUDA devices; 0 when there is no driver or device (never aborts). */
int cuda_backend_device_count(void);
/* True when device 0, the one cuda_backend_create opens, is one this build's kernels run on
 * (a gpu_archs target or the PTX fits its compute capability); else false with why set (no
 * device, or which GPU and what was built). Never aborts. */
bool cuda_backend_usable(kv_error *why);
/* Tests and benchmarks: run the portable (mma.sync) attention kernels, or the Hopper (wgmma)
 * ones; false (nothing changed) when asking for Hopper kernels this device has no code for.
 * cuda_backend_create picks the path once (KVSERVE_CUDA_PORTABLE=1 forces portable). */
bool cuda_backend_set_attn_path(backend *be, bool portable);
bool cuda_backend_attn_portable(const backend *be);
/* The gpu_archs targets this build has code for, as "80,86,89,90a,100,120,ptx120" (machine
 * code per target, then the PTX). */
const char *cuda_backend_archs(void);
/* Host logic only (no CUDA call): whether code for the targets archs (as cuda_backend_archs
 * spells them) runs on a device of compute capability major.minor, and the message for a device
 * (number dev, name) that has none. */
bool cuda_archs_run_on(const char *archs, int major, int minor);
void cuda_archs_no_code_error(kv_error *err, const char *archs, int dev, const char *name,
                              int major, int minor);
/* Events recorded from now on can be timed with event_elapsed (off by default: timing events
 * cost more to record). */
void cuda_backend_set_event_timing(backend *be, bool on);
/* Benchmarks: the FP8-weight mma path's tuning (model/cuda/cuda_gemm_fp8.cu): variant 0-3 (k per
 * stage x pipeline stages: 64 x 4, 64 x 8, 128 x 3, 128 x 5), split-k target in blocks per SM,
 * and the smallest row count it takes (below it: the GEMV). Defaults 0, 2, 2. */
void cuda_backend_set_fp8_mma(backend *be, int variant, int blocks_per_sm, int min_n);

#ifdef __cplusplus
}
#endif

#endif

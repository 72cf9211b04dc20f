/* The portable backend: f32 activations, weights (bf16/f16 converted at upload) and KV pool in
 * plain host memory, ops run at once on the calling thread plus a small worker pool. The reference
 * the CUDA backend is checked against, and the device of CPU-only builds and tests. */
#ifndef KVSERVE_CPU_BACKEND_H
#define KVSERVE_CPU_BACKEND_H

#include "model/backend.h"

/* n_threads <= 0 uses every online core. Never fails (aborts when out of memory). */
backend *cpu_backend_create(int n_threads);

#endif

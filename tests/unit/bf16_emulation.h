/* Test support: the CPU backend with the output of every op rounded to bf16, where the CUDA
 * backend stores its tensors in bf16 (weights at upload, activations, the residual stream, q/k
 * after RoPE and norms, attention output), so that a test can measure the error bf16 storage
 * alone gives a model and tell it from a CUDA bug. One emulated backend at a time (the wrapped
 * ops and the rounding kinds are file state of this test library). */
#ifndef KVSERVE_TEST_BF16_EMULATION_H
#define KVSERVE_TEST_BF16_EMULATION_H

#include "model/backend.h"

/* kinds of rounding, a bit each */
enum {
    BF16_EMU_WEIGHTS = 1, /* weights at upload (norm weights (1 + w) included) */
    BF16_EMU_MATMUL = 2,  /* matmul outputs */
    BF16_EMU_NORM = 4,    /* rmsnorm outputs and the residual stream after adds */
    BF16_EMU_QK = 8,      /* rope and head_rmsnorm outputs (q, k, hence the KV cache) */
    BF16_EMU_ATTN = 16,   /* attention outputs */
    BF16_EMU_ACT = 32,    /* swiglu / geglu outputs */
    BF16_EMU_SCALE = 64,  /* embed, scale, softcap outputs */
    BF16_EMU_ALL = 127
};

/* A CPU backend (n_threads as cpu_backend_create) whose ops round the kinds of outputs given;
 * backend_destroy frees it. */
backend *bf16_emulation_backend(int n_threads, int kinds);

#endif

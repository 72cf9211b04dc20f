/* The forward-pass ops that only some families use: per-head RMSNorm (Qwen3 and Gemma 3 q/k
 * norms), GeGLU (Gemma), scaling by a constant (Gemma's embedding scale, Granite's multipliers)
 * and soft-capping (Gemma 2's final logits). bf16 in and out, fp32 arithmetic. Kernels first,
 * launchers (the backend ops, contracts in backend.h) after. */
#include "model/cuda/cuda_internal.h"

typedef __nv_bfloat16 bf16;

/* ================================ kernels ================================ */

/* Grid (row, head), one warp per head: the head's sum of squares, then x * r * w in place. */
__global__ void head_rmsnorm_kernel(bf16 *x, int row_stride, int head_dim, const bf16 *w,
                                    float eps) {
    pdl_wait();
    pdl_trigger();
    bf16 *h = x + (size_t)blockIdx.x * row_stride + (size_t)blockIdx.y * head_dim;
    float ss = 0;
    for (int d = threadIdx.x; d < head_dim; d += 32) {
        float f = __bfloat162float(h[d]);
        ss += f * f;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    float r = rsqrtf(ss / head_dim + eps);
    for (int d = threadIdx.x; d < head_dim; d += 32)
        h[d] = __float2bfloat16(__bfloat162float(h[d]) * r * __bfloat162float(w[d]));
}

/* PyTorch's gelu(approximate="tanh"). */
__device__ __forceinline__ float gelu_tanh(float x) {
    return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

__global__ void geglu_kernel(bf16 *out, const bf16 *gu, int n, int ff) {
    pdl_wait();
    pdl_trigger();
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)n * ff) return;
    size_t r = i / ff, j = i % ff;
    float g = __bfloat162float(gu[r * 2 * ff + j]), u = __bfloat162float(gu[r * 2 * ff + ff + j]);
    out[i] = __float2bfloat16(gelu_tanh(g) * u);
}

/* cap > 0: x = cap * tanh(x / cap); else x *= s. */
__global__ void scale_kernel(bf16 *x, size_t n, float s, float cap) {
    pdl_wait();
    pdl_trigger();
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float f = __bfloat162float(x[i]);
    x[i] = __float2bfloat16(cap > 0 ? tanhf(f / cap) * cap : f * s);
}

/* ================================ launchers ================================ */

void cuda_op_head_rmsnorm(backend *be, void *x, int n, int row_stride, int n_heads, int head_dim,
                          const void *w, float eps) {
    if (n == 0 || n_heads == 0) return;
    cuda_launch(cuda_impl_of(be)->pdl, cuda_compute_stream(be), head_rmsnorm_kernel,
                dim3((unsigned)n, (unsigned)n_heads), dim3(32), 0, (bf16 *)x, row_stride, head_dim,
                (const bf16 *)w, eps);
}

void cuda_op_geglu(backend *be, void *out, const void *gu, int n, int ff) {
    size_t total = (size_t)n * ff;
    if (total == 0) return;
    cuda_launch(cuda_impl_of(be)->pdl, cuda_compute_stream(be), geglu_kernel,
                dim3((unsigned)((total + 255) / 256)), dim3(256), 0, (bf16 *)out, (const bf16 *)gu,
                n, ff);
}

static void scale_launch(backend *be, void *x, size_t n, float s, float cap) {
    if (n == 0) return;
    cuda_launch(cuda_impl_of(be)->pdl, cuda_compute_stream(be), scale_kernel,
                dim3((unsigned)((n + 255) / 256)), dim3(256), 0, (bf16 *)x, n, s, cap);
}

void cuda_op_scale(backend *be, void *x, size_t n, float s) {
    scale_launch(be, x, n, s, 0.0f);
}

void cuda_op_softcap(backend *be, void *x, size_t n, float cap) {
    KV_CHECK(cap > 0);
    scale_launch(be, x, n, 1.0f, cap);
}

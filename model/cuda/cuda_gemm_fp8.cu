/* FP8 weights on the CUDA backend (W8A16): a weight is e4m3 values with one f32 scale per output
 * row, in one allocation ([rows * cols] bytes, then the scales). Decode-sized matmuls (n <=
 * CUDA_FP8_GEMV_MAX_N) stream the e4m3 bytes through gemv_fp8_kernel, half the bytes of bf16;
 * larger ones dequantize the weight into a bf16 scratch and take cuda_op_matmul's bf16 path (a
 * pass over the weight, small next to a prefill's GEMM). The backend keeps a sorted table of its
 * FP8 weights so that matmul recognises them by pointer; dev_free forgets them. Not here: FP8
 * activations (a cuBLASLt e4m3 x e4m3 GEMM is the next step). Kernels first, launchers after. */
#include "model/cuda/cuda_internal.h"

#include <stdlib.h>

typedef __nv_bfloat16 bf16;

#define CUDA_FP8_GEMV_MAX_N 8
#define FP8_GEMV_WARPS      4 /* per block, one weight row per warp */

struct cuda_fp8_weight {
    const uint8_t *q;    /* [rows * cols] e4m3; also the pointer matmul receives */
    const float *scales; /* [rows], in the same allocation */
    int rows, cols;
};

struct cuda_fp8_table {
    cuda_fp8_weight *w; /* sorted by q */
    int n, cap;
    bf16 *scratch; /* the largest weight, dequantized (matmuls of n > CUDA_FP8_GEMV_MAX_N) */
    size_t scratch_elems;
};

/* ================================ kernels ================================ */

/* 2 e4m3 (the low 16 bits of u) as floats */
__device__ __forceinline__ float2 e4m3x2_to_f2(uint32_t u) {
    return __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)u, __NV_E4M3)));
}

/* out[n, m] = (x[n, k] @ q[m, k]^T) * scales[m] (+ bias[m]) for N <= CUDA_FP8_GEMV_MAX_N rows,
 * k % 16 == 0: a warp per weight row, each lane 16 weights (one 16-byte load) at a time. */
template <int N>
__global__ void __launch_bounds__(FP8_GEMV_WARPS * 32)
    gemv_fp8_kernel(bf16 *out, const bf16 *x, const uint8_t *q, const float *scales,
                    const bf16 *bias, int k, int m) {
    pdl_wait();
    pdl_trigger();
    const int lane = threadIdx.x % 32, row = blockIdx.x * FP8_GEMV_WARPS + threadIdx.x / 32;
    if (row >= m) return;
    const uint4 *wr = (const uint4 *)(q + (size_t)row * k);
    float acc[N];
#pragma unroll
    for (int i = 0; i < N; i++) acc[i] = 0;
    for (int c = lane; c < k / 16; c += 32) {
        uint4 wv = ld_stream(wr + c);
        const uint32_t wu[4] = {wv.x, wv.y, wv.z, wv.w};
        float wf[16];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float2 lo = e4m3x2_to_f2(wu[i] & 0xffff), hi = e4m3x2_to_f2(wu[i] >> 16);
            wf[4 * i] = lo.x, wf[4 * i + 1] = lo.y, wf[4 * i + 2] = hi.x, wf[4 * i + 3] = hi.y;
        }
#pragma unroll
        for (int r = 0; r < N; r++) {
            const uint4 *xr = (const uint4 *)(x + (size_t)r * k + (size_t)c * 16);
            uint4 x0 = xr[0], x1 = xr[1];
            const uint32_t xu[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
            for (int i = 0; i < 8; i++) {
                float2 xf = __bfloat1622float2(*(const __nv_bfloat162 *)&xu[i]);
                acc[r] = fmaf(wf[2 * i], xf.x, acc[r]);
                acc[r] = fmaf(wf[2 * i + 1], xf.y, acc[r]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < N; r++) {
        float v = acc[r];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) {
            v *= scales[row];
            if (bias) v += __bfloat162float(bias[row]);
            out[(size_t)r * m + row] = __float2bfloat16(v);
        }
    }
}

/* dst[r, c] = bf16(q[r, c] * scales[r]), 2 elements per thread step (cols % 16 == 0) */
__global__ void fp8_dequant_kernel(bf16 *dst, const uint8_t *q, const float *scales, int cols,
                                   size_t n) {
    pdl_wait();
    pdl_trigger();
    for (size_t i = 2 * ((size_t)blockIdx.x * blockDim.x + threadIdx.x); i < n;
         i += 2 * (size_t)gridDim.x * blockDim.x) {
        float s = scales[i / cols];
        float2 f = e4m3x2_to_f2(*(const uint16_t *)(q + i));
        dst[i] = __float2bfloat16(f.x * s);
        dst[i + 1] = __float2bfloat16(f.y * s); /* cols % 16 == 0: same row */
    }
}

/* ================================ launchers ================================ */

static int fp8_find(const cuda_fp8_table *t, const void *p) {
    int lo = 0, hi = t->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (t->w[mid].q == p) return mid;
        if ((const uint8_t *)p < t->w[mid].q)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return -1;
}

void *cuda_weight_upload_fp8(backend *be, const uint8_t *q, const float *row_scales, size_t rows,
                             size_t cols) {
    cuda_impl *ci = cuda_impl_of(be);
    KV_CHECK(!ci->capturing && rows > 0 && cols % 16 == 0 && rows < INT32_MAX && cols < INT32_MAX);
    if (!ci->fp8) ci->fp8 = (cuda_fp8_table *)kv_calloc(1, sizeof *ci->fp8);
    cuda_fp8_table *t = ci->fp8;
    size_t qbytes = (rows * cols + 15) / 16 * 16;
    uint8_t *d = (uint8_t *)be->ops->dev_alloc(be, qbytes + rows * sizeof(float));
    cudaStream_t s = cuda_compute_stream(be);
    cuda_upload_staged(ci, s, d, q, rows * cols);
    cuda_upload_staged(ci, s, d + qbytes, row_scales, rows * sizeof(float));
    CUDA_CHECK(cudaStreamSynchronize(s));
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 64;
        t->w = (cuda_fp8_weight *)kv_realloc(t->w, (size_t)t->cap * sizeof *t->w);
    }
    int at = t->n;
    while (at > 0 && t->w[at - 1].q > d) at--;
    memmove(t->w + at + 1, t->w + at, (size_t)(t->n - at) * sizeof *t->w);
    t->w[at] = cuda_fp8_weight{d, (const float *)(d + qbytes), (int)rows, (int)cols};
    t->n++;
    if (rows * cols > t->scratch_elems) { /* set-up time: no recording reads it yet */
        if (t->scratch) CUDA_CHECK(cudaFree(t->scratch));
        CUDA_CHECK(cudaMalloc((void **)&t->scratch, rows * cols * sizeof(bf16)));
        t->scratch_elems = rows * cols;
        cuda_graph_buffers_moved(ci);
    }
    return d;
}

void cuda_fp8_forget(cuda_impl *ci, const void *p) {
    cuda_fp8_table *t = ci->fp8;
    int i = t ? fp8_find(t, p) : -1;
    if (i < 0) return;
    memmove(t->w + i, t->w + i + 1, (size_t)(t->n - i - 1) * sizeof *t->w);
    t->n--;
}

void cuda_fp8_free(cuda_impl *ci) {
    if (!ci->fp8) return;
    if (ci->fp8->scratch) CUDA_CHECK(cudaFree(ci->fp8->scratch));
    free(ci->fp8->w);
    free(ci->fp8);
    ci->fp8 = NULL;
}

bool cuda_matmul_fp8(backend *be, void *out, const void *x, const void *w, const void *bias, int n,
                     int k, int m) {
    cuda_impl *ci = cuda_impl_of(be);
    int i = ci->fp8 ? fp8_find(ci->fp8, w) : -1;
    if (i < 0) return false;
    const cuda_fp8_weight *fw = &ci->fp8->w[i];
    KV_CHECK(fw->rows == m && fw->cols == k);
    cudaStream_t s = cuda_compute_stream(be);
    bool aligned = ((uintptr_t)x & 15) == 0;
    if (n <= CUDA_FP8_GEMV_MAX_N && aligned) {
        dim3 grid((unsigned)((m + FP8_GEMV_WARPS - 1) / FP8_GEMV_WARPS)),
            block(FP8_GEMV_WARPS * 32);
        bf16 *o = (bf16 *)out;
        const bf16 *xb = (const bf16 *)x, *bb = (const bf16 *)bias;
        switch (n) {
#define FP8_CASE(N)                                                                                \
    case N:                                                                                        \
        cuda_launch(ci->pdl, s, gemv_fp8_kernel<N>, grid, block, 0, o, xb, fw->q, fw->scales, bb,  \
                    k, m);                                                                         \
        break;
            FP8_CASE(1)
            FP8_CASE(2)
            FP8_CASE(3)
            FP8_CASE(4)
            FP8_CASE(5)
            FP8_CASE(6)
            FP8_CASE(7)
            FP8_CASE(8)
#undef FP8_CASE
        }
        return true;
    }
    size_t elems = (size_t)m * (size_t)k;
    int blocks = (int)((elems / 2 + 255) / 256);
    if (blocks > 8 * ci->n_sms) blocks = 8 * ci->n_sms;
    cuda_launch(ci->pdl, s, fp8_dequant_kernel, dim3((unsigned)blocks), dim3(256), 0,
                ci->fp8->scratch, fw->q, fw->scales, k, elems);
    cuda_op_matmul(be, out, x, ci->fp8->scratch, bias, n, k, m);
    return true;
}

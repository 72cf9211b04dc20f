/* FP8 weights on the CUDA backend (W8A16): a weight is e4m3 values with one f32 scale per output
 * row, in one allocation ([rows * cols] bytes, then the scales). Three paths, all reading the
 * e4m3 bytes themselves except the last: n = 1 (a decode step of one sequence) streams them
 * through gemv_fp8_kernel; 2 <= n <= FP8_MMA_MAX_N (batched decode) through gemm_fp8_mma_kernel,
 * which turns them into bf16 in registers for mma.sync, exactly (an e4m3 value is a bf16 value),
 * and splits k across blocks when the rows alone do not fill the GPU; larger n (prefill), or k
 * not a multiple of 64, dequantizes the weight into a bf16 scratch and takes cuda_op_matmul's
 * bf16 path (a pass over the weight, small next to a prefill's GEMM). Activations stay bf16.
 * The backend keeps a sorted table of its FP8 weights so that matmul recognises them by
 * pointer; dev_free forgets them. Kernels first, launchers after. */
#include "model/cuda/cuda_internal.h"

#include <stdlib.h>

typedef __nv_bfloat16 bf16;

#define CUDA_FP8_GEMV_MAX_N 8 /* the GEMV's instances; it takes n = 1, and n <= 8 when k % 64 */
#define FP8_GEMV_WARPS      4 /* per block, one weight row per warp */
#define FP8_MMA_MAX_N       64
#define FP8_MMA_ROWS        128 /* weight rows per block: 4 warps x 32 */
#define FP8_MMA_BK          64  /* k per pipeline stage (the default variant; k % 64 == 0) */

struct cuda_fp8_weight {
    const uint8_t *q;    /* [rows * cols] e4m3; also the pointer matmul receives */
    const float *scales; /* [rows], in the same allocation */
    int rows, cols;
};

struct cuda_fp8_table {
    cuda_fp8_weight *w; /* sorted by q */
    int n, cap;
    /* the largest weight, dequantized (the bf16 path), or the mma kernel's split-k partial sums
     * ([splits][n][m] floats, splits <= k / (2 n) so that they fit) */
    bf16 *scratch;
    size_t scratch_elems;
    bool mma_smem_set; /* gemm_fp8_mma_kernel's shared-memory limit raised */
    /* the mma path's tuning (cuda_backend_set_fp8_mma): variant of fp8_mma_variants, split-k
     * target in blocks per SM, smallest n it takes (below: the GEMV) */
    int mma_variant, mma_blocks_per_sm, mma_min_n;
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

/* 4 e4m3 bytes as 2 bf16 pairs (bytes 0, 1 -> *lo, bytes 2, 3 -> *hi), exactly: each byte's
 * sign, exponent and mantissa bits moved into bf16's give the value times 2^-120 (e4m3
 * subnormals land on bf16 subnormals), and the multiply by 2^120 is exact. */
__device__ __forceinline__ void e4m3x4_to_bf16x4(uint32_t w, uint32_t *lo, uint32_t *hi) {
    const __nv_bfloat162 two120 =
        __halves2bfloat162(__ushort_as_bfloat16(0x7b80), __ushort_as_bfloat16(0x7b80));
    uint32_t y0 = __byte_perm(w, 0, 0x1404), y1 = __byte_perm(w, 0, 0x3424); /* b << 8 per half */
    uint32_t r0 = (y0 & 0x80008000u) | ((y0 >> 4) & 0x07f007f0u);
    uint32_t r1 = (y1 & 0x80008000u) | ((y1 >> 4) & 0x07f007f0u);
    __nv_bfloat162 v0 = __hmul2(*(const __nv_bfloat162 *)&r0, two120);
    __nv_bfloat162 v1 = __hmul2(*(const __nv_bfloat162 *)&r1, two120);
    *lo = *(const uint32_t *)&v0;
    *hi = *(const uint32_t *)&v1;
}

/* out[n, m] = (x[n, k] @ q[m, k]^T) * scales[m] (+ bias[m]) for n <= 16 * TM <= FP8_MMA_MAX_N,
 * k % BK == 0, on mma.sync m16n8k16 with the tokens as its rows (A) and the weight rows as its
 * columns (B). A block takes FP8_MMA_ROWS weight rows (a warp 32: four 8-row fragments) and the
 * chunks [blockIdx.y * chunks, +chunks) of BK k, which cp.async brings into shared memory
 * STAGES - 1 ahead (weights as [128][BK] bytes, x as [16 TM][BK + 8] bf16, zero rows past m and
 * n). Within each 64 k of a chunk the k order is permuted, the same for x and the weights: the
 * lane that holds k columns 2c, 2c + 1, 2c + 8, 2c + 9 (c = lane % 4) of k-step j takes the
 * elements 16c + 4j + 0..3, so it reads 16 contiguous weight bytes and 32 contiguous x bytes per
 * row for four k-steps. Bank conflicts: x rows are 16 bytes longer than their data; with BK 128
 * the two 64-byte halves of odd weight rows are stored swapped, so that rows g and g + 1 (read
 * in one phase) fall on different banks. gridDim.y == 1 writes out; else each block writes its
 * partial sums to part[blockIdx.y] and fp8_split_sum_kernel finishes. */
template <int TM, int BK, int STAGES>
__global__ void __launch_bounds__(128)
    gemm_fp8_mma_kernel(bf16 *out, float *part, const bf16 *x, const uint8_t *q,
                        const float *scales, const bf16 *bias, int n, int k, int m, int chunks) {
    static_assert(BK == 64 || BK == 128, "BK");
    constexpr int W_BYTES = FP8_MMA_ROWS * BK, XSTR = BK + 8;
    constexpr int STAGE = W_BYTES + 16 * TM * XSTR * 2;
    extern __shared__ __align__(16) uint8_t smem[];
    pdl_wait();
    pdl_trigger();
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, c = lane % 4, g = lane / 4;
    const int row0 = blockIdx.x * FP8_MMA_ROWS;
    const int first = blockIdx.y * chunks;
    const int nc = min(k / BK - first, chunks);
    auto load = [&](int stage, int chunk) {
        uint8_t *ws = smem + stage * STAGE;
        bf16 *xs = (bf16 *)(ws + W_BYTES);
        size_t k0 = (size_t)chunk * BK;
        for (int i = tid; i < FP8_MMA_ROWS * (BK / 16); i += 128) {
            int r = i / (BK / 16), p = i % (BK / 16);
            int sp = BK == 128 ? p ^ ((r & 1) << 2) : p; /* odd rows: halves swapped */
            bool ok = row0 + r < m;
            cp_async16(ws + r * BK + sp * 16, q + (size_t)(ok ? row0 + r : 0) * k + k0 + p * 16,
                       ok);
        }
        for (int i = tid; i < 16 * TM * (BK / 8); i += 128) {
            int t = i / (BK / 8), p = i % (BK / 8);
            bool ok = t < n;
            cp_async16(xs + t * XSTR + p * 8, x + (size_t)(ok ? t : 0) * k + k0 + p * 8, ok);
        }
    };
    float acc[4][TM][4];
#pragma unroll
    for (int f = 0; f < 4; f++)
#pragma unroll
        for (int t = 0; t < TM; t++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[f][t][e] = 0;
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < nc) load(s, first + s);
        cp_async_commit();
    }
    for (int i = 0; i < nc; i++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads(); /* chunk i landed; every warp is past chunk i - 1, whose stage refills */
        if (i + STAGES - 1 < nc) load((i + STAGES - 1) % STAGES, first + i + STAGES - 1);
        cp_async_commit();
        const uint8_t *ws = smem + (i % STAGES) * STAGE;
        const bf16 *xs = (const bf16 *)(ws + W_BYTES);
#pragma unroll
        for (int sc = 0; sc < BK / 64; sc++) {
            uint4 wv[4];
#pragma unroll
            for (int f = 0; f < 4; f++) {
                const int r = warp * 32 + f * 8 + g, half = BK == 128 ? sc ^ (r & 1) : 0;
                wv[f] = *(const uint4 *)(ws + r * BK + half * 64 + c * 16);
            }
            uint32_t xw[TM][2][8]; /* [fragment][token g, g + 8][word]: the lane's 16 bf16 */
#pragma unroll
            for (int t = 0; t < TM; t++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const uint4 *src =
                        (const uint4 *)(xs + (t * 16 + h * 8 + g) * XSTR + sc * 64 + c * 16);
                    uint4 a = src[0], b = src[1];
                    xw[t][h][0] = a.x, xw[t][h][1] = a.y, xw[t][h][2] = a.z, xw[t][h][3] = a.w;
                    xw[t][h][4] = b.x, xw[t][h][5] = b.y, xw[t][h][6] = b.z, xw[t][h][7] = b.w;
                }
#pragma unroll
            for (int j = 0; j < 4; j++) {
                uint32_t bw[4][2];
#pragma unroll
                for (int f = 0; f < 4; f++) {
                    uint32_t word = j == 0   ? wv[f].x
                                    : j == 1 ? wv[f].y
                                    : j == 2 ? wv[f].z
                                             : wv[f].w;
                    e4m3x4_to_bf16x4(word, &bw[f][0], &bw[f][1]);
                }
#pragma unroll
                for (int t = 0; t < TM; t++) {
                    const uint32_t a[4] = {xw[t][0][2 * j], xw[t][1][2 * j], xw[t][0][2 * j + 1],
                                           xw[t][1][2 * j + 1]};
#pragma unroll
                    for (int f = 0; f < 4; f++) mma_16816(acc[f][t], a, bw[f][0], bw[f][1]);
                }
            }
        }
    }
    /* acc[f][t]: tokens t * 16 + g (elements 0, 1) and + 8 (2, 3); rows r0, r0 + 1 */
#pragma unroll
    for (int f = 0; f < 4; f++) {
        const int r = row0 + warp * 32 + f * 8 + 2 * c;
#pragma unroll
        for (int t = 0; t < TM; t++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int tok = t * 16 + h * 8 + g;
                if (tok >= n) continue;
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    if (r + e >= m) continue;
                    float v = acc[f][t][2 * h + e];
                    if (gridDim.y > 1) {
                        part[((size_t)blockIdx.y * n + tok) * m + r + e] = v;
                    } else {
                        v *= scales[r + e];
                        if (bias) v += __bfloat162float(bias[r + e]);
                        out[(size_t)tok * m + r + e] = __float2bfloat16(v);
                    }
                }
            }
    }
}

/* out[i] = bf16(sum over the splits of part[s][i] * scales[row] (+ bias[row])), i over [n, m] */
__global__ void fp8_split_sum_kernel(bf16 *out, const float *part, const float *scales,
                                     const bf16 *bias, int splits, int n, int m) {
    pdl_wait();
    pdl_trigger();
    const size_t total = (size_t)n * m;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        float v = 0;
        for (int s = 0; s < splits; s++) v += part[(size_t)s * total + i];
        int r = (int)(i % (size_t)m);
        v *= scales[r];
        if (bias) v += __bfloat162float(bias[r]);
        out[i] = __float2bfloat16(v);
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

template <int TM, int BK, int ST> static size_t fp8_mma_smem() {
    return (size_t)ST * (FP8_MMA_ROWS * BK + 16 * TM * (BK + 8) * 2);
}
template <int BK, int ST> static void fp8_mma_smem_limits() {
    CUDA_CHECK(cudaFuncSetAttribute(gemm_fp8_mma_kernel<1, BK, ST>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)fp8_mma_smem<1, BK, ST>()));
    CUDA_CHECK(cudaFuncSetAttribute(gemm_fp8_mma_kernel<2, BK, ST>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)fp8_mma_smem<2, BK, ST>()));
    CUDA_CHECK(cudaFuncSetAttribute(gemm_fp8_mma_kernel<3, BK, ST>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)fp8_mma_smem<3, BK, ST>()));
    CUDA_CHECK(cudaFuncSetAttribute(gemm_fp8_mma_kernel<4, BK, ST>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)fp8_mma_smem<4, BK, ST>()));
}
static void fp8_mma_smem_set(void) {
    fp8_mma_smem_limits<64, 4>();
    fp8_mma_smem_limits<64, 8>();
    fp8_mma_smem_limits<128, 3>();
    fp8_mma_smem_limits<128, 5>();
}

template <int BK, int ST>
static void fp8_mma_launch(cuda_impl *ci, cudaStream_t s, dim3 grid, int tm, bf16 *out, float *part,
                           const bf16 *x, const cuda_fp8_weight *fw, const bf16 *bias, int n,
                           int chunks) {
    dim3 block(128);
    switch (tm) {
#define FP8_MMA_CASE(TM)                                                                           \
    case TM:                                                                                       \
        cuda_launch(ci->pdl, s, gemm_fp8_mma_kernel<TM, BK, ST>, grid, block,                      \
                    fp8_mma_smem<TM, BK, ST>(), out, part, x, fw->q, fw->scales, bias, n,          \
                    fw->cols, fw->rows, chunks);                                                   \
        break;
        FP8_MMA_CASE(1)
        FP8_MMA_CASE(2)
        FP8_MMA_CASE(3)
        FP8_MMA_CASE(4)
#undef FP8_MMA_CASE
    }
}

/* gemm_fp8_mma_kernel over n <= FP8_MMA_MAX_N rows: k split over enough blocks to give the GPU
 * mma_blocks_per_sm per SM when the weight's rows do not (each split at least 2 chunks, and at
 * most k / (2 n) splits: their partial sums fit the scratch of a weight this size). */
static void fp8_mma(cuda_impl *ci, cudaStream_t s, bf16 *out, const bf16 *x,
                    const cuda_fp8_weight *fw, const bf16 *bias, int n) {
    const cuda_fp8_table *t = ci->fp8;
    const int k = fw->cols, m = fw->rows;
    int variant = t->mma_variant >= 2 && k % 128 != 0 ? 0 : t->mma_variant;
    const int bk = variant >= 2 ? 128 : 64, n_chunks = k / bk;
    const int row_blocks = (m + FP8_MMA_ROWS - 1) / FP8_MMA_ROWS;
    const int target = t->mma_blocks_per_sm * ci->n_sms;
    int splits = 1;
    if (row_blocks < target) {
        splits = (target + row_blocks - 1) / row_blocks;
        splits = splits < n_chunks / 2 ? splits : n_chunks / 2;
        splits = splits < k / (2 * n) ? splits : k / (2 * n);
        splits = splits > 1 ? splits : 1;
    }
    const int chunks = (n_chunks + splits - 1) / splits;
    splits = (n_chunks + chunks - 1) / chunks;
    float *part = splits > 1 ? (float *)t->scratch : NULL;
    dim3 grid((unsigned)row_blocks, (unsigned)splits);
    const int tm = (n + 15) / 16;
    switch (variant) {
    case 0:
        fp8_mma_launch<64, 4>(ci, s, grid, tm, out, part, x, fw, bias, n, chunks);
        break;
    case 1:
        fp8_mma_launch<64, 8>(ci, s, grid, tm, out, part, x, fw, bias, n, chunks);
        break;
    case 2:
        fp8_mma_launch<128, 3>(ci, s, grid, tm, out, part, x, fw, bias, n, chunks);
        break;
    default:
        fp8_mma_launch<128, 5>(ci, s, grid, tm, out, part, x, fw, bias, n, chunks);
        break;
    }
    if (splits > 1) {
        size_t total = (size_t)n * (size_t)m;
        int blocks = (int)((total + 255) / 256);
        blocks = blocks < 4 * ci->n_sms ? blocks : 4 * ci->n_sms;
        cuda_launch(ci->pdl, s, fp8_split_sum_kernel, dim3((unsigned)blocks), dim3(256), 0, out,
                    part, fw->scales, bias, splits, n, m);
    }
}

static cuda_fp8_table *fp8_table(cuda_impl *ci) {
    if (!ci->fp8) {
        ci->fp8 = (cuda_fp8_table *)kv_calloc(1, sizeof *ci->fp8);
        ci->fp8->mma_blocks_per_sm = 2;
        ci->fp8->mma_min_n = 2;
    }
    return ci->fp8;
}

void cuda_backend_set_fp8_mma(backend *be, int variant, int blocks_per_sm, int min_n) {
    cuda_fp8_table *t = fp8_table(cuda_impl_of(be));
    t->mma_variant = variant < 0 ? 0 : variant > 3 ? 3 : variant;
    t->mma_blocks_per_sm = blocks_per_sm < 1 ? 1 : blocks_per_sm;
    t->mma_min_n = min_n < 2 ? 2 : min_n;
}

void *cuda_weight_upload_fp8(backend *be, const uint8_t *q, const float *row_scales, size_t rows,
                             size_t cols) {
    cuda_impl *ci = cuda_impl_of(be);
    KV_CHECK(!ci->capturing && rows > 0 && cols % 16 == 0 && rows < INT32_MAX && cols < INT32_MAX);
    cuda_fp8_table *t = fp8_table(ci);
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
    if (!t->mma_smem_set) {
        fp8_mma_smem_set();
        t->mma_smem_set = true;
    }
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
    if (n >= ci->fp8->mma_min_n && n <= FP8_MMA_MAX_N && k % FP8_MMA_BK == 0 && aligned) {
        fp8_mma(ci, s, (bf16 *)out, (const bf16 *)x, fw, (const bf16 *)bias, n);
        return true;
    }
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

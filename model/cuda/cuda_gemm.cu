/* matmul: out[n, m] = x[n, k] @ w[m, k]^T (+ bias[m]), bf16 in and out, fp32 accumulation.
 * Decode-sized n (a few rows: the weights are read once, a pure stream) goes to gemv_kernel;
 * the rest to cuBLASLt with the bias fused as an epilogue. Row-major to cuBLAS's column-major: the
 * same bytes read column-major are out^T (m x n), w^T (k x m) and x^T (k x n), so out^T = op_T(w^T)
 * x^T. Descriptors and the chosen algorithm are cached per shape: the heuristic query costs tens of
 * microseconds, more than a decode-step GEMM itself. Kernels first, launchers after. */
#include "model/cuda/cuda_internal.h"

#include <stdlib.h>

typedef __nv_bfloat16 bf16;

#define CUDA_GEMM_CACHE 64
/* gemv_kernel: rows of x it takes, bytes of x it keeps hot in L1 (all its warps reread x) */
#define GEMV_MAX_N          8
#define GEMV_MAX_X_BYTES    (64 << 10)
#define GEMV_WARPS          4 /* per block */
#define GEMV_ROWS           2 /* weight rows per warp */
#define GEMV_UNROLL         4 /* 16-byte weight loads in flight per row and lane */
#define CUDA_GEMM_WORKSPACE ((size_t)32 << 20)

/* ================================ kernels ================================ */

__device__ __forceinline__ float2 bf2_to_f2(uint32_t u) {
    return __bfloat1622float2(*(const __nv_bfloat162 *)&u);
}

/* acc += dot of 8 bf16 pairs (w, x in 16-byte vectors) */
__device__ __forceinline__ float dot8(uint4 w, uint4 x, float acc) {
    const uint32_t wu[4] = {w.x, w.y, w.z, w.w}, xu[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 a = bf2_to_f2(wu[i]), b = bf2_to_f2(xu[i]);
        acc = fmaf(a.x, b.x, acc);
        acc = fmaf(a.y, b.y, acc);
    }
    return acc;
}

/* out[n, m] = x[n, k] @ w[m, k]^T for N <= GEMV_MAX_N rows, k % 8 == 0, 16-byte aligned rows.
 * Each warp owns GEMV_ROWS weight rows; every lane issues GEMV_UNROLL 16-byte loads per row
 * before using any, so each SM keeps tens of KB of the stream in flight. x (n * k * 2 bytes,
 * small) is read through L1 by every warp. The lanes' partial sums meet by shuffles. */
template <int N>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_kernel(bf16 *out, const bf16 *x, const bf16 *w, const bf16 *bias, int k, int m) {
    constexpr int R = GEMV_ROWS, U = GEMV_UNROLL;
    const int lane = threadIdx.x % 32;
    const int row0 = (blockIdx.x * GEMV_WARPS + threadIdx.x / 32) * R;
    const int kc = k / 8; /* 16-byte chunks per row */
    const uint4 *wr[R];
#pragma unroll
    for (int r = 0; r < R; r++) wr[r] = (const uint4 *)(w + (size_t)min(row0 + r, m - 1) * k);
    /* the first weight loads go out before the wait: weights are never written, so they stream
     * in while the kernel before this one finishes */
    uint4 wv[U][R];
#pragma unroll
    for (int u = 0; u < U; u++)
#pragma unroll
        for (int r = 0; r < R; r++)
            wv[u][r] = row0 < m && lane + 32 * u < kc ? ld_stream(wr[r] + lane + 32 * u)
                                                      : make_uint4(0, 0, 0, 0);
    pdl_wait();
    pdl_trigger();
    if (row0 >= m) return;
    const uint4 *xv = (const uint4 *)x;
    float acc[R][N];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int n = 0; n < N; n++) acc[r][n] = 0;
    for (int c0 = lane; c0 < kc; c0 += 32 * U) {
        if (c0 != lane) {
#pragma unroll
            for (int u = 0; u < U; u++)
#pragma unroll
                for (int r = 0; r < R; r++)
                    wv[u][r] =
                        c0 + 32 * u < kc ? ld_stream(wr[r] + c0 + 32 * u) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int c = c0 + 32 * u;
            if (c >= kc) break;
#pragma unroll
            for (int n = 0; n < N; n++) {
                uint4 xx = __ldg(xv + (size_t)n * kc + c);
#pragma unroll
                for (int r = 0; r < R; r++) acc[r][n] = dot8(wv[u][r], xx, acc[r][n]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int n = 0; n < N; n++) {
            float v = acc[r][n];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            acc[r][n] = v;
        }
    if (lane < R * N) { /* lane (r, n) writes one output */
        const int r = lane / N, n = lane % N, row = row0 + r;
        float v = 0;
#pragma unroll
        for (int rr = 0; rr < R; rr++)
#pragma unroll
            for (int nn = 0; nn < N; nn++)
                if (rr == r && nn == n) v = acc[rr][nn];
        if (row < m) {
            if (bias) v += __bfloat162float(bias[row]);
            out[(size_t)n * m + row] = __float2bfloat16(v);
        }
    }
}

/* ================================ launchers ================================ */

/* cuBLASLt descriptors and algorithm, cached per shape */
typedef struct cuda_gemm_plan {
    bool used;
    int n, k, m, align;
    bool bias;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
} cuda_gemm_plan;

struct cuda_gemm_cache {
    cuda_gemm_plan plans[CUDA_GEMM_CACHE];
    int next; /* slot replaced on the next miss (round robin) */
};

static void gemm_plan_release(cuda_gemm_plan *p) {
    if (!p->used) return;
    CUDA_CHECK(cublasLtMatmulDescDestroy(p->op));
    CUDA_CHECK(cublasLtMatrixLayoutDestroy(p->a));
    CUDA_CHECK(cublasLtMatrixLayoutDestroy(p->b));
    CUDA_CHECK(cublasLtMatrixLayoutDestroy(p->c));
    p->used = false;
}

void cuda_gemm_init(cuda_impl *ci) {
    CUDA_CHECK(cublasLtCreate(&ci->lt));
    ci->lt_workspace_bytes = CUDA_GEMM_WORKSPACE;
    CUDA_CHECK(cudaMalloc(&ci->lt_workspace, ci->lt_workspace_bytes));
    ci->gemm = (cuda_gemm_cache *)kv_calloc(1, sizeof *ci->gemm);
}

void cuda_gemm_free(cuda_impl *ci) {
    for (int i = 0; i < CUDA_GEMM_CACHE; i++) gemm_plan_release(&ci->gemm->plans[i]);
    free(ci->gemm);
    CUDA_CHECK(cudaFree(ci->lt_workspace));
    CUDA_CHECK(cublasLtDestroy(ci->lt));
}

/* Largest power of two <= 256 dividing every address: the algorithm must not assume more. */
static int gemm_alignment(const void *const *ptrs, int n) {
    uintptr_t bits = 256;
    for (int i = 0; i < n; i++)
        if (ptrs[i]) bits |= (uintptr_t)ptrs[i];
    return (int)(bits & (~bits + 1));
}

static cuda_gemm_plan *gemm_plan_get(cuda_impl *ci, int n, int k, int m, bool bias, int align) {
    cuda_gemm_cache *gc = ci->gemm;
    for (int i = 0; i < CUDA_GEMM_CACHE; i++) {
        cuda_gemm_plan *p = &gc->plans[i];
        if (p->used && p->n == n && p->k == k && p->m == m && p->bias == bias && p->align == align)
            return p;
    }
    cuda_gemm_plan *p = &gc->plans[gc->next];
    gc->next = (gc->next + 1) % CUDA_GEMM_CACHE;
    gemm_plan_release(p);
    p->n = n, p->k = k, p->m = m, p->bias = bias, p->align = align;

    CUDA_CHECK(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    CUDA_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CUDA_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    if (bias) {
        cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
        CUDA_CHECK(
            cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep));
        cudaDataType_t bt = CUDA_R_16BF;
        CUDA_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt,
                                                  sizeof bt));
    }
    CUDA_CHECK(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, k, m, k)); /* w^T, column-major */
    CUDA_CHECK(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, k, n, k)); /* x^T */
    CUDA_CHECK(cublasLtMatrixLayoutCreate(&p->c, CUDA_R_16BF, m, n, m)); /* out^T */

    cublasLtMatmulPreference_t pref;
    CUDA_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    CUDA_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                    &ci->lt_workspace_bytes,
                                                    sizeof ci->lt_workspace_bytes));
    uint32_t al = (uint32_t)align;
    cublasLtMatmulPreferenceAttributes_t al_attrs[] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4; i++)
        CUDA_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, al_attrs[i], &al, sizeof al));
    cublasLtMatmulHeuristicResult_t res;
    int n_res = 0;
    CUDA_CHECK(cublasLtMatmulAlgoGetHeuristic(ci->lt, p->op, p->a, p->b, p->c, p->c, pref, 1, &res,
                                              &n_res));
    CUDA_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    if (n_res < 1) {
        fprintf(stderr, "cuBLASLt has no bf16 algorithm for n=%d k=%d m=%d\n", n, k, m);
        abort();
    }
    p->algo = res.algo;
    p->used = true;
    return p;
}

/* True when gemv_kernel takes this matmul (else cuBLASLt). */
static bool gemv_fits(const cuda_impl *ci, const void *const *ptrs, int n, int k) {
    if (n > ci->gemv_max_n || n > GEMV_MAX_N || k % 8 != 0) return false;
    if ((size_t)n * (size_t)k * sizeof(bf16) > GEMV_MAX_X_BYTES) return false;
    for (int i = 0; i < 3; i++) /* out, x, w; bias is read by element */
        if ((uintptr_t)ptrs[i] & 15) return false;
    return true;
}

static void gemv_launch(bool pdl, cudaStream_t s, bf16 *out, const bf16 *x, const bf16 *w,
                        const bf16 *bias, int n, int k, int m) {
    int rows_per_block = GEMV_WARPS * GEMV_ROWS;
    dim3 grid((unsigned)((m + rows_per_block - 1) / rows_per_block)), block(GEMV_WARPS * 32);
    /* gemv_kernel<N> for n = N rows */
    typedef void (*gemv_fn)(bf16 *, const bf16 *, const bf16 *, const bf16 *, int, int);
    static const gemv_fn kernels[GEMV_MAX_N] = {gemv_kernel<1>, gemv_kernel<2>, gemv_kernel<3>,
                                                gemv_kernel<4>, gemv_kernel<5>, gemv_kernel<6>,
                                                gemv_kernel<7>, gemv_kernel<8>};
    KV_CHECK(n >= 1 && n <= GEMV_MAX_N);
    cuda_launch(pdl, s, kernels[n - 1], grid, block, 0, out, x, w, bias, k, m);
}

/* The backend's matmul (contract in backend.h): gemv_kernel when gemv_fits, else cuBLASLt. */
void cuda_op_matmul(backend *be, void *out, const void *x, const void *w, const void *bias, int n,
                    int k, int m) {
    if (n == 0 || m == 0) return;
    if (cuda_matmul_fp8(be, out, x, w, bias, n, k, m)) return; /* an FP8 weight */
    cuda_impl *ci = cuda_impl_of(be);
    const void *ptrs[4] = {out, x, w, bias};
    if (gemv_fits(ci, ptrs, n, k)) {
        gemv_launch(ci->pdl, cuda_compute_stream(be), (bf16 *)out, (const bf16 *)x, (const bf16 *)w,
                    (const bf16 *)bias, n, k, m);
        return;
    }
    cuda_gemm_plan *p = gemm_plan_get(ci, n, k, m, bias != NULL, gemm_alignment(ptrs, 4));
    if (bias)
        CUDA_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                  sizeof bias));
    float alpha = 1.0f, beta = 0.0f;
    CUDA_CHECK(cublasLtMatmul(ci->lt, p->op, &alpha, w, p->a, x, p->b, &beta, out, p->c, out, p->c,
                              &p->algo, ci->lt_workspace, ci->lt_workspace_bytes,
                              cuda_compute_stream(be)));
}

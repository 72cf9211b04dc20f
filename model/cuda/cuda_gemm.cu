/* matmul: out[n, m] = x[n, k] @ w[m, k]^T (+ bias[m]), bf16 in and out, fp32 accumulation.
 * Decode-sized n (a few rows: the weights are read once, a pure stream) goes to gemv_kernel;
 * the rest to cuBLASLt with the bias fused as an epilogue. Row-major to cuBLAS's column-major: the
 * same bytes read column-major are out^T (m x n), w^T (k x m) and x^T (k x n), so out^T = op_T(w^T)
 * x^T. Descriptors and the chosen algorithm are cached per shape: the heuristic query costs tens of
 * microseconds, more than a decode-step GEMM itself. For prefill-sized n the heuristic's first
 * algorithm is often not the fastest, so the first matmul of a shape times its candidates
 * (KVSERVE_CUDA_GEMM_TUNE, see cuda_gemm_init). Kernels first, launchers after. */
#include "model/cuda/cuda_internal.h"

#include <stdlib.h>
#include <string.h>

typedef __nv_bfloat16 bf16;

#define CUDA_GEMM_CACHE 64
/* gemv_kernel: rows of x it takes, bytes of x it keeps hot in L1 (all its warps reread x) */
#define GEMV_MAX_N          8
#define GEMV_MAX_X_BYTES    (64 << 10)
#define GEMV_WARPS          4 /* per block */
#define GEMV_ROWS           2 /* weight rows per warp */
#define GEMV_UNROLL         4 /* 16-byte weight loads in flight per row and lane */
#define CUDA_GEMM_WORKSPACE ((size_t)32 << 20)
/* autotuning: matmuls of n >= TUNE_MIN_N rows; candidates from the heuristic, timed runs each */
#define GEMM_TUNE_MIN_N      256
#define GEMM_TUNE_CANDIDATES 8
#define GEMM_TUNE_RUNS       3

/* ================================ kernels ================================ */

/* A weight load that bypasses L1: each weight byte is read once, x stays there instead. */
__device__ __forceinline__ uint4 ld_stream(const uint4 *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

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
    bool untuned; /* algo is the heuristic's first, pending gemm_plan_tune */
} cuda_gemm_plan;

/* The algorithm timed fastest for n in (bucket / 2, bucket] (bucket: a power of two). */
typedef struct cuda_gemm_tuned {
    int64_t bucket;
    int k, m, align;
    bool bias;
    cublasLtMatmulAlgo_t algo;
} cuda_gemm_tuned;

struct cuda_gemm_cache {
    cuda_gemm_plan plans[CUDA_GEMM_CACHE];
    int next;  /* slot replaced on the next miss (round robin) */
    bool tune; /* KVSERVE_CUDA_GEMM_TUNE */
    cuda_gemm_tuned tuned[CUDA_GEMM_CACHE];
    int n_tuned; /* when full, new buckets keep the heuristic's first */
};

static void gemm_plan_release(cuda_gemm_plan *p) {
    if (!p->used) return;
    CUDA_CHECK(cublasLtMatmulDescDestroy(p->op));
    CUDA_CHECK(cublasLtMatrixLayoutDestroy(p->a));
    CUDA_CHECK(cublasLtMatrixLayoutDestroy(p->b));
    CUDA_CHECK(cublasLtMatrixLayoutDestroy(p->c));
    p->used = false;
}

/* Reads the switch KVSERVE_CUDA_GEMM_TUNE once, at backend create (README "Development"):
 * "0" keeps the heuristic's first algorithm for every matmul; unset or anything else times the
 * candidates of each prefill-sized shape on its first use (gemm_plan_tune). */
void cuda_gemm_init(cuda_impl *ci) {
    CUDA_CHECK(cublasLtCreate(&ci->lt));
    ci->lt_workspace_bytes = CUDA_GEMM_WORKSPACE;
    CUDA_CHECK(cudaMalloc(&ci->lt_workspace, ci->lt_workspace_bytes));
    ci->gemm = (cuda_gemm_cache *)kv_calloc(1, sizeof *ci->gemm);
    const char *tune = getenv("KVSERVE_CUDA_GEMM_TUNE");
    ci->gemm->tune = !(tune && strcmp(tune, "0") == 0);
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

/* Up to max algorithms for p's shape and alignment, best first by cuBLASLt's estimate, each
 * needing at most the backend's workspace; returns how many. */
static int gemm_heuristic(cuda_impl *ci, const cuda_gemm_plan *p,
                          cublasLtMatmulHeuristicResult_t *res, int max) {
    cublasLtMatmulPreference_t pref;
    CUDA_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    CUDA_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                    &ci->lt_workspace_bytes,
                                                    sizeof ci->lt_workspace_bytes));
    uint32_t al = (uint32_t)p->align;
    cublasLtMatmulPreferenceAttributes_t al_attrs[] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4; i++)
        CUDA_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, al_attrs[i], &al, sizeof al));
    int n_res = 0;
    CUDA_CHECK(cublasLtMatmulAlgoGetHeuristic(ci->lt, p->op, p->a, p->b, p->c, p->c, pref, max, res,
                                              &n_res));
    CUDA_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    return n_res;
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

    cublasLtMatmulHeuristicResult_t res;
    if (gemm_heuristic(ci, p, &res, 1) < 1) {
        fprintf(stderr, "cuBLASLt has no bf16 algorithm for n=%d k=%d m=%d\n", n, k, m);
        abort();
    }
    p->algo = res.algo;
    p->untuned = ci->gemm->tune && n >= GEMM_TUNE_MIN_N;
    p->used = true;
    return p;
}

/* One cuBLASLt matmul of p's shape with algo, on s; returns its status for the caller to check. */
static cublasStatus_t gemm_run(cuda_impl *ci, const cuda_gemm_plan *p,
                               const cublasLtMatmulAlgo_t *algo, void *out, const void *x,
                               const void *w, cudaStream_t s) {
    float alpha = 1.0f, beta = 0.0f;
    return cublasLtMatmul(ci->lt, p->op, &alpha, w, p->a, x, p->b, &beta, out, p->c, out, p->c,
                          algo, ci->lt_workspace, ci->lt_workspace_bytes, s);
}

/* Gives p the algorithm tuned for its bucket (n rounded up to a power of two >= GEMM_TUNE_MIN_N).
 * A new bucket times the heuristic's candidates on these operands (one warm-up run, then
 * GEMM_TUNE_RUNS timed) and waits for them; every run writes out with the same math, and the
 * caller's matmul follows with the winner. Nothing happens while s is capturing a graph (no
 * waiting there): p keeps the heuristic's first and stays untuned for the next uncaptured call. */
static void gemm_plan_tune(cuda_impl *ci, cuda_gemm_plan *p, void *out, const void *x,
                           const void *w, cudaStream_t s) {
    cudaStreamCaptureStatus capture;
    CUDA_CHECK(cudaStreamIsCapturing(s, &capture));
    if (capture != cudaStreamCaptureStatusNone) return;
    p->untuned = false;
    cuda_gemm_cache *gc = ci->gemm;
    int64_t bucket = GEMM_TUNE_MIN_N;
    while (bucket < p->n) bucket *= 2;
    for (int i = 0; i < gc->n_tuned; i++) {
        const cuda_gemm_tuned *t = &gc->tuned[i];
        if (t->bucket != bucket || t->k != p->k || t->m != p->m || t->bias != p->bias ||
            t->align != p->align)
            continue;
        /* tuned on another n of the bucket: use it where it supports this n */
        cublasLtMatmulHeuristicResult_t check;
        if (cublasLtMatmulAlgoCheck(ci->lt, p->op, p->a, p->b, p->c, p->c, &t->algo, &check) ==
                CUBLAS_STATUS_SUCCESS &&
            check.workspaceSize <= ci->lt_workspace_bytes)
            p->algo = t->algo;
        return;
    }
    if (gc->n_tuned == CUDA_GEMM_CACHE) return;

    cublasLtMatmulHeuristicResult_t res[GEMM_TUNE_CANDIDATES];
    int n_res = gemm_heuristic(ci, p, res, GEMM_TUNE_CANDIDATES), best = 0;
    float best_ms = -1;
    cudaEvent_t start, stop;
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
    for (int i = 0; i < n_res; i++) {
        /* a candidate that refuses to run is skipped */
        if (gemm_run(ci, p, &res[i].algo, out, x, w, s) != CUBLAS_STATUS_SUCCESS) continue;
        CUDA_CHECK(cudaEventRecord(start, s));
        for (int r = 0; r < GEMM_TUNE_RUNS; r++)
            CUDA_CHECK(gemm_run(ci, p, &res[i].algo, out, x, w, s));
        CUDA_CHECK(cudaEventRecord(stop, s));
        CUDA_CHECK(cudaEventSynchronize(stop));
        float ms;
        CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
        if (best_ms < 0 || ms < best_ms) best_ms = ms, best = i;
    }
    CUDA_CHECK(cudaEventDestroy(start));
    CUDA_CHECK(cudaEventDestroy(stop));
    if (best_ms < 0) return; /* none ran: the heuristic's first, as untuned */
    p->algo = res[best].algo;
    gc->tuned[gc->n_tuned++] = (cuda_gemm_tuned){bucket, p->k, p->m, p->align, p->bias, p->algo};
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
    cudaStream_t s = cuda_compute_stream(be);
    if (p->untuned) gemm_plan_tune(ci, p, out, x, w, s);
    CUDA_CHECK(gemm_run(ci, p, &p->algo, out, x, w, s));
}

/* matmul: out[n, m] = x[n, k] @ w[m, k]^T (+ bias[m]) through cuBLASLt, bf16 in and out, fp32
 * accumulation, the bias fused as an epilogue. Row-major to cuBLAS's column-major: the same bytes
 * read column-major are out^T (m x n), w^T (k x m) and x^T (k x n), so out^T = op_T(w^T) x^T.
 * Descriptors and the chosen algorithm are cached per shape: the heuristic query costs tens of
 * microseconds, more than a decode-step GEMM itself. */
#include "model/cuda/cuda_internal.h"

#include <stdlib.h>

#define CUDA_GEMM_CACHE 64
#define CUDA_GEMM_WORKSPACE ((size_t)32 << 20)

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
        CUDA_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep,
                                                  sizeof ep));
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

void cuda_op_matmul(backend *be, void *out, const void *x, const void *w, const void *bias, int n,
                    int k, int m) {
    if (n == 0 || m == 0) return;
    cuda_impl *ci = cuda_impl_of(be);
    const void *ptrs[4] = {out, x, w, bias};
    cuda_gemm_plan *p = gemm_plan_get(ci, n, k, m, bias != NULL, gemm_alignment(ptrs, 4));
    if (bias)
        CUDA_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                  sizeof bias));
    float alpha = 1.0f, beta = 0.0f;
    CUDA_CHECK(cublasLtMatmul(ci->lt, p->op, &alpha, w, p->a, x, p->b, &beta, out, p->c, out, p->c,
                              &p->algo, ci->lt_workspace, ci->lt_workspace_bytes,
                              cuda_compute_stream(be)));
}

/* State shared by the CUDA backend's files (C++ only): the implementation struct behind
 * backend.impl and the op functions each file provides to the ops table in cuda_backend.cu.
 * No global state: everything hangs off cuda_impl. */
#ifndef KVSERVE_CUDA_INTERNAL_H
#define KVSERVE_CUDA_INTERNAL_H

/* common.h is C11; nvcc's front end knows no _Noreturn. */
#define _Noreturn [[noreturn]]
extern "C" {
#include "model/backend.h"
#include "model/cuda/cuda_backend.h"
}
#undef _Noreturn

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "model/cuda/cuda_check.h"

#include <utility>

/* A weight load that bypasses L1 (the GEMV kernels, bf16 and e4m3): each weight byte is read
 * once, x stays there instead. */
__device__ __forceinline__ uint4 ld_stream(const uint4 *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

/* cp.async (sm_80): 16 bytes global -> shared, bypassing L1, zero-filled when !valid */
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool valid) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    int n = valid ? 16 : 0; /* 0: zero-fill, nothing read */
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n");
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* c += a (16x16, row) * b (16x8, col), bf16 in, fp32 accumulate. */
__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0,
                                          uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Programmatic dependent launch (sm_90): a kernel launched with cuda_launch(pdl = true) may start
 * while the kernel before it on the stream is still running. Every kernel of this backend
 * therefore calls pdl_wait() before it touches any memory another kernel writes (it returns
 * once the previous kernel has finished and its writes are visible; a no-op for a plain
 * launch), then pdl_trigger() to let the next kernel start. Only reads of never-written data
 * (weights) may come before pdl_wait(). Since every kernel waits, each finishes after all the
 * kernels before it, so a kernel may read what any earlier one wrote. Before sm_90 there is no
 * such launch (cuda_backend_create turns pdl off) and both are no-ops. */
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

/* kernel<<<grid, block, smem, s>>>(args...), with programmatic stream serialization when pdl.
 * This is the launch check too: cudaLaunchKernelEx returns the launch error that
 * CUDA_LAUNCH_CHECK would read, so no CUDA_LAUNCH_CHECK follows a cuda_launch. */
template <typename... KArgs, typename... Args>
static inline void cuda_launch(bool pdl, cudaStream_t s, void (*kernel)(KArgs...), dim3 grid,
                               dim3 block, size_t smem, Args &&...args) {
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg;
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    cfg.attrs = &attr;
    cfg.numAttrs = pdl ? 1 : 0;
    CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

/* One attention work item: n_tok consecutive new tokens of sequence seq starting at token tok0
 * (all heads of one GQA group of each token become rows of one tile; see cuda_attention.cu). */
typedef struct cuda_attn_tile {
    int32_t seq, tok0, n_tok, pad;
} cuda_attn_tile;

/* A pinned host buffer that feeds one upload; reused once the event says the copy is done. */
typedef struct cuda_staging {
    void *host;
    size_t cap;
    cudaEvent_t done;
} cuda_staging;

#define CUDA_N_STAGING 4

/* Where downloads to pageable host memory pass: a device f32 copy, then a pinned host one,
 * copied on in parts by threads (cuda_backend.cu). */
#define CUDA_DOWNLOAD_PARTS 8
typedef struct cuda_download {
    float *dev;      /* device f32 copy of the activations being downloaded */
    size_t dev_cap;  /* floats */
    float *host;     /* pinned */
    size_t host_cap; /* floats */
    cudaEvent_t part_ready[CUDA_DOWNLOAD_PARTS]; /* part i is in host */
} cuda_download;

/* Attention tiles of the current step for one GQA group size, split in two lists: sequences
 * with few new tokens (decode-shaped, small tiles) and the rest (prefill-shaped). */
typedef struct cuda_attn_plan {
    int group; /* n_heads / n_kv_heads the lists were built for; 0 = not built */
    int n_small, n_large;
    int max_ctx_small, max_ctx_large; /* longest context in each list */
    cuda_attn_tile *d_tiles;          /* device: small tiles, then large ones */
    size_t cap;                       /* tiles d_tiles holds */
} cuda_attn_plan;

/* The current step (set by step_begin). Device pointers point into d_meta. */
typedef struct cuda_step {
    int n_tokens, n_seqs, max_blocks, n_out;
    bool pure_decode; /* every sequence has exactly one new token: token s is sequence s's */
    const int32_t *tokens, *positions, *token_seq, *seq_start, *seq_len, *out_rows, *block_table;
    int32_t *h_seq_start, *h_seq_len; /* host copies [n_seqs + 1], [n_seqs] for attention plans */
    size_t h_cap;                     /* sequences the host copies hold */
    int32_t *d_meta;                  /* device int32 buffer of all the arrays above */
    size_t d_meta_cap;                /* int32 elements */
} cuda_step;

typedef struct cuda_gemm_cache cuda_gemm_cache; /* cuda_gemm.cu */
typedef struct cuda_fp8_table cuda_fp8_table;   /* cuda_gemm_fp8.cu */
/* matmuls of at most this many rows take the GEMV kernel (KVSERVE_CUDA_GEMV=N overrides; 0:
 * cuBLASLt always); see tests/bench/NOTES-cuda.md, run 7 */
#define CUDA_GEMV_DEFAULT_MAX_N 4

/* Which attention kernels run (the one dispatch point: cuda_backend_create picks it from the
 * device and KVSERVE_CUDA_PORTABLE; cuda_backend_set_attn_path for tests). Everything else is
 * the same on both paths. */
typedef enum cuda_attn_path {
    CUDA_ATTN_PORTABLE, /* mma.sync + ldmatrix + cp.async kernels: every sm_80+ device */
    CUDA_ATTN_HOPPER,   /* prefill at head dim 128 by wgmma: sm_90 with the 90a target built */
} cuda_attn_path;

/* Attention kernel variants whose shared-memory limit and occupancy are set on first use. */
enum { CUDA_ATTN_N_KERNELS = 12 };

typedef struct cuda_impl {
    int device;
    int n_sms;
    size_t smem_optin; /* max dynamic shared memory per block */
    int cc_major, cc_minor;
    int code_arch;     /* __CUDA_ARCH__ / 10 of the machine code the device runs (90, 86, ...) */
    bool hopper_built; /* the code the device runs has the wgmma kernels (sm_90a) */
    cuda_attn_path attn_path;
    char desc[256]; /* backend.desc: device, code, attention path */
    cudaStream_t streams[BACKEND_NUM_STREAMS];
    bool event_timing;
    cuda_staging staging[CUDA_N_STAGING];
    int staging_next;
    int copy_threads; /* host threads of one staging copy (kv_memcpy_parallel) */
    cuda_step step;
    cuda_attn_plan plan;
    unsigned attn_smem_set; /* attention kernel variants whose shared-memory limit was raised */
    int attn_blocks_per_sm[CUDA_ATTN_N_KERNELS]; /* their occupancy, measured then */
    float *attn_scratch;                         /* split-K partial outputs */
    size_t attn_scratch_cap;                     /* floats */
    cublasLtHandle_t lt;
    void *lt_workspace;
    size_t lt_workspace_bytes;
    cuda_gemm_cache *gemm;
    cuda_fp8_table *fp8; /* the FP8 weights (cuda_gemm_fp8.cu); NULL until the first */
    int gemv_max_n;      /* matmuls of n <= gemv_max_n rows take gemv_kernel (else cuBLASLt) */
    bool pdl;            /* kernels launch with programmatic dependent launch (KVSERVE_CUDA_PDL) */
    /* copy_async of n > 1 copies is one cudaMemcpyBatchAsync (KVSERVE_CUDA_MEMCPY_BATCH) */
    bool memcpy_batch;
    cuda_download download;
    bool graphs_enabled; /* graph_begin records (KVSERVE_CUDA_GRAPHS=0 turns it off) */
    bool capturing;      /* between graph_begin and graph_end: no allocation, no upload */
    unsigned
        graph_gen; /* bumped whenever a buffer recorded ops read moves; older graphs are stale */
} cuda_impl;

static inline cuda_impl *cuda_impl_of(backend *be) {
    return (cuda_impl *)be->impl;
}
static inline cudaStream_t cuda_compute_stream(backend *be) {
    return cuda_impl_of(be)->streams[BACKEND_STREAM_COMPUTE];
}

/* Copies bytes from host src into dst (device) on stream s through a pinned staging buffer, so
 * the caller may reuse src at once. */
void cuda_upload_staged(cuda_impl *ci, cudaStream_t s, void *dst, const void *src, size_t bytes);

/* Device buffers that recorded graphs point into are reallocated only through this: it refuses
 * while recording (a broken invariant) and marks every recorded graph stale. */
void cuda_graph_buffers_moved(cuda_impl *ci);

/* cuda_device.cu: whether this build has code for compute capability major.minor (else err says
 * which GPU and what was built); the probe of the code the device loads (sets code_arch,
 * hopper_built; false with err set when none loads); the attention path from those and
 * KVSERVE_CUDA_PORTABLE (read here, once per backend); be->desc from the impl. */
bool cuda_build_runs_on(int major, int minor);
void cuda_no_code_error(kv_error *err, int dev, const char *name, int major, int minor);
bool cuda_probe(cuda_impl *ci, const cudaDeviceProp *prop, kv_error *err);
cuda_attn_path cuda_pick_attn_path(const cuda_impl *ci);
void cuda_describe(backend *be);

/* cuda_gemm.cu: the cuBLASLt handle, workspace and plan cache (init/free with the backend);
 * the matmul op. The cuda_op_* functions here are backend ops: their contracts are in backend.h. */
void cuda_gemm_init(cuda_impl *ci);
void cuda_gemm_free(cuda_impl *ci);
void cuda_op_matmul(backend *be, void *out, const void *x, const void *w, const void *bias, int n,
                    int k, int m);

/* cuda_gemm_fp8.cu: FP8 (e4m3, per-row scale) weights. weight_upload_fp8 is the backend op;
 * cuda_matmul_fp8 runs matmul and returns true when w is one of them (else does nothing);
 * cuda_fp8_forget drops p from the table (dev_free); cuda_fp8_free at destroy. */
void *cuda_weight_upload_fp8(backend *be, const uint8_t *q, const float *row_scales, size_t rows,
                             size_t cols);
bool cuda_matmul_fp8(backend *be, void *out, const void *x, const void *w, const void *bias, int n,
                     int k, int m);
void cuda_fp8_forget(cuda_impl *ci, const void *p);
void cuda_fp8_free(cuda_impl *ci);

/* cuda_ops.cu: the element-wise and row-wise ops */
void cuda_op_embed(backend *be, void *out, const void *table, int dim);
void cuda_op_rmsnorm(backend *be, void *out, const void *x, const void *w, int n, int dim,
                     float eps);
void cuda_op_add_rmsnorm(backend *be, void *out, void *x, const void *delta, const void *w, int n,
                         int dim, float eps);
void cuda_op_add(backend *be, void *x, const void *delta, size_t n);
void cuda_op_rope(backend *be, void *x, int row_stride, int n_heads, int head_dim, int rot_dim,
                  const float *inv_freq, float mscale);
void cuda_op_swiglu(backend *be, void *out, const void *gu, int n, int ff);
void cuda_op_kv_write(backend *be, void *pool, const backend_kv_layout *l, int layer, const void *k,
                      const void *v, int row_stride);
void cuda_op_gather_rows(backend *be, void *out, const void *x, int dim);
/* cuda_family_ops.cu: the ops some families add (Qwen3/Gemma q/k norms, GeGLU, multipliers,
 * soft-capping) */
void cuda_op_head_rmsnorm(backend *be, void *x, int n, int row_stride, int n_heads, int head_dim,
                          const void *w, float eps);
void cuda_op_geglu(backend *be, void *out, const void *gu, int n, int ff);
void cuda_op_scale(backend *be, void *x, size_t n, float s);
void cuda_op_softcap(backend *be, void *x, size_t n, float cap);
/* f32 -> bf16 and back on the device (uploads, downloads). */
void cuda_convert_f32_to_bf16(cudaStream_t s, __nv_bfloat16 *dst, const float *src, size_t n);
void cuda_convert_f16_to_bf16(cudaStream_t s, __nv_bfloat16 *dst, const __half *src, size_t n);
void cuda_convert_bf16_to_f32(cudaStream_t s, float *dst, const __nv_bfloat16 *src, size_t n);

/* cuda_attention.cu: paged attention. Grows attn_scratch and raises kernels' shared-memory limits
 * on first use, which a recording cannot do: it relies on its shape's unrecorded first run. */
void cuda_op_attention(backend *be, void *out, const void *q, int q_stride, const void *pool,
                       const backend_kv_layout *l, int layer, int n_heads,
                       const backend_attn_params *ap);

#endif

/* Building blocks of the attention kernels (included by cuda_attention.cu and
 * cuda_attention_sm90.cuh only; one translation unit, built for sm_90a): the kernel parameters,
 * what one block works on (tile, KV head, split), the ldmatrix primitives (cp.async and mma.sync
 * are in cuda_internal.h),
 * the Q and paged K/V tile loads and the online softmax of one row. No kernels. */
#ifndef KVSERVE_CUDA_ATTENTION_COMMON_CUH
#define KVSERVE_CUDA_ATTENTION_COMMON_CUH

#include "model/cuda/cuda_internal.h"

#include <math.h>

typedef __nv_bfloat16 bf16;

#define ATTN_BN         64  /* K/V tokens per tile */
#define ATTN_MIN_SPLIT  128 /* shortest context piece one split-K block takes */
#define ATTN_MAX_SPLITS 64

typedef struct attn_params {
    bf16 *out;
    const bf16 *q;
    int q_stride;
    const char *pool;
    size_t block_bytes;
    size_t k_off, v_off; /* bytes from a block's start to (layer, k|v, head 0, slot 0) */
    int kv_bytes;        /* bytes of one pool element: 2 (bf16), 1 (e4m3, kv_fp8) */
    bool kv_fp8;         /* pool elements are e4m3: K/V = e4m3 * k_scale / v_scale */
    float k_scale, v_scale;
    int n_kv_heads, head_dim, block_size, n_heads, group;
    float scale_log2; /* softmax scale * log2(e): the kernels use exp2 */
    /* Gemma / Mistral sliding window (> 0: keys in (pos - window, pos]) and Gemma 2 soft cap
     * (> 0: score = softcap * tanh(scale q.k / softcap)); only attn_generic_kernel has them */
    float scale, softcap;
    int window;
    const int32_t *positions, *token_seq, *block_table;
    int max_blocks, n_tokens;
    const cuda_attn_tile *tiles; /* NULL: tile i is token i of sequence i (a pure decode step) */
    int split_len; /* context tokens per split (a multiple of ATTN_BN); 0: per tile, see below */
    int n_splits;
    float *part_o;   /* [n_splits][n_tokens][n_heads][head_dim] when n_splits > 1 */
    float *part_lse; /* [n_splits][n_tokens][n_heads], log2 domain */
} attn_params;

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void *smem) {
    unsigned a = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void *smem) {
    unsigned a = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}

/* Shared-memory tiles are rows of HD bf16 in 16-byte chunks, chunk c of row r stored at
 * c ^ (r & 7): the 8 rows one ldmatrix phase reads then hit 8 different bank groups. */
template <int HD> __device__ __forceinline__ int swz(int r, int c) {
    return r * HD + ((c ^ (r & 7)) << 3);
}

/* What one block of either tensor-core kernel works on: the rows of one tile for one KV head
 * (row r -> token tok0 + r / group, query head kh * group + r % group) and the context range
 * [kv_lo, kv_hi) of its split. */
struct attn_block {
    cuda_attn_tile tile;
    int kh, split, G, min_pos, kv_lo, kv_hi, n_rows;
    const int32_t *bt;
    const char *k_base, *v_base;
};

__device__ __forceinline__ cuda_attn_tile attn_tile(const attn_params &p, int i) {
    return p.tiles ? p.tiles[i] : cuda_attn_tile{i, i, 1, 0};
}

/* Context tokens per split of a tile whose context is ctx: split_len, or with split_len 0 the
 * tile's own context cut in n_splits pieces of at least ATTN_MIN_SPLIT (whole K/V tiles), so
 * the grid never depends on the step's context lengths (recorded steps replay it) and short
 * contexts leave their last splits empty. */
__device__ __forceinline__ int attn_split_len(const attn_params &p, int ctx) {
    if (p.split_len) return p.split_len;
    int len = max((ctx + p.n_splits - 1) / p.n_splits, ATTN_MIN_SPLIT);
    return (len + ATTN_BN - 1) / ATTN_BN * ATTN_BN;
}

__device__ __forceinline__ attn_block attn_block_init(const attn_params &p) {
    attn_block b;
    b.tile = attn_tile(p, blockIdx.x);
    b.kh = blockIdx.y;
    b.split = blockIdx.z;
    b.G = p.group;
    b.min_pos = p.positions[b.tile.tok0]; /* new tokens sit at consecutive positions */
    const int ctx = b.min_pos + b.tile.n_tok, len = attn_split_len(p, ctx);
    b.kv_lo = b.split * len;
    b.kv_hi = min(ctx, b.kv_lo + len);
    b.n_rows = b.tile.n_tok * b.G;
    b.bt = p.block_table + (size_t)b.tile.seq * p.max_blocks;
    size_t head_bytes = (size_t)b.kh * p.block_size * p.head_dim * p.kv_bytes;
    b.k_base = p.pool + p.k_off + head_bytes;
    b.v_base = p.pool + p.v_off + head_bytes;
    return b;
}

/* (token, head) index of row r, as in out[token][head] */
__device__ __forceinline__ size_t attn_row_index(const attn_params &p, const attn_block &b, int r) {
    return (size_t)(b.tile.tok0 + r / b.G) * p.n_heads + b.kh * b.G + r % b.G;
}

/* A split that lies past every row's context: marks its rows empty for the combine. */
__device__ void attn_block_mark_empty(const attn_params &p, const attn_block &b) {
    for (int r = threadIdx.x; r < b.n_rows; r += blockDim.x)
        p.part_lse[(size_t)b.split * p.n_tokens * p.n_heads + attn_row_index(p, b, r)] = -INFINITY;
}

/* Position of row r, -1 for the padding rows past the tile's tokens. */
__device__ __forceinline__ int attn_row_pos(const attn_block &b, int r) {
    return r < b.n_rows ? b.min_pos + r / b.G : -1;
}

__device__ __forceinline__ int attn_block_id(const attn_params &p, const attn_block &b, int j) {
    return j < b.kv_hi ? b.bt[j / p.block_size] : 0;
}

template <int HD, int BM, int THREADS>
__device__ __forceinline__ void attn_load_q(const attn_params &p, const attn_block &b, bf16 *sq) {
    constexpr int CH = HD / 8;
    for (int idx = threadIdx.x; idx < BM * CH; idx += THREADS) {
        int r = idx / CH, c = idx % CH;
        bool valid = r < b.n_rows;
        const bf16 *src = valid ? p.q + (size_t)(b.tile.tok0 + r / b.G) * p.q_stride +
                                      (b.kh * b.G + r % b.G) * HD + c * 8
                                : p.q;
        cp_async16(sq + swz<HD>(r, c), src, valid);
    }
}

/* 8 e4m3 values (8 bytes) times scale as 8 bf16 (16 bytes). */
__device__ __forceinline__ uint4 fp8x8_to_bf16x8(uint2 raw, float scale) {
    const __nv_fp8x2_storage_t *pair = (const __nv_fp8x2_storage_t *)&raw;
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 f = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(pair[i], __NV_E4M3)));
        w[i] = pack_bf16(f.x * scale, f.y * scale);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

/* One 16-byte chunk (8 bf16) of a K or V row into shared memory: elem_off is the byte offset
 * of the chunk's first element in a bf16 pool, halved for e4m3 by the caller's kv_bytes. A bf16
 * pool is copied by cp.async; an e4m3 pool is read (8 bytes), dequantized and stored, which
 * completes at once (the caller's cp.async waits and barriers cover it the same way). Invalid
 * chunks are zeros. */
__device__ __forceinline__ void attn_kv_chunk(const attn_params &p, void *smem, const char *src,
                                              bool valid, float scale) {
    if (!p.kv_fp8) {
        cp_async16(smem, valid ? src : p.pool, valid);
        return;
    }
    *(uint4 *)smem = valid ? fp8x8_to_bf16x8(*(const uint2 *)src, scale) : make_uint4(0, 0, 0, 0);
}

/* K and V rows j0 .. j0 + BN - 1 into one stage; blk holds their block ids (read a tile ahead,
 * so these copies never wait on the block table). Rows past kv_hi are zero-filled: V must be
 * finite where P is 0. A bf16 pool (FP8 false) is copied by cp.async; an e4m3 pool is read into
 * registers, every load of the tile first so that they wait one latency together, then
 * dequantized and stored, which completes at once (the caller's cp.async waits and barriers
 * cover it the same way). FP8 is a template parameter so that the bf16 kernels carry none of
 * the e4m3 registers. */
template <int HD, int THREADS, bool FP8>
__device__ __forceinline__ void attn_load_kv(const attn_params &p, const attn_block &b, bf16 *sk,
                                             bf16 *sv, const int *blk, int j0) {
    constexpr int CH = HD / 8;
    if constexpr (FP8) {
        constexpr int PER = (ATTN_BN * CH + THREADS - 1) / THREADS;
        uint2 kr[PER], vr[PER];
#pragma unroll
        for (int i = 0; i < PER; i++) {
            int idx = threadIdx.x + i * THREADS, r = idx / CH, c = idx % CH;
            kr[i] = vr[i] = make_uint2(0, 0);
            if (idx < ATTN_BN * CH && j0 + r < b.kv_hi) {
                size_t off = (size_t)blk[r] * p.block_bytes +
                             (size_t)((j0 + r) % p.block_size) * HD + (size_t)c * 8;
                kr[i] = *(const uint2 *)(b.k_base + off);
                vr[i] = *(const uint2 *)(b.v_base + off);
            }
        }
#pragma unroll
        for (int i = 0; i < PER; i++) {
            int idx = threadIdx.x + i * THREADS, r = idx / CH, c = idx % CH;
            if (idx >= ATTN_BN * CH) break;
            *(uint4 *)(sk + swz<HD>(r, c)) = fp8x8_to_bf16x8(kr[i], p.k_scale);
            *(uint4 *)(sv + swz<HD>(r, c)) = fp8x8_to_bf16x8(vr[i], p.v_scale);
        }
    } else {
        for (int idx = threadIdx.x; idx < ATTN_BN * CH; idx += THREADS) {
            int r = idx / CH, c = idx % CH, j = j0 + r;
            bool valid = j < b.kv_hi;
            size_t off = (size_t)blk[r] * p.block_bytes +
                         ((size_t)(j % p.block_size) * HD + c * 8) * p.kv_bytes;
            attn_kv_chunk(p, sk + swz<HD>(r, c), b.k_base + off, valid, p.k_scale);
            attn_kv_chunk(p, sv + swz<HD>(r, c), b.v_base + off, valid, p.v_scale);
        }
    }
}

/* Online softmax of one row's scores held by the 4 lanes of a quad (n values per lane, raw
 * q.k): masks nothing (done before), updates the running max m and this lane's share of the sum
 * l, turns s into probabilities and returns the factor the row's output must be scaled by. */
template <int N>
__device__ __forceinline__ float attn_softmax_row(float *s, float &m, float &l, float scale) {
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < N; i++) mx = fmaxf(mx, s[i]);
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    float m_new = fmaxf(m, mx);
    float alpha = m_new == m ? 1.0f : exp2f((m - m_new) * scale); /* m = -inf: 0 */
    m = m_new;
    float ms = m_new == -INFINITY ? 0.0f : m_new * scale;
    float sum = 0;
#pragma unroll
    for (int i = 0; i < N; i++) {
        s[i] = exp2f(fmaf(s[i], scale, -ms));
        sum += s[i];
    }
    l = l * alpha + sum;
    return alpha;
}

#endif

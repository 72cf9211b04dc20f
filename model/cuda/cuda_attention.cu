/* Paged causal attention over the KV pool (layout in backend.h), GQA, bf16 in and out, fp32
 * softmax. One FlashAttention-style tensor-core kernel (mma.sync m16n8k16) serves decode and
 * prefill: the rows of a tile are (token, query head of one GQA group) pairs, so K/V tiles loaded
 * once feed every head of the group. Decode-shaped sequences use small tiles and split the context
 * across blocks (split-K, then a combine kernel); prefill-shaped ones use 128-row tiles. Head dims
 * other than 64/128 take a plain CUDA-core kernel. Kernels first, launchers after. */
#include "model/cuda/cuda_internal.h"

#include <math.h>
#include <stdlib.h>

typedef __nv_bfloat16 bf16;

#define ATTN_BN 64          /* K/V tokens per tile */
#define ATTN_MIN_SPLIT 128  /* shortest context piece one split-K block takes */
#define ATTN_MAX_SPLITS 64

typedef struct attn_params {
    bf16 *out;
    const bf16 *q;
    int q_stride;
    const char *pool;
    size_t block_bytes;
    size_t k_off, v_off; /* bytes from a block's start to (layer, k|v, head 0, slot 0) */
    int n_kv_heads, head_dim, block_size, n_heads, group;
    float scale_log2; /* softmax scale * log2(e): the kernels use exp2 */
    const int32_t *positions, *token_seq, *block_table;
    int max_blocks, n_tokens;
    const cuda_attn_tile *tiles;
    int split_len; /* context tokens per split (a multiple of ATTN_BN) */
    int n_splits;
    float *part_o;   /* [n_splits][n_tokens][n_heads][head_dim] when n_splits > 1 */
    float *part_lse; /* [n_splits][n_tokens][n_heads], log2 domain */
} attn_params;

/* ================================ kernels ================================ */

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool valid) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    int n = valid ? 16 : 0; /* 0: zero-fill, nothing read */
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

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

/* c += a (16x16, row) * b (16x8, col), bf16 in, fp32 accumulate. */
__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0,
                                          uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
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

/* Grid (tile, kv head, split). Rows of the tile: r -> token tok0 + r / group, query head
 * kv_head * group + r % group. Each warp owns 16 * WM rows; all warps share the K/V tiles,
 * double-buffered through cp.async. */
template <int HD, int WM, int NW>
__global__ void __launch_bounds__(NW * 32) attn_mma_kernel(attn_params p) {
    constexpr int BM = NW * WM * 16, BN = ATTN_BN, CH = HD / 8, THREADS = NW * 32;
    constexpr float NEG_INF = -INFINITY;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    bf16 *sq = (bf16 *)smem_raw;
    bf16 *sk = sq + BM * HD;     /* [2][BN][HD] */
    bf16 *sv = sk + 2 * BN * HD; /* [2][BN][HD] */

    const cuda_attn_tile tile = p.tiles[blockIdx.x];
    const int kh = blockIdx.y, split = blockIdx.z;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int G = p.group;
    const int min_pos = p.positions[tile.tok0]; /* new tokens sit at consecutive positions */
    const int kv_end = min_pos + tile.n_tok;
    const int kv_lo = split * p.split_len;
    const int kv_hi = min(kv_end, kv_lo + p.split_len);
    const int n_rows = tile.n_tok * G;

    if (kv_lo >= kv_hi) { /* this split lies past every row's context */
        for (int r = tid; r < n_rows; r += THREADS) {
            size_t th = (size_t)(tile.tok0 + r / G) * p.n_heads + kh * G + r % G;
            p.part_lse[(size_t)split * p.n_tokens * p.n_heads + th] = NEG_INF;
        }
        return;
    }

    const int32_t *bt = p.block_table + (size_t)tile.seq * p.max_blocks;
    const size_t head_bytes = (size_t)kh * p.block_size * HD * sizeof(bf16);
    const char *k_base = p.pool + p.k_off + head_bytes;
    const char *v_base = p.pool + p.v_off + head_bytes;

    for (int idx = tid; idx < BM * CH; idx += THREADS) {
        int r = idx / CH, c = idx % CH;
        bool valid = r < n_rows;
        const bf16 *src = valid ? p.q + (size_t)(tile.tok0 + r / G) * p.q_stride +
                                      (kh * G + r % G) * HD + c * 8
                                : p.q;
        cp_async16(sq + swz<HD>(r, c), src, valid);
    }
    /* Block ids of a tile's context rows are read one tile ahead into sblk, so the K/V copies
     * of a tile never wait on a block-table load. Rows past kv_hi are zero-filled: V must be
     * finite where P is 0. */
    __shared__ int sblk[2][BN];
    auto block_of = [&](int j) { return j < kv_hi ? bt[j / p.block_size] : 0; };
    auto load_kv = [&](int stage, int j0) {
        for (int idx = tid; idx < BN * CH; idx += THREADS) {
            int r = idx / CH, c = idx % CH, j = j0 + r;
            bool valid = j < kv_hi;
            size_t off = (size_t)sblk[stage][r] * p.block_bytes +
                         (size_t)(j % p.block_size) * HD * sizeof(bf16) + c * 16;
            cp_async16(sk + stage * BN * HD + swz<HD>(r, c), valid ? k_base + off : p.pool, valid);
            cp_async16(sv + stage * BN * HD + swz<HD>(r, c), valid ? v_base + off : p.pool, valid);
        }
    };
    if (tid < BN) {
        sblk[0][tid] = block_of(kv_lo + tid);
        sblk[1][tid] = block_of(kv_lo + BN + tid);
    }
    __syncthreads();
    load_kv(0, kv_lo);
    cp_async_commit();

    const int row0 = warp * WM * 16;
    const bool warp_active = row0 < n_rows;
    float o[WM][HD / 8][4];
    float m_r[WM][2], l_r[WM][2];
    int pos_r[WM][2];
#pragma unroll
    for (int mi = 0; mi < WM; mi++) {
#pragma unroll
        for (int dt = 0; dt < HD / 8; dt++) o[mi][dt][0] = o[mi][dt][1] = o[mi][dt][2] = o[mi][dt][3] = 0;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            int r = row0 + mi * 16 + lane / 4 + 8 * h;
            m_r[mi][h] = NEG_INF;
            l_r[mi][h] = 0;
            pos_r[mi][h] = r < n_rows ? min_pos + r / G : -1;
        }
    }

    const int n_iter = (kv_hi - kv_lo + BN - 1) / BN;
    for (int it = 0; it < n_iter; it++) {
        const int j0 = kv_lo + it * BN;
        if (it + 1 < n_iter) {
            load_kv((it + 1) & 1, j0 + BN);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        int next_blk = tid < BN ? block_of(j0 + 2 * BN + tid) : 0; /* used after the compute */
        if (warp_active) {
            const bf16 *ks = sk + (it & 1) * BN * HD, *vs = sv + (it & 1) * BN * HD;
            float s[WM][BN / 8][4];
#pragma unroll
            for (int mi = 0; mi < WM; mi++)
#pragma unroll
                for (int nt = 0; nt < BN / 8; nt++) s[mi][nt][0] = s[mi][nt][1] = s[mi][nt][2] = s[mi][nt][3] = 0;
            /* S = Q K^T */
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) {
                uint32_t a[WM][4];
#pragma unroll
                for (int mi = 0; mi < WM; mi++)
                    ldmatrix_x4(a[mi], sq + swz<HD>(row0 + mi * 16 + (lane & 15), kk * 2 + (lane >> 4)));
#pragma unroll
                for (int np = 0; np < BN / 16; np++) {
                    uint32_t b[4];
                    ldmatrix_x4(b, ks + swz<HD>(np * 16 + (lane & 7) + (lane >> 4) * 8,
                                                kk * 2 + ((lane >> 3) & 1)));
#pragma unroll
                    for (int mi = 0; mi < WM; mi++) {
                        mma_16816(s[mi][2 * np], a[mi], b[0], b[1]);
                        mma_16816(s[mi][2 * np + 1], a[mi], b[2], b[3]);
                    }
                }
            }
            /* causal mask + online softmax, per row; a row's 64 scores sit in 4 lanes */
            const bool need_mask = j0 + BN > kv_hi || j0 + BN - 1 > min_pos;
#pragma unroll
            for (int mi = 0; mi < WM; mi++) {
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    float mx = NEG_INF;
#pragma unroll
                    for (int nt = 0; nt < BN / 8; nt++) {
#pragma unroll
                        for (int e = 0; e < 2; e++) {
                            int j = j0 + nt * 8 + 2 * (lane & 3) + e;
                            float v = s[mi][nt][2 * h + e] * p.scale_log2;
                            if (need_mask && (j > pos_r[mi][h] || j >= kv_hi)) v = NEG_INF;
                            s[mi][nt][2 * h + e] = v;
                            mx = fmaxf(mx, v);
                        }
                    }
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                    float m_new = fmaxf(m_r[mi][h], mx);
                    float m_use = m_new == NEG_INF ? 0.0f : m_new;
                    float alpha = exp2f(m_r[mi][h] - m_use);
                    m_r[mi][h] = m_new;
                    float sum = 0;
#pragma unroll
                    for (int nt = 0; nt < BN / 8; nt++) {
#pragma unroll
                        for (int e = 0; e < 2; e++) {
                            float pe = exp2f(s[mi][nt][2 * h + e] - m_use);
                            s[mi][nt][2 * h + e] = pe;
                            sum += pe;
                        }
                    }
                    l_r[mi][h] = l_r[mi][h] * alpha + sum; /* this lane's part; summed at the end */
#pragma unroll
                    for (int dt = 0; dt < HD / 8; dt++) {
                        o[mi][dt][2 * h] *= alpha;
                        o[mi][dt][2 * h + 1] *= alpha;
                    }
                }
            }
            /* O += P V: the S accumulators of n-tiles 2kc, 2kc+1 are the A fragment of k-step kc */
#pragma unroll
            for (int kc = 0; kc < BN / 16; kc++) {
                uint32_t pa[WM][4];
#pragma unroll
                for (int mi = 0; mi < WM; mi++) {
                    pa[mi][0] = pack_bf16(s[mi][2 * kc][0], s[mi][2 * kc][1]);
                    pa[mi][1] = pack_bf16(s[mi][2 * kc][2], s[mi][2 * kc][3]);
                    pa[mi][2] = pack_bf16(s[mi][2 * kc + 1][0], s[mi][2 * kc + 1][1]);
                    pa[mi][3] = pack_bf16(s[mi][2 * kc + 1][2], s[mi][2 * kc + 1][3]);
                }
#pragma unroll
                for (int dp = 0; dp < HD / 16; dp++) {
                    uint32_t b[4];
                    ldmatrix_x4_trans(b, vs + swz<HD>(kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                                      dp * 2 + (lane >> 4)));
#pragma unroll
                    for (int mi = 0; mi < WM; mi++) {
                        mma_16816(o[mi][2 * dp], pa[mi], b[0], b[1]);
                        mma_16816(o[mi][2 * dp + 1], pa[mi], b[2], b[3]);
                    }
                }
            }
        }
        if (tid < BN) sblk[it & 1][tid] = next_blk; /* tile it + 2 reuses this stage */
        __syncthreads(); /* the stage just read is the next load's target */
    }

    if (!warp_active) return;
#pragma unroll
    for (int mi = 0; mi < WM; mi++) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float l = l_r[mi][h];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            int r = row0 + mi * 16 + lane / 4 + 8 * h;
            if (r >= n_rows) continue;
            size_t th = (size_t)(tile.tok0 + r / G) * p.n_heads + kh * G + r % G;
            float inv = l > 0 ? 1.0f / l : 0.0f;
            if (p.n_splits == 1) {
                bf16 *dst = p.out + th * HD + 2 * (lane & 3);
#pragma unroll
                for (int dt = 0; dt < HD / 8; dt++)
                    *(__nv_bfloat162 *)(dst + dt * 8) =
                        __floats2bfloat162_rn(o[mi][dt][2 * h] * inv, o[mi][dt][2 * h + 1] * inv);
            } else {
                size_t ts = (size_t)split * p.n_tokens * p.n_heads + th;
                float *dst = p.part_o + ts * HD + 2 * (lane & 3);
#pragma unroll
                for (int dt = 0; dt < HD / 8; dt++)
                    *(float2 *)(dst + dt * 8) =
                        make_float2(o[mi][dt][2 * h] * inv, o[mi][dt][2 * h + 1] * inv);
                if ((lane & 3) == 0) p.part_lse[ts] = l > 0 ? m_r[mi][h] + log2f(l) : NEG_INF;
            }
        }
    }
}

/* Grid (tile, kv head, row of the tile), head_dim threads: merges the splits' normalized
 * outputs of one (token, head) by their log-sum-exp; the loads over splits are independent. */
__global__ void attn_combine_kernel(attn_params p) {
    __shared__ float w[ATTN_MAX_SPLITS];
    const cuda_attn_tile tile = p.tiles[blockIdx.x];
    const int kh = blockIdx.y, r = blockIdx.z, G = p.group, hd = p.head_dim;
    if (r >= tile.n_tok * G) return;
    const size_t split_stride = (size_t)p.n_tokens * p.n_heads;
    const size_t th = (size_t)(tile.tok0 + r / G) * p.n_heads + kh * G + r % G;
    for (int s = threadIdx.x; s < p.n_splits; s += blockDim.x) w[s] = p.part_lse[s * split_stride + th];
    __syncthreads();
    float mx = -INFINITY;
    for (int s = 0; s < p.n_splits; s++) mx = fmaxf(mx, w[s]);
    __syncthreads();
    for (int s = threadIdx.x; s < p.n_splits; s += blockDim.x)
        w[s] = w[s] == -INFINITY ? 0.0f : exp2f(w[s] - mx); /* 0: that split wrote no output */
    __syncthreads();
    float den = 0;
    for (int s = 0; s < p.n_splits; s++) den += w[s];
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float num = 0;
#pragma unroll 8
        for (int s = 0; s < p.n_splits; s++)
            if (w[s] != 0.0f) num += w[s] * p.part_o[(s * split_stride + th) * hd + d];
        p.out[th * hd + d] = __float2bfloat16(num / den);
    }
}

__device__ __forceinline__ float attn_block_reduce(float v, float *red, bool is_max) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, w) : v + w;
    }
    __syncthreads();
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    float r = red[0];
    for (int i = 1; i < (int)(blockDim.x / 32); i++) r = is_max ? fmaxf(r, red[i]) : r + red[i];
    return r;
}

/* Any head dim (tiny models): grid (token, head), 128 threads; thread j scores context position
 * j0 + j, then each thread accumulates head dims tid, tid + 128, ... Slow but simple. */
#define ATTN_GENERIC_THREADS 128
#define ATTN_GENERIC_MAX_HD 512
__global__ void attn_generic_kernel(attn_params p) {
    __shared__ float qs[ATTN_GENERIC_MAX_HD];
    __shared__ float ps[ATTN_GENERIC_THREADS];
    __shared__ float red[32];
    const int t = blockIdx.x, h = blockIdx.y, kh = h / p.group, hd = p.head_dim, tid = threadIdx.x;
    const int pos = p.positions[t];
    const int32_t *bt = p.block_table + (size_t)p.token_seq[t] * p.max_blocks;
    const size_t head_bytes = (size_t)kh * p.block_size * hd * sizeof(bf16);
    for (int d = tid; d < hd; d += blockDim.x)
        qs[d] = __bfloat162float(p.q[(size_t)t * p.q_stride + h * hd + d]);
    __syncthreads();
    auto row = [&](size_t off, int j) {
        return (const bf16 *)(p.pool + (size_t)bt[j / p.block_size] * p.block_bytes + off +
                              head_bytes + (size_t)(j % p.block_size) * hd * sizeof(bf16));
    };
    float m = -INFINITY, l = 0, acc[ATTN_GENERIC_MAX_HD / ATTN_GENERIC_THREADS] = {0};
    for (int j0 = 0; j0 <= pos; j0 += ATTN_GENERIC_THREADS) {
        int j = j0 + tid;
        float sc = -INFINITY;
        if (j <= pos) {
            const bf16 *k = row(p.k_off, j);
            float dot = 0;
            for (int d = 0; d < hd; d++) dot += qs[d] * __bfloat162float(k[d]);
            sc = dot * p.scale_log2;
        }
        float m_new = fmaxf(m, attn_block_reduce(sc, red, true)); /* finite: j0 <= pos */
        float alpha = exp2f(m - m_new);
        float pj = j <= pos ? exp2f(sc - m_new) : 0.0f;
        ps[tid] = pj;
        l = l * alpha + attn_block_reduce(pj, red, false);
        m = m_new;
        __syncthreads();
        int n = min(ATTN_GENERIC_THREADS, pos + 1 - j0);
        for (int i = 0; i * ATTN_GENERIC_THREADS + tid < hd; i++) {
            int d = i * ATTN_GENERIC_THREADS + tid;
            float a = acc[i] * alpha;
            for (int jj = 0; jj < n; jj++) a += ps[jj] * __bfloat162float(row(p.v_off, j0 + jj)[d]);
            acc[i] = a;
        }
        __syncthreads();
    }
    for (int i = 0; i * ATTN_GENERIC_THREADS + tid < hd; i++)
        p.out[((size_t)t * p.n_heads + h) * hd + i * ATTN_GENERIC_THREADS + tid] =
            __float2bfloat16(acc[i] / l);
}

/* ================================ launchers ================================ */

static int tile_cmp_desc(const void *a, const void *b) {
    const cuda_attn_tile *x = (const cuda_attn_tile *)a, *y = (const cuda_attn_tile *)b;
    return y->pad - x->pad; /* pad holds the tile's context length while sorting */
}

/* Cuts the step's sequences into tiles for this group size: a sequence whose new tokens fit one
 * small tile (64 rows) is decode-shaped; the others are cut into 128-row tiles, longest context
 * first so the longest blocks start early. */
static void attn_plan_build(cuda_impl *ci, int group) {
    cuda_step *st = &ci->step;
    cuda_attn_plan *pl = &ci->plan;
    int per_small = 64 / group, per_large = 128 / group;
    size_t cap = (size_t)st->n_seqs + (size_t)st->n_tokens / (size_t)per_large + 1;
    cuda_attn_tile *small = (cuda_attn_tile *)kv_malloc(cap * sizeof *small);
    cuda_attn_tile *large = (cuda_attn_tile *)kv_malloc(cap * sizeof *large);
    int n_small = 0, n_large = 0;
    pl->max_ctx_small = pl->max_ctx_large = 0;
    for (int s = 0; s < st->n_seqs; s++) {
        int t0 = st->h_seq_start[s], n_new = st->h_seq_start[s + 1] - t0, len = st->h_seq_len[s];
        if (n_new <= 0) continue;
        if (n_new <= per_small) {
            small[n_small++] = (cuda_attn_tile){s, t0, n_new, len};
            if (len > pl->max_ctx_small) pl->max_ctx_small = len;
            continue;
        }
        for (int i = 0; i < n_new; i += per_large) {
            int n = n_new - i < per_large ? n_new - i : per_large;
            int ctx = len - n_new + i + n;
            large[n_large++] = (cuda_attn_tile){s, t0 + i, n, ctx};
        }
        if (len > pl->max_ctx_large) pl->max_ctx_large = len;
    }
    qsort(large, (size_t)n_large, sizeof *large, tile_cmp_desc);
    size_t n = (size_t)n_small + (size_t)n_large;
    if (pl->cap < n) {
        if (pl->d_tiles) CUDA_CHECK(cudaFree(pl->d_tiles));
        pl->cap = n + n / 2 + 64;
        CUDA_CHECK(cudaMalloc(&pl->d_tiles, pl->cap * sizeof(cuda_attn_tile)));
    }
    memcpy(small + n_small, large, (size_t)n_large * sizeof *large);
    if (n) cuda_upload_staged(ci, ci->streams[BACKEND_STREAM_COMPUTE], pl->d_tiles, small, n * sizeof *small);
    free(small);
    free(large);
    pl->n_small = n_small;
    pl->n_large = n_large;
    pl->group = group;
}

static void attn_scratch_reserve(cuda_impl *ci, size_t floats) {
    if (ci->attn_scratch_cap >= floats) return;
    if (ci->attn_scratch) CUDA_CHECK(cudaFree(ci->attn_scratch));
    ci->attn_scratch_cap = floats + floats / 2;
    CUDA_CHECK(cudaMalloc(&ci->attn_scratch, ci->attn_scratch_cap * sizeof(float)));
}

/* Splits the context when the tiles alone would leave SMs idle (decode, short chunks over long
 * prefixes): aim at two blocks per SM, pieces no shorter than ATTN_MIN_SPLIT tokens. */
static void attn_launch_list_split(cuda_impl *ci, attn_params p, int n_tiles, int max_ctx,
                                   int *n_splits, int *split_len) {
    int ctas = n_tiles * p.n_kv_heads, target = 2 * ci->n_sms;
    int splits = 1;
    if (ctas < target) {
        splits = (target + ctas - 1) / ctas;
        int most = (max_ctx + ATTN_MIN_SPLIT - 1) / ATTN_MIN_SPLIT;
        if (splits > most) splits = most;
        if (splits > ATTN_MAX_SPLITS) splits = ATTN_MAX_SPLITS;
        if (splits < 1) splits = 1;
    }
    int len = (max_ctx + splits - 1) / splits;
    len = (len + ATTN_BN - 1) / ATTN_BN * ATTN_BN;
    *split_len = len;
    *n_splits = (max_ctx + len - 1) / len;
}

template <int HD, int WM>
static void attn_launch_list(cuda_impl *ci, attn_params p, const cuda_attn_tile *tiles,
                             int n_tiles, int max_ctx) {
    if (n_tiles == 0) return;
    constexpr int NW = 4, BM = NW * WM * 16;
    const size_t smem = (size_t)(BM + 4 * ATTN_BN) * HD * sizeof(bf16);
    const unsigned bit = 1u << ((HD == 128) * 2 + (WM == 2));
    if (!(ci->attn_smem_set & bit)) {
        CUDA_CHECK(cudaFuncSetAttribute(attn_mma_kernel<HD, WM, NW>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        ci->attn_smem_set |= bit;
    }
    cudaStream_t s = ci->streams[BACKEND_STREAM_COMPUTE];
    p.tiles = tiles;
    attn_launch_list_split(ci, p, n_tiles, max_ctx, &p.n_splits, &p.split_len);
    if (p.n_splits > 1) {
        size_t rows = (size_t)p.n_splits * p.n_tokens * p.n_heads;
        attn_scratch_reserve(ci, rows * (HD + 1));
        p.part_o = ci->attn_scratch;
        p.part_lse = ci->attn_scratch + rows * HD;
    }
    dim3 grid((unsigned)n_tiles, (unsigned)p.n_kv_heads, (unsigned)p.n_splits);
    attn_mma_kernel<HD, WM, NW><<<grid, NW * 32, smem, s>>>(p);
    CUDA_LAUNCH_CHECK();
    if (p.n_splits > 1) {
        attn_combine_kernel<<<dim3((unsigned)n_tiles, (unsigned)p.n_kv_heads, BM), HD, 0, s>>>(p);
        CUDA_LAUNCH_CHECK();
    }
}

template <int HD> static void attn_launch_plan(cuda_impl *ci, const attn_params &p) {
    const cuda_attn_plan *pl = &ci->plan;
    attn_launch_list<HD, 1>(ci, p, pl->d_tiles, pl->n_small, pl->max_ctx_small);
    attn_launch_list<HD, 2>(ci, p, pl->d_tiles + pl->n_small, pl->n_large, pl->max_ctx_large);
}

void cuda_op_attention(backend *be, void *out, const void *q, int q_stride, const void *pool,
                       const backend_kv_layout *l, int layer, int n_heads, float scale) {
    cuda_impl *ci = cuda_impl_of(be);
    cuda_step *st = &ci->step;
    KV_CHECK(l->dtype == KV_DTYPE_BF16 && n_heads % l->n_kv_heads == 0);
    KV_CHECK(l->head_dim <= ATTN_GENERIC_MAX_HD);
    if (st->n_tokens == 0) return;
    attn_params p;
    memset(&p, 0, sizeof p);
    p.out = (bf16 *)out;
    p.q = (const bf16 *)q;
    p.q_stride = q_stride;
    p.pool = (const char *)pool;
    p.block_bytes = l->block_bytes;
    size_t lk = (size_t)layer * 2 * l->n_kv_heads * l->block_size * l->head_dim * sizeof(bf16);
    p.k_off = lk;
    p.v_off = lk + (size_t)l->n_kv_heads * l->block_size * l->head_dim * sizeof(bf16);
    p.n_kv_heads = l->n_kv_heads;
    p.head_dim = l->head_dim;
    p.block_size = l->block_size;
    p.n_heads = n_heads;
    p.group = n_heads / l->n_kv_heads;
    p.scale_log2 = scale * 1.4426950408889634f;
    p.positions = st->positions;
    p.token_seq = st->token_seq;
    p.block_table = st->block_table;
    p.max_blocks = st->max_blocks;
    p.n_tokens = st->n_tokens;
    p.n_splits = 1;

    bool fast = (l->head_dim == 64 || l->head_dim == 128) && p.group <= 64 && q_stride % 8 == 0 &&
                ((uintptr_t)q & 15) == 0 && ((uintptr_t)pool & 15) == 0 &&
                l->block_bytes % 16 == 0 && ((uintptr_t)out & 3) == 0;
    if (!fast) {
        attn_generic_kernel<<<dim3((unsigned)st->n_tokens, (unsigned)n_heads), ATTN_GENERIC_THREADS,
                              0, ci->streams[BACKEND_STREAM_COMPUTE]>>>(p);
        CUDA_LAUNCH_CHECK();
        return;
    }
    if (ci->plan.group != p.group) attn_plan_build(ci, p.group);
    if (l->head_dim == 128)
        attn_launch_plan<128>(ci, p);
    else
        attn_launch_plan<64>(ci, p);
}

/* Paged causal attention over the KV pool (layout in backend.h), GQA, bf16 in and out, fp32
 * softmax. Two FlashAttention-style tensor-core kernels (mma.sync m16n8k16) whose tile rows are
 * (token, query head of one GQA group) pairs, so a K/V tile loaded once feeds every head of the
 * group: a decode kernel (16-row tiles, the 4 warps split each K/V tile by columns) and a prefill
 * kernel (128-row tiles; at head dim 128 on the Hopper path its wgmma form,
 * cuda_attention_sm90.cuh, compiled into the sm_90a target only). Every sm_80+ target runs the
 * mma.sync kernels (the portable path, cuda_impl.attn_path). Both split long contexts across blocks
 * when the tiles alone would leave SMs idle (split-K, then a combine kernel). Head dims other than
 * 64/128 take a plain CUDA-core kernel. Kernels first, launchers after; the pieces the kernels
 * share are in cuda_attention_common.cuh. */
#include "model/cuda/cuda_attention_common.cuh"

#include <math.h>
#include <stdlib.h>

#define ATTN_PREFILL_SPLIT_ALIGN 128 /* prefill split lengths: whole K/V tiles of up to 128 */

/* ================================ kernels ================================ */

/* Prefill-shaped tiles. Grid (tile, kv head, split); each of the NW warps owns 16 * WM rows; all
 * warps share the K/V tiles, double-buffered through cp.async. */
template <int HD, int WM, int NW, bool FP8>
__global__ void __launch_bounds__(NW * 32) attn_prefill_kernel(attn_params p) {
    pdl_wait();
    pdl_trigger();
    constexpr int BM = NW * WM * 16, BN = ATTN_BN, THREADS = NW * 32;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    __shared__ int sblk[2][BN];
    bf16 *sq = (bf16 *)smem_raw;
    bf16 *sk = sq + BM * HD;     /* [2][BN][HD] */
    bf16 *sv = sk + 2 * BN * HD; /* [2][BN][HD] */
    const attn_block b = attn_block_init(p);
    if (b.kv_lo >= b.kv_hi) {
        attn_block_mark_empty(p, b);
        return;
    }
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, row0 = warp * WM * 16;
    const bool warp_active = row0 < b.n_rows;
    const float scale = p.scale_log2;

    if (tid < BN) {
        sblk[0][tid] = attn_block_id(p, b, b.kv_lo + tid);
        sblk[1][tid] = attn_block_id(p, b, b.kv_lo + BN + tid);
    }
    __syncthreads();
    attn_load_q<HD, BM, THREADS>(p, b, sq);
    attn_load_kv<HD, THREADS, FP8>(p, b, sk, sv, sblk[0], b.kv_lo);
    cp_async_commit();

    float o[WM][HD / 8][4];
    float m_r[WM][2], l_r[WM][2];
#pragma unroll
    for (int mi = 0; mi < WM; mi++) {
#pragma unroll
        for (int dt = 0; dt < HD / 8; dt++)
            o[mi][dt][0] = o[mi][dt][1] = o[mi][dt][2] = o[mi][dt][3] = 0;
        m_r[mi][0] = m_r[mi][1] = -INFINITY;
        l_r[mi][0] = l_r[mi][1] = 0;
    }

    const int n_iter = (b.kv_hi - b.kv_lo + BN - 1) / BN;
    for (int it = 0; it < n_iter; it++) {
        const int j0 = b.kv_lo + it * BN;
        if (it + 1 < n_iter) {
            int st = (it + 1) & 1;
            attn_load_kv<HD, THREADS, FP8>(p, b, sk + st * BN * HD, sv + st * BN * HD, sblk[st],
                                           j0 + BN);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        int next_blk = tid < BN ? attn_block_id(p, b, j0 + 2 * BN + tid) : 0;
        if (warp_active) {
            const bf16 *ks = sk + (it & 1) * BN * HD, *vs = sv + (it & 1) * BN * HD;
            float s[WM][BN / 8][4];
#pragma unroll
            for (int mi = 0; mi < WM; mi++)
#pragma unroll
                for (int nt = 0; nt < BN / 8; nt++)
                    s[mi][nt][0] = s[mi][nt][1] = s[mi][nt][2] = s[mi][nt][3] = 0;
                    /* S = Q K^T */
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) {
                uint32_t a[WM][4];
#pragma unroll
                for (int mi = 0; mi < WM; mi++)
                    ldmatrix_x4(a[mi],
                                sq + swz<HD>(row0 + mi * 16 + (lane & 15), kk * 2 + (lane >> 4)));
#pragma unroll
                for (int np = 0; np < BN / 16; np++) {
                    uint32_t bb[4];
                    ldmatrix_x4(bb, ks + swz<HD>(np * 16 + (lane & 7) + (lane >> 4) * 8,
                                                 kk * 2 + ((lane >> 3) & 1)));
#pragma unroll
                    for (int mi = 0; mi < WM; mi++) {
                        mma_16816(s[mi][2 * np], a[mi], bb[0], bb[1]);
                        mma_16816(s[mi][2 * np + 1], a[mi], bb[2], bb[3]);
                    }
                }
            }
            /* causal mask and the split's end, only on the tiles that cross them */
            if (j0 + BN > b.kv_hi || j0 + BN - 1 > b.min_pos) {
#pragma unroll
                for (int mi = 0; mi < WM; mi++)
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        int lim =
                            min(attn_row_pos(b, row0 + mi * 16 + lane / 4 + 8 * h), b.kv_hi - 1);
#pragma unroll
                        for (int nt = 0; nt < BN / 8; nt++)
#pragma unroll
                            for (int e = 0; e < 2; e++)
                                if (j0 + nt * 8 + 2 * (lane & 3) + e > lim)
                                    s[mi][nt][2 * h + e] = -INFINITY;
                    }
            }
            /* online softmax; O is rescaled only when some row's max moved */
            float alpha[WM][2];
            bool moved = false;
#pragma unroll
            for (int mi = 0; mi < WM; mi++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    float row[BN / 4];
#pragma unroll
                    for (int nt = 0; nt < BN / 8; nt++)
                        row[2 * nt] = s[mi][nt][2 * h], row[2 * nt + 1] = s[mi][nt][2 * h + 1];
                    alpha[mi][h] = attn_softmax_row<BN / 4>(row, m_r[mi][h], l_r[mi][h], scale);
#pragma unroll
                    for (int nt = 0; nt < BN / 8; nt++)
                        s[mi][nt][2 * h] = row[2 * nt], s[mi][nt][2 * h + 1] = row[2 * nt + 1];
                    moved |= alpha[mi][h] != 1.0f;
                }
            if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
                for (int mi = 0; mi < WM; mi++)
#pragma unroll
                    for (int dt = 0; dt < HD / 8; dt++) {
                        o[mi][dt][0] *= alpha[mi][0], o[mi][dt][1] *= alpha[mi][0];
                        o[mi][dt][2] *= alpha[mi][1], o[mi][dt][3] *= alpha[mi][1];
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
                    uint32_t bb[4];
                    ldmatrix_x4_trans(bb, vs + swz<HD>(kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                                       dp * 2 + (lane >> 4)));
#pragma unroll
                    for (int mi = 0; mi < WM; mi++) {
                        mma_16816(o[mi][2 * dp], pa[mi], bb[0], bb[1]);
                        mma_16816(o[mi][2 * dp + 1], pa[mi], bb[2], bb[3]);
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
            if (r >= b.n_rows) continue;
            size_t th = attn_row_index(p, b, r);
            float inv = l > 0 ? 1.0f / l : 0.0f;
            if (p.n_splits == 1) {
                bf16 *dst = p.out + th * HD + 2 * (lane & 3);
#pragma unroll
                for (int dt = 0; dt < HD / 8; dt++)
                    *(__nv_bfloat162 *)(dst + dt * 8) =
                        __floats2bfloat162_rn(o[mi][dt][2 * h] * inv, o[mi][dt][2 * h + 1] * inv);
            } else {
                size_t ts = (size_t)b.split * p.n_tokens * p.n_heads + th;
                float *dst = p.part_o + ts * HD + 2 * (lane & 3);
#pragma unroll
                for (int dt = 0; dt < HD / 8; dt++)
                    *(float2 *)(dst + dt * 8) =
                        make_float2(o[mi][dt][2 * h] * inv, o[mi][dt][2 * h + 1] * inv);
                if ((lane & 3) == 0)
                    p.part_lse[ts] = l > 0 ? m_r[mi][h] * scale + log2f(l) : -INFINITY;
            }
        }
    }
}

#include "model/cuda/cuda_attention_sm90.cuh"

/* Decode-shaped tiles (at most 16 rows: one token's GQA group, a few tokens of a small group).
 * Grid (tile, kv head, split). The 4 warps share the 16 rows and split each 64-token K/V tile
 * by columns, so one tile's math takes a quarter of the time a single warp would need; their
 * partial softmax states are merged through shared memory at the end. */
template <int HD, bool FP8>
__global__ void __launch_bounds__(128) attn_decode_kernel(attn_params p) {
    pdl_wait();
    pdl_trigger();
    constexpr int BM = 16, BN = ATTN_BN, THREADS = 128, NW = 4, RED = HD + 4;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    __shared__ int sblk[2][BN];
    __shared__ float sm[NW][BM], sl[NW][BM];
    bf16 *sq = (bf16 *)smem_raw;
    bf16 *sk = sq + BM * HD;
    bf16 *sv = sk + 2 * BN * HD;
    const attn_block b = attn_block_init(p);
    if (b.kv_lo >= b.kv_hi) {
        attn_block_mark_empty(p, b);
        return;
    }
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, col0 = warp * 16;
    const float scale = p.scale_log2;

    if (tid < BN) {
        sblk[0][tid] = attn_block_id(p, b, b.kv_lo + tid);
        sblk[1][tid] = attn_block_id(p, b, b.kv_lo + BN + tid);
    }
    __syncthreads();
    attn_load_q<HD, BM, THREADS>(p, b, sq);
    attn_load_kv<HD, THREADS, FP8>(p, b, sk, sv, sblk[0], b.kv_lo);
    cp_async_commit();

    float o[HD / 8][4];
#pragma unroll
    for (int dt = 0; dt < HD / 8; dt++) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0;
    float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0, 0};
    int lim_r[2];
#pragma unroll
    for (int h = 0; h < 2; h++) lim_r[h] = min(attn_row_pos(b, lane / 4 + 8 * h), b.kv_hi - 1);

    const int n_iter = (b.kv_hi - b.kv_lo + BN - 1) / BN;
    for (int it = 0; it < n_iter; it++) {
        const int j0 = b.kv_lo + it * BN;
        if (it + 1 < n_iter) {
            int st = (it + 1) & 1;
            attn_load_kv<HD, THREADS, FP8>(p, b, sk + st * BN * HD, sv + st * BN * HD, sblk[st],
                                           j0 + BN);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        int next_blk = tid < BN ? attn_block_id(p, b, j0 + 2 * BN + tid) : 0;
        const bf16 *ks = sk + (it & 1) * BN * HD, *vs = sv + (it & 1) * BN * HD;
        float s[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            uint32_t a[4], bb[4];
            ldmatrix_x4(a, sq + swz<HD>(lane & 15, kk * 2 + (lane >> 4)));
            ldmatrix_x4(
                bb, ks + swz<HD>(col0 + (lane & 7) + (lane >> 4) * 8, kk * 2 + ((lane >> 3) & 1)));
            mma_16816(s[0], a, bb[0], bb[1]);
            mma_16816(s[1], a, bb[2], bb[3]);
        }
        if (j0 + BN > b.kv_hi || j0 + BN - 1 > b.min_pos) {
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int nt = 0; nt < 2; nt++)
#pragma unroll
                    for (int e = 0; e < 2; e++)
                        if (j0 + col0 + nt * 8 + 2 * (lane & 3) + e > lim_r[h])
                            s[nt][2 * h + e] = -INFINITY;
        }
        float alpha[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float row[4] = {s[0][2 * h], s[0][2 * h + 1], s[1][2 * h], s[1][2 * h + 1]};
            alpha[h] = attn_softmax_row<4>(row, m_r[h], l_r[h], scale);
            s[0][2 * h] = row[0], s[0][2 * h + 1] = row[1], s[1][2 * h] = row[2],
                     s[1][2 * h + 1] = row[3];
        }
        if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
            for (int dt = 0; dt < HD / 8; dt++) {
                o[dt][0] *= alpha[0], o[dt][1] *= alpha[0];
                o[dt][2] *= alpha[1], o[dt][3] *= alpha[1];
            }
        }
        uint32_t pa[4] = {pack_bf16(s[0][0], s[0][1]), pack_bf16(s[0][2], s[0][3]),
                          pack_bf16(s[1][0], s[1][1]), pack_bf16(s[1][2], s[1][3])};
#pragma unroll
        for (int dp = 0; dp < HD / 16; dp++) {
            uint32_t bb[4];
            ldmatrix_x4_trans(
                bb, vs + swz<HD>(col0 + (lane & 7) + ((lane >> 3) & 1) * 8, dp * 2 + (lane >> 4)));
            mma_16816(o[2 * dp], pa, bb[0], bb[1]);
            mma_16816(o[2 * dp + 1], pa, bb[2], bb[3]);
        }
        if (tid < BN) sblk[it & 1][tid] = next_blk;
        __syncthreads();
    }

    /* merge the 4 warps' (max, sum, unnormalized O) per row; the K/V stages are free now */
    float *red = (float *)sk; /* [NW][BM][RED] */
#pragma unroll
    for (int h = 0; h < 2; h++) {
        float l = l_r[h];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        int r = lane / 4 + 8 * h;
        if ((lane & 3) == 0) sm[warp][r] = m_r[h], sl[warp][r] = l;
#pragma unroll
        for (int dt = 0; dt < HD / 8; dt++)
            *(float2 *)(red + (warp * BM + r) * RED + dt * 8 + 2 * (lane & 3)) =
                make_float2(o[dt][2 * h], o[dt][2 * h + 1]);
    }
    __syncthreads();
    for (int idx = tid; idx < b.n_rows * HD; idx += THREADS) {
        int r = idx / HD, d = idx % HD;
        float mx = -INFINITY;
#pragma unroll
        for (int w = 0; w < NW; w++) mx = fmaxf(mx, sm[w][r]);
        float num = 0, den = 0;
#pragma unroll
        for (int w = 0; w < NW; w++) {
            float f = sm[w][r] == -INFINITY ? 0.0f : exp2f((sm[w][r] - mx) * scale);
            num += f * red[(w * BM + r) * RED + d];
            den += f * sl[w][r];
        }
        size_t th = attn_row_index(p, b, r);
        float v = den > 0 ? num / den : 0.0f;
        if (p.n_splits == 1) {
            p.out[th * HD + d] = __float2bfloat16(v);
        } else {
            size_t ts = (size_t)b.split * p.n_tokens * p.n_heads + th;
            p.part_o[ts * HD + d] = v;
            if (d == 0) p.part_lse[ts] = den > 0 ? mx * scale + log2f(den) : -INFINITY;
        }
    }
}

/* Grid (tile, kv head, row of the tile), head_dim threads: merges the splits' normalized
 * outputs of one (token, head) by their log-sum-exp; the loads over splits are independent. */
__global__ void attn_combine_kernel(attn_params p) {
    pdl_wait();
    pdl_trigger();
    __shared__ float w[ATTN_MAX_SPLITS];
    const cuda_attn_tile tile = attn_tile(p, blockIdx.x);
    const int kh = blockIdx.y, r = blockIdx.z, G = p.group, hd = p.head_dim;
    if (r >= tile.n_tok * G) return;
    const size_t split_stride = (size_t)p.n_tokens * p.n_heads;
    const size_t th = (size_t)(tile.tok0 + r / G) * p.n_heads + kh * G + r % G;
    for (int s = threadIdx.x; s < p.n_splits; s += blockDim.x)
        w[s] = p.part_lse[s * split_stride + th];
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

/* Any head dim (tiny models), and every layer with a sliding window or soft-capped scores:
 * grid (token, head), 128 threads; thread j scores context position j0 + j, then each thread
 * accumulates head dims tid, tid + 128, ... Slow but simple. */
#define ATTN_GENERIC_THREADS 128
#define ATTN_GENERIC_MAX_HD  512
__global__ void attn_generic_kernel(attn_params p) {
    pdl_wait();
    pdl_trigger();
    __shared__ float qs[ATTN_GENERIC_MAX_HD];
    __shared__ float ps[ATTN_GENERIC_THREADS];
    __shared__ float red[32];
    const int t = blockIdx.x, h = blockIdx.y, kh = h / p.group, hd = p.head_dim, tid = threadIdx.x;
    const int pos = p.positions[t];
    const int32_t *bt = p.block_table + (size_t)p.token_seq[t] * p.max_blocks;
    const size_t head_bytes = (size_t)kh * p.block_size * hd * p.kv_bytes;
    for (int d = tid; d < hd; d += blockDim.x)
        qs[d] = __bfloat162float(p.q[(size_t)t * p.q_stride + h * hd + d]);
    __syncthreads();
    /* element d of the K (off k_off) or V (off v_off) row of position j, dequantized */
    auto elem = [&](size_t off, int j, int d) {
        const char *r = p.pool + (size_t)bt[j / p.block_size] * p.block_bytes + off + head_bytes +
                        ((size_t)(j % p.block_size) * hd + d) * p.kv_bytes;
        if (!p.kv_fp8) return __bfloat162float(*(const bf16 *)r);
        __half_raw h = __nv_cvt_fp8_to_halfraw(*(const __nv_fp8_storage_t *)r, __NV_E4M3);
        return __half2float(__half(h)) * (off == p.k_off ? p.k_scale : p.v_scale);
    };
    float m = -INFINITY, l = 0, acc[ATTN_GENERIC_MAX_HD / ATTN_GENERIC_THREADS] = {0};
    const int lo = p.window > 0 && pos + 1 > p.window ? pos + 1 - p.window : 0;
    for (int j0 = lo; j0 <= pos; j0 += ATTN_GENERIC_THREADS) {
        int j = j0 + tid;
        float sc = -INFINITY;
        if (j <= pos) {
            float dot = 0;
            for (int d = 0; d < hd; d++) dot += qs[d] * elem(p.k_off, j, d);
            if (p.softcap > 0)
                sc = p.softcap * tanhf(dot * p.scale / p.softcap) * 1.4426950408889634f;
            else
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
            for (int jj = 0; jj < n; jj++) a += ps[jj] * elem(p.v_off, j0 + jj, d);
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
 * 16-row tile is decode-shaped; the others are cut into 128-row tiles, longest context first so
 * the longest blocks start early. */
static void attn_plan_build(cuda_impl *ci, int group) {
    cuda_step *st = &ci->step;
    cuda_attn_plan *pl = &ci->plan;
    int per_small = 16 / group, per_large = 128 / group; /* tokens per tile */
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
    KV_CHECK(!ci->capturing); /* pure decode steps, the recorded ones, need no plan */
    if (pl->cap < n) {
        if (pl->d_tiles) CUDA_CHECK(cudaFree(pl->d_tiles));
        pl->cap = n + n / 2 + 64;
        CUDA_CHECK(cudaMalloc(&pl->d_tiles, pl->cap * sizeof(cuda_attn_tile)));
    }
    memcpy(small + n_small, large, (size_t)n_large * sizeof *large);
    if (n)
        cuda_upload_staged(ci, ci->streams[BACKEND_STREAM_COMPUTE], pl->d_tiles, small,
                           n * sizeof *small);
    free(small);
    free(large);
    pl->n_small = n_small;
    pl->n_large = n_large;
    pl->group = group;
}

static void attn_scratch_reserve(cuda_impl *ci, size_t floats) {
    if (ci->attn_scratch_cap >= floats) return;
    cuda_graph_buffers_moved(ci);
    if (ci->attn_scratch) CUDA_CHECK(cudaFree(ci->attn_scratch));
    ci->attn_scratch_cap = floats + floats / 2;
    CUDA_CHECK(cudaMalloc(&ci->attn_scratch, ci->attn_scratch_cap * sizeof(float)));
}

/* Splits the context across blocks. Prefill lists split only when their tiles leave SMs idle
 * (a split writes fp32 partials of every row, costly at 10K tokens), into pieces of one length.
 * Decode lists split each tile's own context (split_len 0, see attn_split_len) and pick the
 * split count s minimizing waves(ctas * s) / s, the time in units of one whole-context block,
 * plus a small price for the combine, so the last wave is not a ragged one; at most 4 waves of
 * blocks, since short contexts leave some splits empty. max_ctx bounds the contexts: pieces
 * are no shorter than ATTN_MIN_SPLIT tokens, at most ATTN_MAX_SPLITS. */
static void attn_split(const cuda_impl *ci, attn_params *p, int n_tiles, int max_ctx,
                       int blocks_per_sm, bool decode) {
    int ctas = n_tiles * p->n_kv_heads, slots = blocks_per_sm * ci->n_sms;
    int most = (max_ctx + ATTN_MIN_SPLIT - 1) / ATTN_MIN_SPLIT;
    if (most > ATTN_MAX_SPLITS) most = ATTN_MAX_SPLITS;
    if (decode && most > 4 * slots / ctas) most = 4 * slots / ctas;
    if (most < 1) most = 1;
    int splits = 1;
    if (decode) {
        double best_t = 1e30;
        for (int s = 1; s <= most; s++) {
            double t = ceil((double)ctas * s / slots) / s + (s > 1 ? 0.03 : 0.0);
            if (t < best_t - 1e-9) best_t = t, splits = s;
        }
        p->split_len = 0;
        p->n_splits = splits;
        return;
    }
    if (ctas < slots) {
        splits = (slots + ctas - 1) / ctas;
        if (splits > most) splits = most;
    }
    int len = (max_ctx + splits - 1) / splits;
    p->split_len =
        (len + ATTN_PREFILL_SPLIT_ALIGN - 1) / ATTN_PREFILL_SPLIT_ALIGN * ATTN_PREFILL_SPLIT_ALIGN;
    p->n_splits = (max_ctx + p->split_len - 1) / p->split_len;
}

/* The attention kernel variants (index into cuda_impl.attn_blocks_per_sm; bit of attn_smem_set) */
enum {
    ATTN_K_DECODE_64,
    ATTN_K_PREFILL_64,
    ATTN_K_DECODE_128,
    ATTN_K_PREFILL_128,
    ATTN_K_WGMMA_128,
    ATTN_K_WGMMA_128_FP8,
    ATTN_K_DECODE_64_FP8,
    ATTN_K_PREFILL_64_FP8,
    ATTN_K_DECODE_128_FP8,
    ATTN_K_PREFILL_128_FP8,
};

/* Launches kernel over one tile list of BM-row tiles, then the combine when it split. On a
 * variant's first use its shared-memory limit is raised and its occupancy on this device
 * measured (3 decode / 2 prefill blocks per SM on sm_90 and sm_100; fewer where an SM has
 * 100 KB: sm_86, sm_89, sm_120), which the split rule then plans with. */
static void attn_launch_list(cuda_impl *ci, attn_params p, void (*kernel)(attn_params), int bm,
                             int threads, size_t smem, int variant, bool decode,
                             const cuda_attn_tile *tiles, int n_tiles, int max_ctx) {
    if (n_tiles == 0) return;
    if (!(ci->attn_smem_set & (1u << variant))) {
        KV_CHECK(!ci->capturing); /* the step ran once unrecorded first */
        /* every kernel fits the smallest opt-in limit of sm_80+ (99 KB on sm_86/89/120) */
        KV_CHECK(smem <= ci->smem_optin);
        CUDA_CHECK(
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        int n = 0;
        CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, smem));
        KV_CHECK(n >= 1);
        ci->attn_blocks_per_sm[variant] = n;
        ci->attn_smem_set |= 1u << variant;
    }
    cudaStream_t s = ci->streams[BACKEND_STREAM_COMPUTE];
    p.tiles = tiles;
    attn_split(ci, &p, n_tiles, max_ctx, ci->attn_blocks_per_sm[variant], decode);
    if (p.n_splits > 1) {
        size_t rows = (size_t)p.n_splits * p.n_tokens * p.n_heads;
        attn_scratch_reserve(ci, rows * (p.head_dim + 1));
        p.part_o = ci->attn_scratch;
        p.part_lse = ci->attn_scratch + rows * p.head_dim;
    }
    dim3 grid((unsigned)n_tiles, (unsigned)p.n_kv_heads, (unsigned)p.n_splits);
    cuda_launch(ci->pdl, s, kernel, grid, dim3((unsigned)threads), smem, p);
    if (p.n_splits > 1)
        cuda_launch(ci->pdl, s, attn_combine_kernel,
                    dim3((unsigned)n_tiles, (unsigned)p.n_kv_heads, (unsigned)bm),
                    dim3((unsigned)p.head_dim), 0, p);
}

/* Decode tiles: 16 rows (70 KB of shared memory each at head dim 128). Prefill tiles: 128 rows
 * (4 warps x 32), by wgmma on the Hopper path at head dim 128, by mma.sync otherwise. A pure
 * decode step needs no plan: one tile per sequence (implicit), split by a bound on the contexts
 * that the step's shape gives (the block table's width), so a recorded step replays for any
 * context lengths; it takes the same kernels on both paths. */
template <int HD>
static void attn_launch_plan(cuda_impl *ci, const attn_params &p, int block_size) {
    const cuda_attn_plan *pl = &ci->plan;
    const cuda_step *st = &ci->step;
    const bool f8 = p.kv_fp8;
    const int k_dec = HD == 128 ? (f8 ? ATTN_K_DECODE_128_FP8 : ATTN_K_DECODE_128)
                                : (f8 ? ATTN_K_DECODE_64_FP8 : ATTN_K_DECODE_64);
    const int k_pre = HD == 128 ? (f8 ? ATTN_K_PREFILL_128_FP8 : ATTN_K_PREFILL_128)
                                : (f8 ? ATTN_K_PREFILL_64_FP8 : ATTN_K_PREFILL_64);
    void (*decode_k)(attn_params) =
        f8 ? attn_decode_kernel<HD, true> : attn_decode_kernel<HD, false>;
    void (*prefill_k)(attn_params) =
        f8 ? attn_prefill_kernel<HD, 2, 4, true> : attn_prefill_kernel<HD, 2, 4, false>;
    const size_t smem_dec = (size_t)(16 + 4 * ATTN_BN) * HD * sizeof(bf16);
    const size_t smem_pre = (size_t)(128 + 4 * ATTN_BN) * HD * sizeof(bf16);
    if (st->pure_decode) {
        int bound = st->max_blocks * block_size;
        if (p.group <= 16)
            attn_launch_list(ci, p, decode_k, 16, 128, smem_dec, k_dec, true, NULL, st->n_seqs,
                             bound);
        else
            attn_launch_list(ci, p, prefill_k, 128, 128, smem_pre, k_pre, true, NULL, st->n_seqs,
                             bound);
        return;
    }
    if (ci->plan.group != p.group) attn_plan_build(ci, p.group);
    attn_launch_list(ci, p, decode_k, 16, 128, smem_dec, k_dec, true, pl->d_tiles, pl->n_small,
                     pl->max_ctx_small);
    if (HD == 128 && ci->attn_path == CUDA_ATTN_HOPPER) /* 2 warpgroups, 64-token K/V tiles */
        attn_launch_list(ci, p,
                         p.kv_fp8 ? attn_prefill_wgmma_kernel<64, 2, true>
                                  : attn_prefill_wgmma_kernel<64, 2, false>,
                         128, 256, (size_t)(128 + 4 * 64) * 128 * sizeof(bf16) + 1024,
                         p.kv_fp8 ? ATTN_K_WGMMA_128_FP8 : ATTN_K_WGMMA_128, false,
                         pl->d_tiles + pl->n_small, pl->n_large, pl->max_ctx_large);
    else
        attn_launch_list(ci, p, prefill_k, 128, 128, smem_pre, k_pre, false,
                         pl->d_tiles + pl->n_small, pl->n_large, pl->max_ctx_large);
}

void cuda_op_attention(backend *be, void *out, const void *q, int q_stride, const void *pool,
                       const backend_kv_layout *l, int layer, int n_heads,
                       const backend_attn_params *ap) {
    cuda_impl *ci = cuda_impl_of(be);
    cuda_step *st = &ci->step;
    KV_CHECK((l->dtype == KV_DTYPE_BF16 || l->dtype == KV_DTYPE_F8_E4M3) &&
             n_heads % l->n_kv_heads == 0);
    KV_CHECK(l->head_dim <= ATTN_GENERIC_MAX_HD);
    if (st->n_tokens == 0) return;
    attn_params p;
    memset(&p, 0, sizeof p);
    p.out = (bf16 *)out;
    p.q = (const bf16 *)q;
    p.q_stride = q_stride;
    p.pool = (const char *)pool;
    p.block_bytes = l->block_bytes;
    p.kv_fp8 = l->dtype == KV_DTYPE_F8_E4M3;
    p.kv_bytes = (int)kv_dtype_size(l->dtype);
    p.k_scale = backend_kv_scale(l, layer, 0);
    p.v_scale = backend_kv_scale(l, layer, 1);
    size_t lk = (size_t)layer * 2 * l->n_kv_heads * l->block_size * l->head_dim * p.kv_bytes;
    p.k_off = lk;
    p.v_off = lk + (size_t)l->n_kv_heads * l->block_size * l->head_dim * p.kv_bytes;
    p.n_kv_heads = l->n_kv_heads;
    p.head_dim = l->head_dim;
    p.block_size = l->block_size;
    p.n_heads = n_heads;
    p.group = n_heads / l->n_kv_heads;
    p.scale_log2 = ap->scale * 1.4426950408889634f;
    p.scale = ap->scale;
    p.softcap = ap->softcap;
    p.window = ap->window;
    p.positions = st->positions;
    p.token_seq = st->token_seq;
    p.block_table = st->block_table;
    p.max_blocks = st->max_blocks;
    p.n_tokens = st->n_tokens;
    p.n_splits = 1;
    /* A window no context of the step reaches past masks nothing: drop it, so the tensor-core
     * kernels serve it. A pure decode step may be recorded and replayed at longer contexts, so
     * its bound is the block table's width (part of a recording's key), not the lengths. */
    if (p.window > 0) {
        int longest = st->max_blocks * l->block_size;
        if (!st->pure_decode) {
            longest = 0;
            for (int i = 0; i < st->n_seqs; i++)
                if (st->h_seq_len[i] > longest) longest = st->h_seq_len[i];
        }
        if (longest <= p.window) p.window = 0;
    }

    bool fast = p.window <= 0 && p.softcap <= 0 && (l->head_dim == 64 || l->head_dim == 128) &&
                p.group <= 128 && q_stride % 8 == 0 && ((uintptr_t)q & 15) == 0 &&
                ((uintptr_t)pool & 15) == 0 && l->block_bytes % 16 == 0 &&
                ((uintptr_t)out & 3) == 0;
    if (!fast) {
        cuda_launch(ci->pdl, ci->streams[BACKEND_STREAM_COMPUTE], attn_generic_kernel,
                    dim3((unsigned)st->n_tokens, (unsigned)n_heads), dim3(ATTN_GENERIC_THREADS), 0,
                    p);
        return;
    }
    if (l->head_dim == 128)
        attn_launch_plan<128>(ci, p, l->block_size);
    else
        attn_launch_plan<64>(ci, p, l->block_size);
}

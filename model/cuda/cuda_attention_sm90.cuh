/* Prefill attention on Hopper (sm_90a): the tensor-core kernel of cuda_attention.cu rewritten
 * with warpgroup MMAs (wgmma). Included by cuda_attention.cu only. Head dim 128. wgmma exists in
 * the sm_90a target alone: every other target of gpu_archs gets a stub that traps, which the
 * dispatch (cuda_impl.attn_path) never launches there. */
#include "model/cuda/cuda_attention_common.cuh"

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
template <int BN, int MIN_BLOCKS, bool FP8>
__global__ void __launch_bounds__(256, MIN_BLOCKS) attn_prefill_wgmma_kernel(attn_params) {
    __trap();
}
#else

/* ---- wgmma primitives (PTX ISA 8.0, "Asynchronous Warpgroup Level Matrix Multiply") ---- */

__device__ __forceinline__ void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_wait0() {
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}
/* Shared memory that cp.async (generic proxy) filled, read next by wgmma (async proxy). */
__device__ __forceinline__ void fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

/* Shared-memory matrix descriptor, 128-byte swizzle. Tiles are stored as blocks of 64 columns
 * (128 bytes per row), rows 128 bytes apart, 16-byte chunk c of row r at c ^ (r & 7), each block
 * 1024-byte aligned (sw128_off). K-major operands (Q, K): lbo unused, sbo = 1024 (8 rows).
 * MN-major B (V, stored [token][dim]): lbo = bytes between the 64-column blocks, sbo = 1024. */
__device__ __forceinline__ uint64_t wgmma_desc(const void *smem, uint32_t lbo, uint32_t sbo) {
    uint64_t a = (uint32_t)__cvta_generic_to_shared(smem);
    return ((a & 0x3FFFF) >> 4) | ((uint64_t)(lbo >> 4) << 16) | ((uint64_t)(sbo >> 4) << 32) |
           (1ull << 62);
}

/* Byte offset of 16-byte chunk c (of HD / 8) of row r in a 128B-swizzled tile of `rows` rows. */
__device__ __forceinline__ int sw128_off(int r, int c, int rows) {
    return (c >> 3) * rows * 128 + r * 128 + (((c & 7) ^ (r & 7)) << 4);
}
/* d (64 x 64) = or += A (64 x 16, smem desc) * B (16 x 64, smem desc), both K-major. */
__device__ __forceinline__ void wgmma_ss_m64n64k16(float d[32], uint64_t da, uint64_t db,
                                                   int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, "
                 "%6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, "
                 "%23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
                   "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
                   "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
                   "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
                   "+f"(d[30]), "+f"(d[31])
                 : "l"(da), "l"(db), "r"(accumulate));
}
/* d (64 x 128) += A (64 x 16, registers, the mma.sync m16n8k16 A layout per warp) * B (16 x 128,
 * smem desc, MN-major: stored [k][n]). */
__device__ __forceinline__ void wgmma_rs_m64n128k16_tb(float d[64], const uint32_t a[4],
                                                       uint64_t db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, "
        "%8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, "
        "%26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "
        "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, "
        "%62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
          "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
          "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
          "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
          "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
          "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
          "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
          "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
          "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

/* Prefill-shaped tiles of 128 rows at head dim 128, same grid, splits and outputs as
 * attn_prefill_kernel: two warpgroups own 64 rows each. Per K/V tile of BN tokens, S = Q K^T by
 * wgmma from shared memory, the online softmax in registers, then O += P V with P from
 * registers (the S accumulator layout is the A fragment layout). K/V rows are gathered from the
 * paged pool by cp.async, double buffered; all 256 threads load. */
template <int BN, int MIN_BLOCKS, bool FP8>
__global__ void __launch_bounds__(256, MIN_BLOCKS) attn_prefill_wgmma_kernel(attn_params p) {
    pdl_wait();
    pdl_trigger();
    /* S is one m64n64 product per warpgroup (BN 128 was removed: NOTES-cuda.md, run 9) */
    static_assert(BN == 64, "S = Q K^T is issued as wgmma m64n64k16");
    constexpr int HD = 128, BM = 128, THREADS = 256, CH = HD / 8;
    constexpr int Q_BYTES = BM * HD * 2, KV_BYTES = BN * HD * 2;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    __shared__ int sblk[2][BN];
    const uint32_t raw = (uint32_t)__cvta_generic_to_shared(smem_raw);
    unsigned char *sq = smem_raw + (((raw + 1023) & ~1023u) - raw); /* swizzle atoms: 1 KiB */
    unsigned char *sk = sq + Q_BYTES;                               /* [2][KV_BYTES] */
    unsigned char *sv = sk + 2 * KV_BYTES;                          /* [2][KV_BYTES] */
    const attn_block b = attn_block_init(p);
    if (b.kv_lo >= b.kv_hi) {
        attn_block_mark_empty(p, b);
        return;
    }
    const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
    const int row0 = wg * 64 + warp * 16; /* this warp's 16 rows of the accumulators */
    const bool wg_active = wg * 64 < b.n_rows;
    const float scale = p.scale_log2;

    if (tid < BN) {
        sblk[0][tid] = attn_block_id(p, b, b.kv_lo + tid);
        sblk[1][tid] = attn_block_id(p, b, b.kv_lo + BN + tid);
    }
    __syncthreads();
    for (int idx = tid; idx < BM * CH; idx += THREADS) {
        int r = idx / CH, c = idx % CH;
        bool valid = r < b.n_rows;
        const bf16 *src = valid ? p.q + (size_t)(b.tile.tok0 + r / b.G) * p.q_stride +
                                      (b.kh * b.G + r % b.G) * HD + c * 8
                                : p.q;
        cp_async16(sq + sw128_off(r, c, BM), src, valid);
    }
    /* rows past kv_hi are zero-filled: V must be finite where P is 0 */
    auto load_kv = [&](int st, int j0) {
        for (int idx = tid; idx < BN * CH; idx += THREADS) {
            int r = idx / CH, c = idx % CH, j = j0 + r;
            bool valid = j < b.kv_hi;
            size_t off = (size_t)sblk[st][r] * p.block_bytes +
                         ((size_t)(j % p.block_size) * HD + c * 8) * p.kv_bytes;
            int so = st * KV_BYTES + sw128_off(r, c, BN);
            if (FP8) {
                attn_kv_chunk(p, sk + so, b.k_base + off, valid, p.k_scale);
                attn_kv_chunk(p, sv + so, b.v_base + off, valid, p.v_scale);
            } else {
                cp_async16(sk + so, valid ? b.k_base + off : p.pool, valid);
                cp_async16(sv + so, valid ? b.v_base + off : p.pool, valid);
            }
        }
    };
    load_kv(0, b.kv_lo);
    cp_async_commit();

    float o[HD / 2];
#pragma unroll
    for (int i = 0; i < HD / 2; i++) o[i] = 0;
    float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0, 0};

    const int n_iter = (b.kv_hi - b.kv_lo + BN - 1) / BN;
    for (int it = 0; it < n_iter; it++) {
        const int j0 = b.kv_lo + it * BN;
        if (it + 1 < n_iter) {
            load_kv((it + 1) & 1, j0 + BN);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        fence_proxy_async();
        __syncthreads();
        int next_blk = tid < BN ? attn_block_id(p, b, j0 + 2 * BN + tid) : 0;
        if (wg_active) {
            const unsigned char *ks = sk + (it & 1) * KV_BYTES, *vs = sv + (it & 1) * KV_BYTES;
            float s[BN / 2];
            /* S = Q K^T: k-step kk reads 32 bytes into 64-column block kk / 4 */
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) {
                uint64_t da =
                    wgmma_desc(sq + (kk / 4) * BM * 128 + wg * 64 * 128 + (kk % 4) * 32, 16, 1024);
                uint64_t db = wgmma_desc(ks + (kk / 4) * BN * 128 + (kk % 4) * 32, 16, 1024);
                wgmma_ss_m64n64k16(s, da, db, kk > 0);
            }
            wgmma_commit();
            wgmma_wait0();
            /* s[nt * 4 + 2 * h + e]: row row0 + lane / 4 + 8 * h, column nt * 8 + 2 * (lane & 3) +
             * e */
            if (j0 + BN > b.kv_hi || j0 + BN - 1 > b.min_pos) {
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    int lim = min(attn_row_pos(b, row0 + lane / 4 + 8 * h), b.kv_hi - 1);
#pragma unroll
                    for (int nt = 0; nt < BN / 8; nt++)
#pragma unroll
                        for (int e = 0; e < 2; e++)
                            if (j0 + nt * 8 + 2 * (lane & 3) + e > lim)
                                s[nt * 4 + 2 * h + e] = -INFINITY;
                }
            }
            float alpha[2];
            bool moved = false;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                float row[BN / 4];
#pragma unroll
                for (int nt = 0; nt < BN / 8; nt++)
                    row[2 * nt] = s[nt * 4 + 2 * h], row[2 * nt + 1] = s[nt * 4 + 2 * h + 1];
                alpha[h] = attn_softmax_row<BN / 4>(row, m_r[h], l_r[h], scale);
#pragma unroll
                for (int nt = 0; nt < BN / 8; nt++)
                    s[nt * 4 + 2 * h] = row[2 * nt], s[nt * 4 + 2 * h + 1] = row[2 * nt + 1];
                moved |= alpha[h] != 1.0f;
            }
            if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
                for (int dt = 0; dt < HD / 8; dt++) {
                    o[dt * 4] *= alpha[0], o[dt * 4 + 1] *= alpha[0];
                    o[dt * 4 + 2] *= alpha[1], o[dt * 4 + 3] *= alpha[1];
                }
            }
            /* O += P V: n-tiles 2kc, 2kc + 1 of S are the A fragment of k-step kc; V's k-step kc
             * is 16 token rows, 2 KiB further */
            uint32_t pa[BN / 16][4];
#pragma unroll
            for (int kc = 0; kc < BN / 16; kc++) {
                pa[kc][0] = pack_bf16(s[8 * kc], s[8 * kc + 1]);
                pa[kc][1] = pack_bf16(s[8 * kc + 2], s[8 * kc + 3]);
                pa[kc][2] = pack_bf16(s[8 * kc + 4], s[8 * kc + 5]);
                pa[kc][3] = pack_bf16(s[8 * kc + 6], s[8 * kc + 7]);
            }
            wgmma_fence();
#pragma unroll
            for (int kc = 0; kc < BN / 16; kc++)
                wgmma_rs_m64n128k16_tb(o, pa[kc], wgmma_desc(vs + kc * 16 * 128, BN * 128, 1024));
            wgmma_commit();
            wgmma_wait0();
        }
        if (tid < BN) sblk[it & 1][tid] = next_blk; /* tile it + 2 reuses this stage */
        __syncthreads(); /* the stage just read is the next load's target */
    }

    if (!wg_active) return;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        float l = l_r[h];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        int r = row0 + lane / 4 + 8 * h;
        if (r >= b.n_rows) continue;
        size_t th = attn_row_index(p, b, r);
        float inv = l > 0 ? 1.0f / l : 0.0f;
        if (p.n_splits == 1) {
            bf16 *dst = p.out + th * HD + 2 * (lane & 3);
#pragma unroll
            for (int dt = 0; dt < HD / 8; dt++)
                *(__nv_bfloat162 *)(dst + dt * 8) =
                    __floats2bfloat162_rn(o[dt * 4 + 2 * h] * inv, o[dt * 4 + 2 * h + 1] * inv);
        } else {
            size_t ts = (size_t)b.split * p.n_tokens * p.n_heads + th;
            float *dst = p.part_o + ts * HD + 2 * (lane & 3);
#pragma unroll
            for (int dt = 0; dt < HD / 8; dt++)
                *(float2 *)(dst + dt * 8) =
                    make_float2(o[dt * 4 + 2 * h] * inv, o[dt * 4 + 2 * h + 1] * inv);
            if ((lane & 3) == 0) p.part_lse[ts] = l > 0 ? m_r[h] * scale + log2f(l) : -INFINITY;
        }
    }
}

#endif /* sm_90a */

/* Element-wise and row-wise ops of the forward pass: embed, rmsnorm (plain and fused with the
 * residual add), add, rope, swiglu, kv_write into the paged pool, gather_rows, dtype conversion.
 * bf16 in and out, fp32 arithmetic. Kernels first, launchers (the backend ops) after. */
#include "model/cuda/cuda_internal.h"

typedef __nv_bfloat16 bf16;

/* 8 bf16 in one 16-byte access: the width every row kernel below moves data in when the row
 * length allows it (VEC = 8), else one element at a time (VEC = 1). */
struct bf16x8 {
    __nv_bfloat162 h[4];
};

template <int VEC> struct vec_io;

template <> struct vec_io<8> {
    static __device__ __forceinline__ void load(const bf16 *p, float *f) {
        bf16x8 v = *(const bf16x8 *)p;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float2 t = __bfloat1622float2(v.h[i]);
            f[2 * i] = t.x, f[2 * i + 1] = t.y;
        }
    }
    static __device__ __forceinline__ void store(bf16 *p, const float *f) {
        bf16x8 v;
#pragma unroll
        for (int i = 0; i < 4; i++) v.h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
        *(bf16x8 *)p = v;
    }
};

template <> struct vec_io<1> {
    static __device__ __forceinline__ void load(const bf16 *p, float *f) {
        f[0] = __bfloat162float(*p);
    }
    static __device__ __forceinline__ void store(bf16 *p, const float *f) {
        *p = __float2bfloat16(f[0]);
    }
};

/* ================================ kernels ================================ */

template <int VEC>
__global__ void embed_kernel(bf16 *out, const bf16 *table, const int32_t *tokens, int dim) {
    pdl_wait();
    pdl_trigger();
    int t = blockIdx.x;
    const bf16 *src = table + (size_t)tokens[t] * dim;
    bf16 *dst = out + (size_t)t * dim;
    for (int c = threadIdx.x * VEC; c < dim; c += blockDim.x * VEC) {
        float f[VEC];
        vec_io<VEC>::load(src + c, f);
        vec_io<VEC>::store(dst + c, f);
    }
}

__device__ __forceinline__ float block_sum(float v, float *red) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads(); /* red may still be read by a previous call */
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float s = 0;
    for (int i = 0; i < (int)(blockDim.x / 32); i++) s += red[i];
    return s;
}

/* One block per row. With delta: x += delta first (x written back in bf16, the residual stream's
 * dtype), and the norm is taken of the rounded sum, as the bf16 reference model does. */
template <int VEC>
__global__ void rmsnorm_kernel(bf16 *out, bf16 *x, const bf16 *delta, const bf16 *w, int dim,
                               float eps) {
    pdl_wait();
    pdl_trigger();
    __shared__ float red[32];
    size_t row = (size_t)blockIdx.x * dim;
    float ss = 0;
    for (int c = threadIdx.x * VEC; c < dim; c += blockDim.x * VEC) {
        float f[VEC];
        vec_io<VEC>::load(x + row + c, f);
        if (delta) {
            float d[VEC];
            vec_io<VEC>::load(delta + row + c, d);
#pragma unroll
            for (int i = 0; i < VEC; i++) f[i] = __bfloat162float(__float2bfloat16(f[i] + d[i]));
            vec_io<VEC>::store(x + row + c, f);
        }
#pragma unroll
        for (int i = 0; i < VEC; i++) ss += f[i] * f[i];
    }
    float r = rsqrtf(block_sum(ss, red) / dim + eps);
    for (int c = threadIdx.x * VEC; c < dim; c += blockDim.x * VEC) {
        float f[VEC], g[VEC];
        vec_io<VEC>::load(x + row + c, f); /* this thread wrote it, or it is unchanged */
        vec_io<VEC>::load(w + c, g);
#pragma unroll
        for (int i = 0; i < VEC; i++) f[i] = f[i] * r * g[i];
        vec_io<VEC>::store(out + row + c, f);
    }
}

template <int VEC> __global__ void add_kernel(bf16 *x, const bf16 *d, size_t n) {
    pdl_wait();
    pdl_trigger();
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * VEC;
    if (i >= n) return;
    float a[VEC], b[VEC];
    vec_io<VEC>::load(x + i, a);
    vec_io<VEC>::load(d + i, b);
#pragma unroll
    for (int j = 0; j < VEC; j++) a[j] += b[j];
    vec_io<VEC>::store(x + i, a);
}

/* Grid (token, group of blockDim pairs), one (head, pair) per thread. The angle is formed in fp32
 * like the reference (position * inv_freq) and its sine and cosine taken in double:
 * --use_fast_math turns sincosf into an approximation that is far off at angles of 1e4 rad, and a
 * float sincos of the angle reduced in double (~4e-7 off) flipped enough bf16 roundings that
 * stories260K's greedy ids parted from llama2.c's at step 114 (NOTES-cuda.md, runs 7-8). */
__global__ void rope_kernel(bf16 *x, const int32_t *positions, int row_stride, int n_pairs,
                            int head_dim, int rot_dim, const float *inv_freq, float mscale) {
    pdl_wait();
    pdl_trigger();
    const int t = blockIdx.x, i = blockIdx.y * blockDim.x + threadIdx.x, half = rot_dim / 2;
    if (i >= n_pairs) return;
    const int h = i / half, j = i % half;
    double s, c;
    sincos((double)((float)positions[t] * inv_freq[j]), &s, &c);
    const float cs = (float)c * mscale, sn = (float)s * mscale; /* longrope: cos, sin * factor */
    bf16 *p = x + (size_t)t * row_stride + h * head_dim + j;
    float x0 = __bfloat162float(p[0]), x1 = __bfloat162float(p[half]);
    p[0] = __float2bfloat16(x0 * cs - x1 * sn);
    p[half] = __float2bfloat16(x1 * cs + x0 * sn);
}

template <int VEC> __global__ void swiglu_kernel(bf16 *out, const bf16 *gu, int n, int ff) {
    pdl_wait();
    pdl_trigger();
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * VEC; /* index into out */
    if (i >= (size_t)n * ff) return;
    size_t r = i / ff, j = i % ff;
    float g[VEC], u[VEC];
    vec_io<VEC>::load(gu + r * 2 * ff + j, g);
    vec_io<VEC>::load(gu + r * 2 * ff + ff + j, u);
#pragma unroll
    for (int k = 0; k < VEC; k++) g[k] = g[k] / (1.0f + __expf(-g[k])) * u[k];
    vec_io<VEC>::store(out + i, g);
}

/* One block per token: its k and v rows (n_kv_heads * head_dim each) go to slot pos % block_size
 * of block block_table[seq][pos / block_size], at the layout of backend.h. FP8: the pool holds
 * e4m3(x * inv_scale) (k_inv for K, v_inv for V), rounded to nearest and saturated at +-448 as
 * the CPU backend's kv_f32_to_e4m3. */
template <int VEC, bool FP8>
__global__ void kv_write_kernel(char *pool, size_t block_bytes, int n_kv_heads, int head_dim,
                                int block_size, int layer, const bf16 *k, const bf16 *v,
                                int row_stride, const int32_t *positions, const int32_t *token_seq,
                                const int32_t *block_table, int max_blocks, float k_inv,
                                float v_inv) {
    pdl_wait();
    pdl_trigger();
    int t = blockIdx.x;
    int pos = positions[t];
    int block = block_table[(size_t)token_seq[t] * max_blocks + pos / block_size];
    int slot = pos % block_size;
    char *base = pool + (size_t)block * block_bytes;
    int row = n_kv_heads * head_dim;
    for (int c = threadIdx.x * VEC; c < 2 * row; c += blockDim.x * VEC) {
        int kv = c / row, h = (c % row) / head_dim, d = c % head_dim;
        const bf16 *src = (kv ? v : k) + (size_t)t * row_stride + h * head_dim + d;
        size_t idx =
            ((((size_t)layer * 2 + kv) * n_kv_heads + h) * block_size + slot) * head_dim + d;
        float f[VEC];
        vec_io<VEC>::load(src, f);
        if (FP8) {
            float inv = kv ? v_inv : k_inv;
            __nv_fp8_storage_t q[VEC];
#pragma unroll
            for (int i = 0; i < VEC; i++)
                q[i] = __nv_cvt_float_to_fp8(f[i] * inv, __NV_SATFINITE, __NV_E4M3);
            if (VEC == 8) /* 8 bytes at an offset that is a multiple of 8 */
                *(uint2 *)(base + idx) = *(const uint2 *)q;
            else
                base[idx] = (char)q[0];
        } else {
            vec_io<VEC>::store((bf16 *)base + idx, f);
        }
    }
}

template <int VEC>
__global__ void gather_rows_kernel(bf16 *out, const bf16 *x, const int32_t *rows, int dim) {
    pdl_wait();
    pdl_trigger();
    int r = blockIdx.x;
    const bf16 *src = x + (size_t)rows[r] * dim;
    for (int c = threadIdx.x * VEC; c < dim; c += blockDim.x * VEC) {
        float f[VEC];
        vec_io<VEC>::load(src + c, f);
        vec_io<VEC>::store(out + (size_t)r * dim + c, f);
    }
}

__global__ void f32_to_bf16_kernel(bf16 *dst, const float *src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16(src[i]);
}

/* VEC = 8: 8 elements per thread (a 16-byte load, two 16-byte stores), the tail one by one. */
template <int VEC> __global__ void bf16_to_f32_kernel(float *dst, const bf16 *src, size_t n) {
    size_t nv = n / VEC;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < nv;
         i += (size_t)gridDim.x * blockDim.x) {
        float f[VEC];
        vec_io<VEC>::load(src + VEC * i, f);
#pragma unroll
        for (int j = 0; j < VEC; j += 4)
            *(float4 *)(dst + VEC * i + j) = make_float4(f[j], f[j + 1], f[j + 2], f[j + 3]);
    }
    size_t tail = VEC * nv + (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (tail < n && tail < VEC * nv + VEC) dst[tail] = __bfloat162float(src[tail]);
}

template <> __global__ void bf16_to_f32_kernel<1>(float *dst, const bf16 *src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __bfloat162float(src[i]);
}

__global__ void f16_to_bf16_kernel(bf16 *dst, const __half *src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16(__half2float(src[i]));
}

/* ================================ launchers ================================ */

static inline bool aligned16(const void *p) {
    return ((uintptr_t)p & 15) == 0;
}

/* Threads for a row kernel: enough 8-wide lanes to cover dim once, 32..1024. */
static inline int row_threads(int dim) {
    int t = 32;
    while (t < 1024 && t * 8 < dim) t *= 2;
    return t;
}

void cuda_op_embed(backend *be, void *out, const void *table, int dim) {
    cuda_step *st = &cuda_impl_of(be)->step;
    if (st->n_tokens == 0) return;
    cudaStream_t s = cuda_compute_stream(be);
    if (dim % 8 == 0 && aligned16(out) && aligned16(table))
        cuda_launch(cuda_impl_of(be)->pdl, s, embed_kernel<8>, dim3(st->n_tokens),
                    dim3(row_threads(dim)), 0, (bf16 *)out, (const bf16 *)table, st->tokens, dim);
    else
        cuda_launch(cuda_impl_of(be)->pdl, s, embed_kernel<1>, dim3(st->n_tokens),
                    dim3(row_threads(dim)), 0, (bf16 *)out, (const bf16 *)table, st->tokens, dim);
}

static void rmsnorm_launch(backend *be, void *out, void *x, const void *delta, const void *w, int n,
                           int dim, float eps) {
    if (n == 0) return;
    cudaStream_t s = cuda_compute_stream(be);
    bool v8 = dim % 8 == 0 && aligned16(out) && aligned16(x) && aligned16(w) &&
              (!delta || aligned16(delta));
    if (v8)
        cuda_launch(cuda_impl_of(be)->pdl, s, rmsnorm_kernel<8>, dim3(n), dim3(row_threads(dim)), 0,
                    (bf16 *)out, (bf16 *)x, (const bf16 *)delta, (const bf16 *)w, dim, eps);
    else
        cuda_launch(cuda_impl_of(be)->pdl, s, rmsnorm_kernel<1>, dim3(n), dim3(row_threads(dim)), 0,
                    (bf16 *)out, (bf16 *)x, (const bf16 *)delta, (const bf16 *)w, dim, eps);
}

void cuda_op_rmsnorm(backend *be, void *out, const void *x, const void *w, int n, int dim,
                     float eps) {
    rmsnorm_launch(be, out, (void *)x, NULL, w, n, dim, eps); /* x is only read without delta */
}

void cuda_op_add_rmsnorm(backend *be, void *out, void *x, const void *delta, const void *w, int n,
                         int dim, float eps) {
    rmsnorm_launch(be, out, x, delta, w, n, dim, eps);
}

void cuda_op_add(backend *be, void *x, const void *delta, size_t n) {
    if (n == 0) return;
    cudaStream_t s = cuda_compute_stream(be);
    if (n % 8 == 0 && aligned16(x) && aligned16(delta))
        cuda_launch(cuda_impl_of(be)->pdl, s, add_kernel<8>, dim3((unsigned)((n / 8 + 255) / 256)),
                    dim3(256), 0, (bf16 *)x, (const bf16 *)delta, n);
    else
        cuda_launch(cuda_impl_of(be)->pdl, s, add_kernel<1>, dim3((unsigned)((n + 255) / 256)),
                    dim3(256), 0, (bf16 *)x, (const bf16 *)delta, n);
}

void cuda_op_rope(backend *be, void *x, int row_stride, int n_heads, int head_dim, int rot_dim,
                  const float *inv_freq, float mscale) {
    cuda_step *st = &cuda_impl_of(be)->step;
    KV_CHECK(rot_dim % 2 == 0 && rot_dim >= 2 && rot_dim <= head_dim);
    if (st->n_tokens == 0) return;
    int pairs = n_heads * rot_dim / 2, threads = pairs < 128 ? (pairs + 31) / 32 * 32 : 128;
    dim3 grid((unsigned)st->n_tokens, (unsigned)((pairs + threads - 1) / threads));
    cuda_launch(cuda_impl_of(be)->pdl, cuda_compute_stream(be), rope_kernel, grid, dim3(threads), 0,
                (bf16 *)x, st->positions, row_stride, pairs, head_dim, rot_dim, inv_freq, mscale);
}

void cuda_op_swiglu(backend *be, void *out, const void *gu, int n, int ff) {
    size_t total = (size_t)n * ff;
    if (total == 0) return;
    cudaStream_t s = cuda_compute_stream(be);
    if (ff % 8 == 0 && aligned16(out) && aligned16(gu))
        cuda_launch(cuda_impl_of(be)->pdl, s, swiglu_kernel<8>,
                    dim3((unsigned)((total / 8 + 255) / 256)), dim3(256), 0, (bf16 *)out,
                    (const bf16 *)gu, n, ff);
    else
        cuda_launch(cuda_impl_of(be)->pdl, s, swiglu_kernel<1>,
                    dim3((unsigned)((total + 255) / 256)), dim3(256), 0, (bf16 *)out,
                    (const bf16 *)gu, n, ff);
}

void cuda_op_kv_write(backend *be, void *pool, const backend_kv_layout *l, int layer, const void *k,
                      const void *v, int row_stride) {
    cuda_step *st = &cuda_impl_of(be)->step;
    KV_CHECK(l->dtype == KV_DTYPE_BF16 || l->dtype == KV_DTYPE_F8_E4M3);
    if (st->n_tokens == 0) return;
    cudaStream_t s = cuda_compute_stream(be);
    int row = l->n_kv_heads * l->head_dim;
    bool v8 = l->head_dim % 8 == 0 && row_stride % 8 == 0 && aligned16(k) && aligned16(v) &&
              aligned16(pool);
    bool fp8 = l->dtype == KV_DTYPE_F8_E4M3;
    float k_inv = 1.0f / backend_kv_scale(l, layer, 0),
          v_inv = 1.0f / backend_kv_scale(l, layer, 1);
    auto kernel = v8 ? (fp8 ? kv_write_kernel<8, true> : kv_write_kernel<8, false>)
                     : (fp8 ? kv_write_kernel<1, true> : kv_write_kernel<1, false>);
    int threads = row_threads(2 * row);
    cuda_launch(cuda_impl_of(be)->pdl, s, kernel, dim3(st->n_tokens), dim3(threads), 0,
                (char *)pool, l->block_bytes, l->n_kv_heads, l->head_dim, l->block_size, layer,
                (const bf16 *)k, (const bf16 *)v, row_stride, st->positions, st->token_seq,
                st->block_table, st->max_blocks, k_inv, v_inv);
}

void cuda_op_gather_rows(backend *be, void *out, const void *x, int dim) {
    cuda_step *st = &cuda_impl_of(be)->step;
    if (st->n_out == 0) return;
    cudaStream_t s = cuda_compute_stream(be);
    if (dim % 8 == 0 && aligned16(out) && aligned16(x))
        cuda_launch(cuda_impl_of(be)->pdl, s, gather_rows_kernel<8>, dim3(st->n_out),
                    dim3(row_threads(dim)), 0, (bf16 *)out, (const bf16 *)x, st->out_rows, dim);
    else
        cuda_launch(cuda_impl_of(be)->pdl, s, gather_rows_kernel<1>, dim3(st->n_out),
                    dim3(row_threads(dim)), 0, (bf16 *)out, (const bf16 *)x, st->out_rows, dim);
}

void cuda_convert_f32_to_bf16(cudaStream_t s, bf16 *dst, const float *src, size_t n) {
    if (n == 0) return;
    size_t blocks = (n + 255) / 256;
    f32_to_bf16_kernel<<<(unsigned)(blocks < 4096 ? blocks : 4096), 256, 0, s>>>(dst, src, n);
    CUDA_LAUNCH_CHECK();
}

void cuda_convert_bf16_to_f32(cudaStream_t s, float *dst, const bf16 *src, size_t n) {
    if (n == 0) return;
    if (aligned16(dst) && aligned16(src)) {
        size_t blocks = (n / 8 + 255) / 256 + 1;
        bf16_to_f32_kernel<8>
            <<<(unsigned)(blocks < 4096 ? blocks : 4096), 256, 0, s>>>(dst, src, n);
    } else {
        size_t blocks = (n + 255) / 256;
        bf16_to_f32_kernel<1>
            <<<(unsigned)(blocks < 4096 ? blocks : 4096), 256, 0, s>>>(dst, src, n);
    }
    CUDA_LAUNCH_CHECK();
}

void cuda_convert_f16_to_bf16(cudaStream_t s, bf16 *dst, const __half *src, size_t n) {
    if (n == 0) return;
    size_t blocks = (n + 255) / 256;
    f16_to_bf16_kernel<<<(unsigned)(blocks < 4096 ? blocks : 4096), 256, 0, s>>>(dst, src, n);
    CUDA_LAUNCH_CHECK();
}

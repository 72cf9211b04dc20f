/* The decoder shared by every family: loads weights (safetensors, or random ones for benchmarks)
 * onto a backend, stacking q/k/v and gate/up so each is one matmul, drives a step (recorded
 * decode steps, logits to the host) and holds the blocks the families' forward passes are made of;
 * Llama's own tensor names and step (Llama, Mistral, Qwen2, SmolLM3). The KV pool and the block
 * tables belong to the caller. */
#include "model/llama.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "model/safetensors.h"

/* Elements generated per host chunk by the dummy loader. */
#define LLAMA_DUMMY_CHUNK ((size_t)1 << 22)
/* Standard deviation of dummy weights (the usual initializer_range). */
#define LLAMA_DUMMY_STD 0.02

/* --- loading --- */

typedef enum weight_init { WEIGHT_RANDOM, WEIGHT_ONES } weight_init;

typedef struct llama_loader {
    llama_model *m;
    const char *dir;
    model_load_format format;
    safetensors_model st;
    void *staging; /* host bytes for stacking, staging_cap bytes */
    size_t staging_cap;
    bool quantize_fp8;  /* the quantization: fp8 knob (fp8_quantize) */
    size_t done, total; /* device bytes uploaded / to upload */
    void (*progress)(size_t done, size_t total, void *ctx);
    void *progress_ctx;
    /* dummy weights: 65536 samples of N(0, std) in the weight dtype, indexed by random bits */
    void *normal_table;
    uint64_t rng;
    uint64_t n_chunks; /* dummy chunks generated so far (each chunk's seed) */
} llama_loader;
typedef llama_loader loader;

static uint64_t xorshift64(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Stores f in dtype at element i of dst. */
static void store_as(void *dst, kv_dtype dt, size_t i, float f) {
    if (dt == KV_DTYPE_F32)
        ((float *)dst)[i] = f;
    else if (dt == KV_DTYPE_BF16)
        ((uint16_t *)dst)[i] = kv_f32_to_bf16(f);
    else
        ((uint16_t *)dst)[i] = kv_f32_to_f16(f);
}

static void dummy_table_init(loader *ld) {
    kv_dtype dt = ld->m->be->weight_dtype;
    ld->normal_table = kv_malloc(65536 * kv_dtype_size(dt));
    ld->rng = 0x2545f4914f6cdd1dull;
    for (size_t i = 0; i < 65536; i += 2) { /* Box-Muller, two samples per pair of uniforms */
        double u1 = ((double)(xorshift64(&ld->rng) >> 11) + 1.0) / 9007199254740993.0;
        double u2 = (double)(xorshift64(&ld->rng) >> 11) / 9007199254740992.0;
        double r = sqrt(-2.0 * log(u1)) * LLAMA_DUMMY_STD;
        store_as(ld->normal_table, dt, i, (float)(r * cos(2 * M_PI * u2)));
        store_as(ld->normal_table, dt, i + 1, (float)(r * sin(2 * M_PI * u2)));
    }
}

/* out[i] = table[16 random bits] for i < n: four elements per xorshift draw. */
static void dummy_fill_u16(uint16_t *out, const uint16_t *table, size_t n, uint64_t *rng) {
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        uint64_t r = xorshift64(rng);
        out[i] = table[r & 0xffff], out[i + 1] = table[(r >> 16) & 0xffff];
        out[i + 2] = table[(r >> 32) & 0xffff], out[i + 3] = table[r >> 48];
    }
    for (; i < n; i++) out[i] = table[xorshift64(rng) & 0xffff];
}

static void dummy_fill_f32(float *out, const float *table, size_t n, uint64_t *rng) {
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        uint64_t r = xorshift64(rng);
        out[i] = table[r & 0xffff], out[i + 1] = table[(r >> 16) & 0xffff];
        out[i + 2] = table[(r >> 32) & 0xffff], out[i + 3] = table[r >> 48];
    }
    for (; i < n; i++) out[i] = table[xorshift64(rng) & 0xffff];
}

/* One host chunk of dummy weights, generated on a thread of its own. */
typedef struct dummy_job {
    void *out;
    size_t len;
    const void *table;
    kv_dtype dt;
    weight_init init;
    uint64_t rng; /* this chunk's own stream: chunks are filled in any order, the same values */
} dummy_job;

static void *dummy_job_run(void *arg) {
    dummy_job *j = arg;
    if (j->init == WEIGHT_ONES) {
        for (size_t i = 0; i < j->len; i++) store_as(j->out, j->dt, i, 1.0f);
    } else if (kv_dtype_size(j->dt) == 2) {
        dummy_fill_u16(j->out, j->table, j->len, &j->rng);
    } else {
        dummy_fill_f32(j->out, j->table, j->len, &j->rng);
    }
    return NULL;
}

/* splitmix64: the seed of chunk k of the load (never 0, which xorshift64 cannot leave). */
static uint64_t chunk_seed(uint64_t k) {
    uint64_t z = k * 0x9e3779b97f4a7c15ull + 0x2545f4914f6cdd1dull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return z ? z : 1;
}

#define LLAMA_DUMMY_THREADS 8

/* A device tensor of n weight-dtype elements of random values (or ones; with host, written into
 * host[n] instead and host returned), generated in host
 * chunks directly in the weight dtype, several chunks at once on threads (one thread makes ~2
 * GB/s: 8 s for an 8B model). Chunk k of the whole load has its own seeded stream, so the values
 * depend on the chunk order only, not on the threads or the backend. */
static void *weight_dummy_to(loader *ld, size_t n, weight_init init, void *host) {
    backend *be = ld->m->be;
    kv_dtype dt = be->weight_dtype;
    size_t es = kv_dtype_size(dt), chunk = n < LLAMA_DUMMY_CHUNK ? n : LLAMA_DUMMY_CHUNK;
    int n_threads = kv_copy_threads();
    if (n_threads > LLAMA_DUMMY_THREADS) n_threads = LLAMA_DUMMY_THREADS;
    size_t span = chunk * (size_t)n_threads; /* elements per round of threads */
    if (span > n) span = n;
    char *dev = host ? NULL : be->ops->dev_alloc(be, n * es);
    if (!host && span * es > ld->staging_cap) {
        free(ld->staging);
        ld->staging = kv_malloc(span * es);
        ld->staging_cap = span * es;
    }
    for (size_t off = 0; off < n; off += span) {
        size_t len = n - off < span ? n - off : span;
        dummy_job jobs[LLAMA_DUMMY_THREADS];
        pthread_t tid[LLAMA_DUMMY_THREADS];
        bool started[LLAMA_DUMMY_THREADS] = {false};
        int k = 0;
        for (size_t c = 0; c < len; c += chunk, k++)
            jobs[k] = (dummy_job){.out = host ? (char *)host + (off + c) * es
                                              : (char *)ld->staging + c * es,
                                  .len = len - c < chunk ? len - c : chunk,
                                  .table = ld->normal_table,
                                  .dt = dt,
                                  .init = init,
                                  .rng = chunk_seed(ld->n_chunks++)};
        for (int i = 1; i < k; i++)
            started[i] = pthread_create(&tid[i], NULL, dummy_job_run, &jobs[i]) == 0;
        dummy_job_run(&jobs[0]);
        for (int i = 1; i < k; i++) {
            if (started[i])
                pthread_join(tid[i], NULL);
            else
                dummy_job_run(&jobs[i]);
        }
        if (!host) be->ops->to_dev(be, dev + off * es, ld->staging, len * es);
    }
    return host ? host : dev;
}

/* weight_dummy_to a new device tensor. */
static void *weight_dummy(loader *ld, size_t n, weight_init init) {
    return weight_dummy_to(ld, n, init, NULL);
}

/* The safetensors tensor `name`, checked to be [rows, cols] ([rows] when cols is 0). */
static const safetensors_tensor *tensor_find(loader *ld, const char *name, int64_t rows,
                                             int64_t cols, kv_error *err) {
    const safetensors_tensor *t = safetensors_find(&ld->st, name);
    if (!t) {
        kv_error_set(err, "%s: tensor '%s' is missing from the safetensors files", ld->dir, name);
        return NULL;
    }
    int want_dims = cols ? 2 : 1;
    if (t->n_dims != want_dims || t->shape[0] != rows || (cols && t->shape[1] != cols)) {
        char got[96] = "";
        for (int i = 0, o = 0; i < t->n_dims && o < (int)sizeof got - 24; i++)
            o += snprintf(got + o, sizeof got - (size_t)o, "%s%lld", i ? ", " : "",
                          (long long)t->shape[i]);
        if (cols)
            kv_error_set(err, "%s: tensor '%s' has shape [%s], config.json implies [%lld, %lld]",
                         ld->dir, name, got, (long long)rows, (long long)cols);
        else
            kv_error_set(err, "%s: tensor '%s' has shape [%s], config.json implies [%lld]", ld->dir,
                         name, got, (long long)rows);
        return NULL;
    }
    return t;
}

/* Host staging space of at least bytes. */
static void *staging_reserve(loader *ld, size_t bytes) {
    if (bytes > ld->staging_cap) {
        free(ld->staging);
        ld->staging = kv_malloc(bytes);
        ld->staging_cap = bytes;
    }
    return ld->staging;
}

/* dst[rows * cols] = the F8_E4M3 weight t (named name) times its scale tensor: name's
 * "_scale_inv" (quant_method fp8) or "_scale" (compressed-tensors), per tensor (one value),
 * per output channel ([rows] or [rows, 1]) or per block ([ceil(rows / br), ceil(cols / bc)]
 * with the config's block shape). With row_scales (not NULL) it fills row_scales[rows] instead
 * of dst and returns 0 when the scales are per tensor or per row, or returns 1 (nothing
 * written) when they are per block. */
static int fp8_dequantize(loader *ld, const char *name, const safetensors_tensor *t, float *dst,
                          float *row_scales, kv_error *err) {
    const hf_config *c = &ld->m->cfg;
    if (c->quant == HF_QUANT_NONE)
        return kv_error_set(err,
                            "%s: tensor '%s' is F8_E4M3 but config.json has no quantization_config",
                            ld->dir, name);
    if (t->n_dims != 2)
        return kv_error_set(err, "%s: tensor '%s' is F8_E4M3 but not a matrix", ld->dir, name);
    char sname[160];
    snprintf(sname, sizeof sname, "%s_scale_inv", name);
    const safetensors_tensor *s = safetensors_find(&ld->st, sname);
    if (!s) {
        snprintf(sname, sizeof sname, "%s_scale", name);
        s = safetensors_find(&ld->st, sname);
    }
    if (!s)
        return kv_error_set(err, "%s: F8_E4M3 tensor '%s' has no %s_scale_inv nor %s_scale",
                            ld->dir, name, name, name);
    size_t rows = (size_t)t->shape[0], cols = (size_t)t->shape[1];
    size_t br = c->quant_block[0] ? (size_t)c->quant_block[0] : rows;
    size_t bc = c->quant_block[1] ? (size_t)c->quant_block[1] : cols;
    size_t nbr = (rows + br - 1) / br, nbc = (cols + bc - 1) / bc;
    enum { PER_TENSOR, PER_ROW, PER_BLOCK } kind;
    if (s->n_elems == 1)
        kind = PER_TENSOR;
    else if (s->n_elems == rows && (s->n_dims == 1 || (s->n_dims == 2 && s->shape[1] == 1)))
        kind = PER_ROW;
    else if (c->quant_block[0] && s->n_dims == 2 && (size_t)s->shape[0] == nbr &&
             (size_t)s->shape[1] == nbc)
        kind = PER_BLOCK;
    else
        return kv_error_set(err,
                            "%s: scale tensor '%s' has %zu elements: not per tensor, per output "
                            "channel (%zu) nor per block (%zu x %zu)",
                            ld->dir, sname, s->n_elems, rows, nbr, nbc);
    if (s->dtype == KV_DTYPE_F8_E4M3)
        return kv_error_set(err, "%s: scale tensor '%s' is F8_E4M3", ld->dir, sname);
    float *sc = kv_malloc(s->n_elems * sizeof *sc);
    kv_convert_to_f32(sc, s->data, s->dtype, s->n_elems);
    if (row_scales) {
        for (size_t r = 0; kind != PER_BLOCK && r < rows; r++)
            row_scales[r] = kind == PER_TENSOR ? sc[0] : sc[r];
        free(sc);
        return kind == PER_BLOCK;
    }
    const uint8_t *q = t->data;
    for (size_t r = 0; r < rows; r++)
        for (size_t k = 0; k < cols; k++) {
            float f = kind == PER_TENSOR ? sc[0]
                      : kind == PER_ROW  ? sc[r]
                                         : sc[(r / br) * nbc + k / bc];
            dst[r * cols + k] = kv_e4m3_to_f32(q[r * cols + k]) * f;
        }
    free(sc);
    return 0;
}

/* Per-row FP8 quantization, s[r] = max |row| / 448 (per output channel, as vLLM's online FP8;
 * 1 for a zero row), on threads (kv_parallel_for over rows: one thread quantizes ~0.15 G
 * weights/s, 60 s for an 8B model). src is rows x cols of dtype dt. With q, writes
 * q[r, :] = e4m3(row / s[r]) and s; without, (the CPU backend, which keeps f32) replaces the f32
 * src in place by e4m3(row / s) * s: the accuracy of FP8 weights, not their bytes. */
typedef struct fp8_quantize_job {
    void *src;
    kv_dtype dt;
    size_t cols;
    uint8_t *q;
    float *s;
} fp8_quantize_job;

static void fp8_quantize_range(size_t lo, size_t hi, void *ctx) {
    const fp8_quantize_job *j = ctx;
    size_t es = kv_dtype_size(j->dt), cols = j->cols;
    float *row = j->q ? kv_malloc(cols * sizeof *row) : NULL;
    for (size_t r = lo; r < hi; r++) {
        float *f = j->q ? row : (float *)j->src + r * cols;
        if (j->q) kv_convert_to_f32(row, (const char *)j->src + r * cols * es, j->dt, cols);
        float mx = 0;
        for (size_t k = 0; k < cols; k++) mx = fmaxf(mx, fabsf(f[k]));
        float s = mx > 0 ? mx / 448.0f : 1.0f;
        if (j->q) {
            j->s[r] = s;
            for (size_t k = 0; k < cols; k++) j->q[r * cols + k] = kv_f32_to_e4m3(f[k] / s);
        } else if (mx > 0) {
            for (size_t k = 0; k < cols; k++) f[k] = kv_e4m3_to_f32(kv_f32_to_e4m3(f[k] / s)) * s;
        }
    }
    free(row);
}

static void fp8_quantize(void *src, kv_dtype dt, size_t rows, size_t cols, uint8_t *q, float *s) {
    fp8_quantize_job j = {src, dt, cols, q, s};
    size_t min_rows = (((size_t)1 << 20) + cols - 1) / cols; /* pieces of >= 1 M weights */
    kv_parallel_for(rows, min_rows, 1, kv_copy_threads(), fp8_quantize_range, &j);
}

/* The stacked parts as e4m3 bytes q[n] and one scale per row (the backend's FP8 weights):
 * FP8 parts copied with their per-tensor or per-row scales, others quantized per row. 1 when a
 * part's scales are block-wise (not one per row: the caller dequantizes instead), -1 on error. */
static int fp8_pack(loader *ld, int n_parts, char names[][128], const safetensors_tensor **parts,
                    size_t cols, uint8_t *q, float *rs, kv_error *err) {
    for (int i = 0; i < n_parts; i++) {
        const safetensors_tensor *t = parts[i];
        size_t rows = t->n_elems / cols;
        if (t->dtype == KV_DTYPE_F8_E4M3) {
            int rc = fp8_dequantize(ld, names[i], t, NULL, rs, err);
            if (rc) return rc;
            memcpy(q, t->data, t->n_elems);
        } else {
            fp8_quantize((void *)t->data, t->dtype, rows, cols, q, rs);
        }
        q += t->n_elems, rs += rows;
    }
    return 0;
}

/* Uploads the weight made of n_parts tensors names[i] of rows[i] × cols (cols 0: vectors),
 * stacked along rows, as one device tensor. NULL and err set when a tensor is missing or has
 * the wrong shape. With MODEL_LOAD_DUMMY the values are random (or ones). linear marks the
 * projection matrices: those may be F8_E4M3 (dequantized here, see fp8_dequantize) and are
 * quantized when ld->quantize_fp8. */
static void *weight_load(loader *ld, int n_parts, char names[][128], const int64_t *rows,
                         int64_t cols, weight_init init, bool linear, kv_error *err) {
    backend *be = ld->m->be;
    size_t n = 0;
    for (int i = 0; i < n_parts; i++) n += (size_t)rows[i] * (size_t)(cols ? cols : 1);
    void *dev = NULL;
    size_t dev_bytes = n * kv_dtype_size(be->weight_dtype);
    /* FP8 on the device: projections of an FP8 checkpoint (scales per tensor or row) or
     * quantized at load, on a backend that keeps e4m3 weights */
    bool dev_fp8 = linear && cols % 16 == 0 && be->ops->weight_upload_fp8;
    size_t n_rows = cols ? n / (size_t)cols : 0;
    if (ld->format == MODEL_LOAD_DUMMY && dev_fp8 && ld->quantize_fp8) {
        kv_dtype dt = be->weight_dtype;
        void *raw = kv_malloc(n * kv_dtype_size(dt));
        weight_dummy_to(ld, n, WEIGHT_RANDOM, raw); /* the values weight_dummy would upload */
        uint8_t *q = kv_malloc(n);
        float *rs = kv_malloc(n_rows * sizeof *rs);
        fp8_quantize(raw, dt, n_rows, (size_t)cols, q, rs);
        dev = be->ops->weight_upload_fp8(be, q, rs, n_rows, (size_t)cols);
        dev_bytes = n + n_rows * sizeof(float);
        free(raw), free(q), free(rs);
    } else if (ld->format == MODEL_LOAD_DUMMY) {
        dev = weight_dummy(ld, n, init);
    } else {
        const safetensors_tensor *parts[3] = {NULL, NULL, NULL};
        bool same_dtype = true, any_fp8 = false;
        for (int i = 0; i < n_parts; i++) {
            if (!(parts[i] = tensor_find(ld, names[i], rows[i], cols, err))) return NULL;
            same_dtype = same_dtype && parts[i]->dtype == parts[0]->dtype;
            any_fp8 = any_fp8 || parts[i]->dtype == KV_DTYPE_F8_E4M3;
        }
        if (any_fp8 && !linear)
            return kv_error_set(err, "%s: tensor '%s' is F8_E4M3; only projections may be FP8",
                                ld->dir, names[0]),
                   NULL;
        bool quantize = linear && ld->quantize_fp8 && !any_fp8;
        bool all_fp8 = true;
        for (int i = 0; i < n_parts; i++) all_fp8 = all_fp8 && parts[i]->dtype == KV_DTYPE_F8_E4M3;
        if (dev_fp8 && (quantize || all_fp8)) {
            uint8_t *q = kv_malloc(n);
            float *rs = kv_malloc(n_rows * sizeof *rs);
            int rc = fp8_pack(ld, n_parts, names, parts, (size_t)cols, q, rs, err);
            if (rc == 0) {
                dev = be->ops->weight_upload_fp8(be, q, rs, n_rows, (size_t)cols);
                dev_bytes = n + n_rows * sizeof(float);
            }
            free(q), free(rs);
            if (rc < 0) return NULL;
        }
        if (dev) {
            /* uploaded as FP8 */
        } else if (n_parts == 1 && !any_fp8 && !quantize) {
            dev = be->ops->weight_upload(be, parts[0]->data, parts[0]->dtype, n);
        } else if (same_dtype && !any_fp8 && !quantize && be->ops->weight_upload_parts) {
            /* each part from the file mapping into its rows: no stacking copy */
            const void *srcs[3];
            size_t counts[3];
            for (int i = 0; i < n_parts; i++)
                srcs[i] = parts[i]->data, counts[i] = parts[i]->n_elems;
            dev = be->ops->weight_upload_parts(be, n_parts, srcs, counts, parts[0]->dtype);
        } else {
            /* stack on the host: raw bytes when the parts agree, else as f32 (FP8 parts
             * dequantized) */
            bool raw = same_dtype && !any_fp8 && !quantize;
            kv_dtype dt = raw ? parts[0]->dtype : KV_DTYPE_F32;
            char *at = staging_reserve(ld, n * kv_dtype_size(dt));
            for (int i = 0; i < n_parts; i++) {
                if (raw) /* several threads: see kv_memcpy_parallel */
                    kv_memcpy_parallel(at, parts[i]->data, parts[i]->n_bytes, kv_copy_threads());
                else if (parts[i]->dtype == KV_DTYPE_F8_E4M3) {
                    if (fp8_dequantize(ld, names[i], parts[i], (float *)at, NULL, err)) return NULL;
                } else
                    kv_convert_to_f32((float *)at, parts[i]->data, parts[i]->dtype,
                                      parts[i]->n_elems);
                at += parts[i]->n_elems * kv_dtype_size(dt);
            }
            if (quantize)
                fp8_quantize(ld->staging, KV_DTYPE_F32, n / (size_t)cols, (size_t)cols, NULL, NULL);
            dev = be->ops->weight_upload(be, ld->staging, dt, n);
        }
    }
    ld->done += dev_bytes;
    ld->m->weight_bytes += dev_bytes;
    if (ld->progress) ld->progress(ld->done, ld->total, ld->progress_ctx);
    return dev;
}

/* One tensor: weight_load of a single part. */
static void *weight_load1(loader *ld, const char *name, int64_t rows, int64_t cols,
                          weight_init init, kv_error *err) {
    char names[1][128];
    snprintf(names[0], sizeof names[0], "%s", name);
    return weight_load(ld, 1, names, &rows, cols, init, false, err);
}

/* Elements of every weight the model uploads (for progress). */
static size_t weight_elems(const hf_config *c, const llama_family *fam, bool tied) {
    size_t dim = (size_t)c->hidden_size, q = (size_t)c->n_heads * (size_t)c->head_dim;
    size_t qkv = q + 2 * (size_t)c->n_kv_heads * (size_t)c->head_dim;
    size_t ff = (size_t)c->intermediate_size, vocab = (size_t)c->vocab_size;
    size_t layer = (2 + (size_t)fam->extra_norms) * dim + qkv * dim + q * dim + 3 * ff * dim;
    if (c->qk_norm) layer += 2 * (size_t)c->head_dim;
    if (c->attention_bias) layer += qkv;
    if (c->attention_out_bias) layer += dim;
    return (size_t)c->n_layers * layer + vocab * dim * (tied ? 1 : 2) + dim;
}

const hf_config *llama_loader_config(const llama_loader *ld) {
    return &ld->m->cfg;
}

void *llama_load_weight(llama_loader *ld, const char *name, int64_t rows, int64_t cols,
                        kv_error *err) {
    char names[1][128];
    snprintf(names[0], sizeof names[0], "%s", name);
    return weight_load(ld, 1, names, &rows, cols, WEIGHT_RANDOM, cols > 0, err);
}

void *llama_load_stacked(llama_loader *ld, int n_parts, char names[][128], const int64_t *rows,
                         int64_t cols, kv_error *err) {
    return weight_load(ld, n_parts, names, rows, cols, WEIGHT_RANDOM, cols > 0, err);
}

void *llama_load_norm(llama_loader *ld, const char *name, int64_t dim, kv_error *err) {
    float offset = ld->m->fam->norm_offset;
    if (offset == 0 || ld->format == MODEL_LOAD_DUMMY)
        return weight_load1(ld, name, dim, 0, WEIGHT_ONES, err);
    /* w + offset in f32 (as transformers computes 1 + w), then to the weight dtype */
    const safetensors_tensor *t = tensor_find(ld, name, dim, 0, err);
    if (!t) return NULL;
    float *f = kv_malloc((size_t)dim * sizeof *f);
    kv_convert_to_f32(f, t->data, t->dtype, (size_t)dim);
    for (int64_t i = 0; i < dim; i++) f[i] += offset;
    backend *be = ld->m->be;
    void *dev = be->ops->weight_upload(be, f, KV_DTYPE_F32, (size_t)dim);
    free(f);
    size_t bytes = (size_t)dim * kv_dtype_size(be->weight_dtype);
    ld->done += bytes;
    ld->m->weight_bytes += bytes;
    if (ld->progress) ld->progress(ld->done, ld->total, ld->progress_ctx);
    return dev;
}

#define NAME(k, fmt) snprintf(n[k], sizeof n[k], "model.layers.%d." fmt, i)

int llama_load_attention(llama_loader *ld, int i, llama_layer *L, kv_error *err) {
    const hf_config *c = &ld->m->cfg;
    int64_t dim = c->hidden_size, q = (int64_t)c->n_heads * c->head_dim;
    int64_t kv = (int64_t)c->n_kv_heads * c->head_dim;
    char n[3][128];
    NAME(0, "self_attn.q_proj.weight");
    NAME(1, "self_attn.k_proj.weight");
    NAME(2, "self_attn.v_proj.weight");
    const int64_t qkv_rows[3] = {q, kv, kv};
    if (!(L->wqkv = weight_load(ld, 3, n, qkv_rows, dim, WEIGHT_RANDOM, true, err))) return -1;
    if (c->attention_bias) {
        NAME(0, "self_attn.q_proj.bias");
        NAME(1, "self_attn.k_proj.bias");
        NAME(2, "self_attn.v_proj.bias");
        if (!(L->bqkv = weight_load(ld, 3, n, qkv_rows, 0, WEIGHT_RANDOM, false, err))) return -1;
    }
    NAME(0, "self_attn.o_proj.weight");
    if (!(L->wo = weight_load(ld, 1, n, &dim, q, WEIGHT_RANDOM, true, err))) return -1;
    if (c->attention_out_bias) {
        NAME(0, "self_attn.o_proj.bias");
        if (!(L->bo = weight_load(ld, 1, n, &dim, 0, WEIGHT_RANDOM, false, err))) return -1;
    }
    return 0;
}

int llama_load_mlp(llama_loader *ld, int i, llama_layer *L, kv_error *err) {
    const hf_config *c = &ld->m->cfg;
    int64_t dim = c->hidden_size, ff = c->intermediate_size;
    char n[3][128];
    NAME(0, "mlp.gate_proj.weight");
    NAME(1, "mlp.up_proj.weight");
    const int64_t gu_rows[2] = {ff, ff};
    if (!(L->wgu = weight_load(ld, 2, n, gu_rows, dim, WEIGHT_RANDOM, true, err))) return -1;
    NAME(0, "mlp.down_proj.weight");
    if (!(L->wdown = weight_load(ld, 1, n, &dim, ff, WEIGHT_RANDOM, true, err))) return -1;
    return 0;
}

int llama_load_qk_norms(llama_loader *ld, int i, llama_layer *L, kv_error *err) {
    const hf_config *c = &ld->m->cfg;
    if (!c->qk_norm) return 0;
    char n[1][128];
    NAME(0, "self_attn.q_norm.weight");
    if (!(L->q_norm = llama_load_norm(ld, n[0], c->head_dim, err))) return -1;
    NAME(0, "self_attn.k_norm.weight");
    if (!(L->k_norm = llama_load_norm(ld, n[0], c->head_dim, err))) return -1;
    return 0;
}

/* Llama's layer: input_layernorm, attention, post_attention_layernorm (the MLP's norm), MLP. */
static int llama_layer_load(llama_loader *ld, int i, llama_layer *L, kv_error *err) {
    int64_t dim = ld->m->cfg.hidden_size;
    char n[1][128];
    NAME(0, "input_layernorm.weight");
    if (!(L->attn_norm = llama_load_norm(ld, n[0], dim, err))) return -1;
    if (llama_load_attention(ld, i, L, err) || llama_load_qk_norms(ld, i, L, err)) return -1;
    NAME(0, "post_attention_layernorm.weight");
    if (!(L->ffn_norm = llama_load_norm(ld, n[0], dim, err))) return -1;
    return llama_load_mlp(ld, i, L, err);
}
#undef NAME

/* The value of a one-element scale tensor `name`: 1 when absent, 0 with *value set when valid,
 * -1 with err set when it is not one finite positive number. */
static int scale_find(loader *ld, const char *name, float *value, kv_error *err) {
    const safetensors_tensor *t = safetensors_find(&ld->st, name);
    if (!t) return 1;
    if (t->n_elems != 1 || t->dtype == KV_DTYPE_F8_E4M3)
        return kv_error_set(err, "%s: tensor '%s' should be one F32/BF16/F16 scale, has %zu %s",
                            ld->dir, name, t->n_elems, kv_dtype_name(t->dtype));
    kv_convert_to_f32(value, t->data, t->dtype, 1);
    if (!(*value > 0 && isfinite(*value)))
        return kv_error_set(err, "%s: tensor '%s' is %g, not a positive scale", ld->dir, name,
                            (double)*value);
    return 0;
}

/* The [n_layers][k, v] scales of an F8_E4M3 KV pool (see llama_load). */
static int kv_scales_load(loader *ld, kv_error *err) {
    llama_model *m = ld->m;
    int n = m->cfg.n_layers;
    m->kv_scales = kv_malloc((size_t)n * 2 * sizeof(float));
    for (int i = 0; i < 2 * n; i++) m->kv_scales[i] = 1.0f;
    if (ld->format != MODEL_LOAD_SAFETENSORS) return 0;
    static const char *const names[][2] = {
        {"self_attn.k_scale", "self_attn.v_scale"},
        {"self_attn.kv_scale", "self_attn.kv_scale"},
        {"self_attn.k_proj.output_scale", "self_attn.v_proj.output_scale"}};
    for (int l = 0; l < n; l++)
        for (int kv = 0; kv < 2; kv++)
            for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
                char name[128];
                snprintf(name, sizeof name, "model.layers.%d.%s", l, names[k][kv]);
                int rc = scale_find(ld, name, &m->kv_scales[2 * l + kv], err);
                if (rc < 0) return -1;
                if (rc == 0) break;
            }
    return 0;
}

static void *scratch(backend *be, size_t rows, size_t cols) {
    return be->ops->dev_alloc(be, rows * cols * kv_dtype_size(be->act_dtype));
}

/* A device copy of the RoPE frequencies of one kind of layer (hf_config_rope_inv_freq_for). */
static float *inv_freq_upload(backend *be, const hf_config *c, bool local, bool long_factors) {
    size_t bytes = (size_t)c->rot_dim / 2 * sizeof(float);
    float *host = kv_malloc(bytes), *dev = be->ops->dev_alloc(be, bytes);
    hf_config_rope_inv_freq_for(c, local, long_factors, host);
    be->ops->to_dev(be, dev, host, bytes);
    free(host);
    return dev;
}

int llama_load(llama_model *m, backend *be, const char *dir, model_load_format format,
               int max_tokens, void (*progress)(size_t done, size_t total, void *ctx),
               void *progress_ctx, kv_error *err) {
    model_load_options o = {.format = format,
                            .max_tokens = max_tokens,
                            .progress = progress,
                            .progress_ctx = progress_ctx};
    return llama_load_opts(m, be, dir, &o, err);
}

int llama_load_opts(llama_model *m, backend *be, const char *dir, const model_load_options *opt,
                    kv_error *err) {
    model_load_format format = opt->format;
    int max_tokens = opt->max_tokens;
    memset(m, 0, sizeof *m);
    m->be = be;
    if (hf_config_load(&m->cfg, dir, err)) return -1;
    const hf_config *c = &m->cfg;
    if (c->n_kv_heads < 1 || c->n_heads % c->n_kv_heads != 0 || c->head_dim % 2 != 0)
        return kv_error_set(err,
                            "%s/config.json: %d attention heads, %d KV heads, head_dim %d: "
                            "heads must be a multiple of KV heads and head_dim even",
                            dir, c->n_heads, c->n_kv_heads, c->head_dim);
    if (!(m->fam = llama_family_of(c->arch)))
        return kv_error_set(err, "%s/config.json: architecture %s has no implementation", dir,
                            c->arch_name);
    KV_CHECK(max_tokens >= 1);

    loader ld = {.m = m,
                 .dir = dir,
                 .format = format,
                 .quantize_fp8 = opt->quantize_fp8,
                 .progress = opt->progress,
                 .progress_ctx = opt->progress_ctx};
    if (format == MODEL_LOAD_DUMMY)
        dummy_table_init(&ld);
    else if (safetensors_open(&ld.st, dir, err))
        return -1;
    /* An untied config without lm_head.weight is a broken checkpoint: using the embedding
     * instead would serve a different model than the one the config describes. */
    bool tied = c->tie_word_embeddings;
    if (!tied && format == MODEL_LOAD_SAFETENSORS && !safetensors_find(&ld.st, "lm_head.weight")) {
        kv_error_set(err,
                     "%s/model.safetensors: no tensor lm_head.weight, but %s/config.json has "
                     "tie_word_embeddings false (or absent); set it true if the output layer "
                     "shares the embedding",
                     dir, dir);
        safetensors_close(&ld.st);
        return -1;
    }
    ld.total = weight_elems(c, m->fam, tied) * kv_dtype_size(be->weight_dtype);
    if (be->ops->weight_upload_fp8 && (opt->quantize_fp8 || c->quant != HF_QUANT_NONE)) {
        /* projections likely kept as e4m3 (one byte); the last progress call says the truth */
        size_t d = (size_t)c->hidden_size, q = (size_t)c->n_heads * (size_t)c->head_dim;
        size_t kvd = (size_t)c->n_kv_heads * (size_t)c->head_dim, ff = (size_t)c->intermediate_size;
        size_t mats = (size_t)c->n_layers * (d * (q + 2 * kvd) + q * d + 3 * ff * d);
        ld.total -= mats * (kv_dtype_size(be->weight_dtype) - 1);
    }

    int64_t vocab = c->vocab_size, dim = c->hidden_size;
    int rc = -1;
    if (be->kv_dtype == KV_DTYPE_F8_E4M3 && kv_scales_load(&ld, err)) goto out;
    if (!(m->embed =
              weight_load1(&ld, "model.embed_tokens.weight", vocab, dim, WEIGHT_RANDOM, err)))
        goto out;
    m->layers = kv_calloc((size_t)c->n_layers, sizeof *m->layers);
    float attn_scale = hf_config_attn_scale(c);
    for (int i = 0; i < c->n_layers; i++) {
        llama_layer *L = &m->layers[i];
        if ((m->fam->layer_load ? m->fam->layer_load : llama_layer_load)(&ld, i, L, err)) goto out;
        /* a window as long as the context never bites (Phi-4-mini's 262144): left off, so the
         * backend keeps its fastest attention path */
        bool sliding = hf_config_layer_sliding(c, i);
        bool bites = sliding && c->sliding_window < c->max_position_embeddings;
        L->attn = (backend_attn_params){.scale = attn_scale,
                                        .softcap = (float)c->attn_softcap,
                                        .window = bites ? c->sliding_window : 0};
        L->rope = hf_config_layer_rope(c, i);
        L->local_rope = sliding && c->rope_local;
    }
    if (!(m->final_norm = llama_load_norm(&ld, "model.norm.weight", dim, err))) goto out;
    m->lm_head =
        tied ? m->embed : weight_load1(&ld, "lm_head.weight", vocab, dim, WEIGHT_RANDOM, err);
    if (!m->lm_head) goto out;

    m->inv_freq = inv_freq_upload(be, c, false, false);
    if (c->rope_local) m->inv_freq_local = inv_freq_upload(be, c, true, false);
    if (c->rope_type == HF_ROPE_LONGROPE) m->inv_freq_long = inv_freq_upload(be, c, false, true);

    size_t T = (size_t)max_tokens, q = (size_t)c->n_heads * (size_t)c->head_dim;
    size_t qkv = q + 2 * (size_t)c->n_kv_heads * (size_t)c->head_dim;
    size_t ff = (size_t)c->intermediate_size;
    m->max_tokens = max_tokens;
    m->x = scratch(be, T, (size_t)dim);
    m->h = scratch(be, T, (size_t)dim);
    m->qkv = scratch(be, T, qkv);
    m->att = scratch(be, T, q);
    m->o = scratch(be, T, (size_t)dim);
    m->gu = scratch(be, T, 2 * ff);
    m->ff = scratch(be, T, ff);
    m->out_x = scratch(be, T, (size_t)dim);
    m->logits = scratch(be, T < LLAMA_LOGIT_ROWS ? T : LLAMA_LOGIT_ROWS, (size_t)vocab);
    if (ld.progress && ld.done != ld.total) ld.progress(ld.done, ld.done, ld.progress_ctx);
    rc = 0;
out:
    if (format == MODEL_LOAD_SAFETENSORS) safetensors_close(&ld.st);
    free(ld.staging);
    free(ld.normal_table);
    if (rc) llama_free(m);
    return rc;
}

/* Frees each non-NULL device pointer of ptrs[n]. */
static void dev_free_all(backend *be, void *const *ptrs, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (ptrs[i]) be->ops->dev_free(be, ptrs[i]);
}

void llama_free(llama_model *m) {
    backend *be = m->be;
    if (!be) return;
    for (int i = 0; m->layers && i < m->cfg.n_layers; i++) {
        llama_layer *L = &m->layers[i];
        void *w[] = {L->attn_norm,      L->wqkv,         L->bqkv,  L->wo,     L->bo,
                     L->ffn_norm,       L->wgu,          L->wdown, L->q_norm, L->k_norm,
                     L->post_attn_norm, L->post_ffn_norm};
        dev_free_all(be, w, sizeof w / sizeof *w);
    }
    free(m->layers);
    free(m->kv_scales);
    for (int i = 0; i < LLAMA_N_GRAPHS; i++)
        if (m->graphs[i].g) be->ops->graph_free(be, m->graphs[i].g);
    void *w[] = {m->embed,
                 m->lm_head != m->embed ? m->lm_head : NULL,
                 m->final_norm,
                 m->inv_freq,
                 m->inv_freq_local,
                 m->inv_freq_long,
                 m->x,
                 m->h,
                 m->qkv,
                 m->att,
                 m->o,
                 m->gu,
                 m->ff,
                 m->out_x,
                 m->logits};
    dev_free_all(be, w, sizeof w / sizeof *w);
    memset(m, 0, sizeof *m);
}

backend_kv_layout llama_kv_layout(const llama_model *m, int block_size) {
    backend_kv_layout l = {.n_layers = m->cfg.n_layers,
                           .n_kv_heads = m->cfg.n_kv_heads,
                           .head_dim = m->cfg.head_dim,
                           .block_size = block_size,
                           .dtype = m->be->kv_dtype,
                           .kv_scales = m->kv_scales};
    backend_kv_layout_finish(&l);
    return l;
}

/* --- the forward pass: blocks the families' steps are made of --- */

void *llama_act_at(const llama_model *m, void *p, size_t elems) {
    return (char *)p + elems * kv_dtype_size(m->be->act_dtype);
}
#define act_at llama_act_at

/* The recording slot for this step, NULL when the step is not recorded: only pure decode steps
 * (every sequence one new token) whose logits fit one matmul, on backends with graph ops. A
 * slot is found by its key or, for a new key, the least recently used one is refilled. */
static llama_graph *graph_slot(llama_model *m, const backend_batch *b, void *pool,
                               const backend_kv_layout *kvl) {
    backend *be = m->be;
    if (m->no_graphs || !be->ops->graph_begin || b->n_seqs != b->n_tokens ||
        b->n_out > LLAMA_LOGIT_ROWS)
        return NULL;
    for (int s = 0; s < b->n_seqs; s++)
        if (b->seq_start[s] != s) return NULL;
    m->graph_clock++;
    llama_graph *lru = &m->graphs[0];
    for (int i = 0; i < LLAMA_N_GRAPHS; i++) {
        llama_graph *g = &m->graphs[i];
        if (g->n_tokens == b->n_tokens && g->n_out == b->n_out && g->max_blocks == b->max_blocks &&
            g->rope_long == m->rope_long && g->pool == pool && g->kvl.n_layers == kvl->n_layers &&
            g->kvl.n_kv_heads == kvl->n_kv_heads && g->kvl.head_dim == kvl->head_dim &&
            g->kvl.block_size == kvl->block_size && g->kvl.dtype == kvl->dtype &&
            g->kvl.block_bytes == kvl->block_bytes) {
            g->last_use = m->graph_clock;
            return g;
        }
        if (g->last_use < lru->last_use) lru = g;
    }
    if (lru->g) be->ops->graph_free(be, lru->g);
    memset(lru, 0, sizeof *lru);
    lru->n_tokens = b->n_tokens, lru->n_out = b->n_out, lru->max_blocks = b->max_blocks;
    lru->pool = pool, lru->kvl = *kvl, lru->rope_long = m->rope_long;
    lru->last_use = m->graph_clock;
    return lru;
}

void llama_layer_wait(llama_model *m, int l, backend_event *const *layer_ready) {
    if (layer_ready && layer_ready[l] && (l == 0 || layer_ready[l] != layer_ready[l - 1]))
        m->be->ops->event_wait(m->be, BACKEND_STREAM_COMPUTE, layer_ready[l]);
}

void llama_attention_block(llama_model *m, int l, const backend_batch *batch, void *pool,
                           const backend_kv_layout *kvl) {
    const hf_config *c = &m->cfg;
    const llama_layer *L = &m->layers[l];
    backend *be = m->be;
    const backend_ops *op = be->ops;
    int n = batch->n_tokens, dim = c->hidden_size, hd = c->head_dim;
    int q_dim = c->n_heads * hd, kv_dim = c->n_kv_heads * hd, qkv_dim = q_dim + 2 * kv_dim;
    float eps = (float)c->rms_norm_eps;
    void *k = act_at(m, m->qkv, (size_t)q_dim), *v = act_at(m, m->qkv, (size_t)(q_dim + kv_dim));
    // q, k, v projections as one matmul: rows [q | k | v]
    op->matmul(be, m->qkv, m->h, L->wqkv, L->bqkv, n, dim, qkv_dim);
    // per-head norms of q and of k (Qwen3, Gemma 3)
    if (L->q_norm) op->head_rmsnorm(be, m->qkv, n, qkv_dim, c->n_heads, hd, L->q_norm, eps);
    if (L->k_norm) op->head_rmsnorm(be, k, n, qkv_dim, c->n_kv_heads, hd, L->k_norm, eps);
    // rotary embedding of the q and k heads (adjacent in each row), with this layer's frequencies
    if (L->rope) {
        const float *inv = L->local_rope  ? m->inv_freq_local
                           : m->rope_long ? m->inv_freq_long
                                          : m->inv_freq;
        op->rope(be, m->qkv, qkv_dim, c->n_heads + c->n_kv_heads, hd, c->rot_dim, inv,
                 (float)c->rope_attention_factor);
    }
    // the new tokens' k and v into their blocks of the paged KV cache
    op->kv_write(be, pool, kvl, l, k, v, qkv_dim);
    // causal attention over each sequence's cached and new positions (its window when sliding)
    op->attention(be, m->att, m->qkv, qkv_dim, pool, kvl, l, c->n_heads, &L->attn);
    // output projection
    op->matmul(be, m->o, m->att, L->wo, L->bo, n, q_dim, dim);
}

void llama_mlp_block(llama_model *m, int l, int n) {
    const hf_config *c = &m->cfg;
    const llama_layer *L = &m->layers[l];
    backend *be = m->be;
    int dim = c->hidden_size, ff = c->intermediate_size;
    // gate and up projections as one matmul, then act(gate) * up
    be->ops->matmul(be, m->gu, m->h, L->wgu, NULL, n, dim, 2 * ff);
    if (c->act == HF_ACT_GELU_TANH)
        be->ops->geglu(be, m->ff, m->gu, n, ff);
    else
        be->ops->swiglu(be, m->ff, m->gu, n, ff);
    // down projection
    be->ops->matmul(be, m->o, m->ff, L->wdown, NULL, n, ff, dim);
}

void llama_logits_first(llama_model *m, const backend_batch *batch) {
    const hf_config *c = &m->cfg;
    backend *be = m->be;
    int dim = c->hidden_size;
    // the rows whose logits are wanted, final norm
    be->ops->gather_rows(be, m->out_x, m->x, dim);
    be->ops->rmsnorm(be, m->out_x, m->out_x, m->final_norm, batch->n_out, dim,
                     (float)c->rms_norm_eps);
    // logits of the first LLAMA_LOGIT_ROWS rows = out_x @ lm_head^T
    int rows = batch->n_out < LLAMA_LOGIT_ROWS ? batch->n_out : LLAMA_LOGIT_ROWS;
    be->ops->matmul(be, m->logits, m->out_x, m->lm_head, NULL, rows, dim, c->vocab_size);
}

/* Granite's logits_scaling (divides) and Gemma 2's final soft cap, on rows of m->logits. */
static void logits_finish(llama_model *m, int rows) {
    const hf_config *c = &m->cfg;
    backend *be = m->be;
    size_t n = (size_t)rows * (size_t)c->vocab_size;
    if (c->logits_scaling != 1.0)
        be->ops->scale(be, m->logits, n, (float)(1.0 / c->logits_scaling));
    if (c->final_softcap > 0) be->ops->softcap(be, m->logits, n, (float)c->final_softcap);
}

void llama_forward_ops(llama_model *m, const backend_batch *batch, void *pool,
                       const backend_kv_layout *kvl, backend_event *const *layer_ready) {
    const hf_config *c = &m->cfg;
    backend *be = m->be;
    const backend_ops *op = be->ops;
    int n = batch->n_tokens, dim = c->hidden_size;
    float eps = (float)c->rms_norm_eps;

    // token embeddings into the residual stream x
    op->embed(be, m->x, m->embed, dim);
    // first layer's attention norm (later layers get theirs fused with the residual add)
    op->rmsnorm(be, m->h, m->x, m->layers[0].attn_norm, n, dim, eps);
    for (int l = 0; l < c->n_layers; l++) {
        // this layer's K/V blocks still loading from the host tier: wait for them
        llama_layer_wait(m, l, layer_ready);
        llama_attention_block(m, l, batch, pool, kvl);
        // residual add, then the MLP norm
        op->add_rmsnorm(be, m->h, m->x, m->o, m->layers[l].ffn_norm, n, dim, eps);
        llama_mlp_block(m, l, n);
        // residual add, then the next layer's attention norm
        if (l + 1 < c->n_layers)
            op->add_rmsnorm(be, m->h, m->x, m->o, m->layers[l + 1].attn_norm, n, dim, eps);
        else
            op->add(be, m->x, m->o, (size_t)n * (size_t)dim);
    }
    llama_logits_first(m, batch);
}

/* The family's step, then the logits' finish (scaling, soft cap). */
static void forward_ops(llama_model *m, const backend_batch *batch, void *pool,
                        const backend_kv_layout *kvl, backend_event *const *layer_ready) {
    (m->fam->forward_ops ? m->fam->forward_ops : llama_forward_ops)(m, batch, pool, kvl,
                                                                    layer_ready);
    logits_finish(m, batch->n_out < LLAMA_LOGIT_ROWS ? batch->n_out : LLAMA_LOGIT_ROWS);
}

void llama_forward(llama_model *m, const backend_batch *batch, void *pool,
                   const backend_kv_layout *kvl, float *logits) {
    llama_forward_layers(m, batch, pool, kvl, logits, NULL);
}

void llama_forward_layers(llama_model *m, const backend_batch *batch, void *pool,
                          const backend_kv_layout *kvl, float *logits,
                          backend_event *const *layer_ready) {
    const hf_config *c = &m->cfg;
    backend *be = m->be;
    const backend_ops *op = be->ops;
    int n = batch->n_tokens, dim = c->hidden_size;
    KV_CHECK(n >= 1 && n <= m->max_tokens);
    KV_CHECK(kvl->n_layers == c->n_layers && kvl->n_kv_heads == c->n_kv_heads &&
             kvl->head_dim == c->head_dim && kvl->dtype == be->kv_dtype);
    for (int t = 0; t < n; t++) KV_CHECK(batch->tokens[t] >= 0 && batch->tokens[t] < c->vocab_size);
    /* longrope: the long factors once a sequence of the step is past the original context, as
     * transformers switches per forward call (and vLLM per batch) */
    m->rope_long = false;
    for (int s = 0; m->inv_freq_long && s < batch->n_seqs; s++)
        if (batch->seq_len[s] > c->rope_original_max_position) m->rope_long = true;

    // batch metadata (tokens, positions, block tables) to the device
    op->step_begin(be, batch);
    // the step's ops: replayed from a recording, recorded, or run one by one (a step with layer
    // waits is neither: a recording would keep waits on events of this step only)
    llama_graph *gr = layer_ready ? NULL : graph_slot(m, batch, pool, kvl);
    if (gr && gr->g && op->graph_launch(be, gr->g)) {
        m->n_graph_replays++;
    } else {
        if (gr && gr->g) { /* the backend moved a buffer the recording reads */
            op->graph_free(be, gr->g);
            gr->g = NULL;
            gr->seen = false;
        }
        bool record = gr && gr->seen && op->graph_begin(be);
        forward_ops(m, batch, pool, kvl, layer_ready);
        if (record) gr->g = op->graph_end(be);
        if (gr) gr->seen = true;
    }
    // logits to the host as f32; rows past the first LLAMA_LOGIT_ROWS one matmul at a time
    size_t vocab = (size_t)c->vocab_size;
    for (int r = 0; r < batch->n_out; r += LLAMA_LOGIT_ROWS) {
        int rows = batch->n_out - r < LLAMA_LOGIT_ROWS ? batch->n_out - r : LLAMA_LOGIT_ROWS;
        if (r > 0) {
            op->matmul(be, m->logits, act_at(m, m->out_x, (size_t)r * (size_t)dim), m->lm_head,
                       NULL, rows, dim, (int)vocab);
            logits_finish(m, rows);
        }
        op->act_download_f32(be, logits + (size_t)r * vocab, m->logits, (size_t)rows * vocab);
    }
}

/* --- the family entry (model/model.h) --- */

static void llama_ops_forward(model *mm, const backend_batch *batch, void *pool,
                              const backend_kv_layout *layout, float *logits) {
    llama_forward(mm->impl, batch, pool, layout, logits);
}

static void llama_ops_forward_layers(model *mm, const backend_batch *batch, void *pool,
                                     const backend_kv_layout *layout, float *logits,
                                     backend_event *const *layer_ready) {
    llama_forward_layers(mm->impl, batch, pool, layout, logits, layer_ready);
}

static void llama_ops_free(model *mm) {
    llama_free(mm->impl);
    free(mm->impl);
}

static const model_ops llama_model_ops = {.forward = llama_ops_forward,
                                          .forward_layers = llama_ops_forward_layers,
                                          .free = llama_ops_free};

int llama_model_open(model *out, const char *dir, backend *be, const model_load_options *opt,
                     kv_error *err) {
    llama_model *m = kv_calloc(1, sizeof *m);
    if (llama_load_opts(m, be, dir, opt, err)) {
        free(m);
        return -1;
    }
    out->ops = &llama_model_ops;
    out->impl = m;
    out->weight_bytes = m->weight_bytes;
    out->kv_scales = m->kv_scales;
    return 0;
}

/* Llama, Mistral, Qwen2 and SmolLM3 (its layers without RoPE are config data, layer.rope). */
const llama_family llama_default_family = {.name = "llama"};

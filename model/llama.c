/* The Llama-family model: loads weights (safetensors, or random ones for benchmarks) onto a
 * backend, stacking q/k/v and gate/up so each is one matmul, and runs the forward pass as a list
 * of backend ops. The KV pool and the block tables belong to the caller. */
#include "model/llama.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "model/safetensors.h"

/* Rows of logits computed per matmul: bounds the logits scratch (rows × vocab). */
#define LLAMA_LOGIT_ROWS 256
/* Elements generated per host chunk by the dummy loader. */
#define LLAMA_DUMMY_CHUNK ((size_t)1 << 22)
/* Standard deviation of dummy weights (the usual initializer_range). */
#define LLAMA_DUMMY_STD 0.02

/* --- loading --- */

typedef enum weight_init { WEIGHT_RANDOM, WEIGHT_ONES } weight_init;

typedef struct loader {
    llama_model *m;
    const char *dir;
    model_load_format format;
    safetensors_model st;
    void *staging; /* host bytes for stacking, staging_cap bytes */
    size_t staging_cap;
    bool quantize_fp8;  /* the quantization: fp8 knob (fp8_quantize_rows) */
    size_t done, total; /* device bytes uploaded / to upload */
    void (*progress)(size_t done, size_t total, void *ctx);
    void *progress_ctx;
    /* dummy weights: 65536 samples of N(0, std) in the weight dtype, indexed by random bits */
    void *normal_table;
    uint64_t rng;
} loader;

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

/* A device tensor of n weight-dtype elements of random values (or ones), generated in host
 * chunks directly in the weight dtype. */
static void *weight_dummy(loader *ld, size_t n, weight_init init) {
    backend *be = ld->m->be;
    kv_dtype dt = be->weight_dtype;
    size_t es = kv_dtype_size(dt), chunk = n < LLAMA_DUMMY_CHUNK ? n : LLAMA_DUMMY_CHUNK;
    char *dev = be->ops->dev_alloc(be, n * es);
    if (chunk * es > ld->staging_cap) {
        free(ld->staging);
        ld->staging = kv_malloc(chunk * es);
        ld->staging_cap = chunk * es;
    }
    for (size_t off = 0; off < n; off += chunk) {
        size_t len = n - off < chunk ? n - off : chunk;
        if (init == WEIGHT_ONES) {
            for (size_t i = 0; i < len; i++) store_as(ld->staging, dt, i, 1.0f);
        } else if (es == 2) {
            dummy_fill_u16(ld->staging, ld->normal_table, len, &ld->rng);
        } else {
            dummy_fill_f32(ld->staging, ld->normal_table, len, &ld->rng);
        }
        be->ops->to_dev(be, dev + off * es, ld->staging, len * es);
    }
    return dev;
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

/* The `quantization: fp8` knob on a weight that is not FP8 in the checkpoint: each row of w
 * [rows, cols] becomes e4m3(w / s) * s with s = max |row| / 448 (per output channel, as vLLM's
 * online FP8), in place. The backends have no FP8 GEMM yet, so the values are kept in f32 /
 * bf16: the accuracy of FP8 weights, not yet their bytes. */
static void fp8_quantize_rows(float *w, size_t rows, size_t cols) {
    for (size_t r = 0; r < rows; r++) {
        float *row = w + r * cols, mx = 0;
        for (size_t k = 0; k < cols; k++) mx = fmaxf(mx, fabsf(row[k]));
        if (mx == 0) continue;
        float s = mx / 448.0f;
        for (size_t k = 0; k < cols; k++) row[k] = kv_e4m3_to_f32(kv_f32_to_e4m3(row[k] / s)) * s;
    }
}

/* Per-row e4m3 of w [rows, cols] (f32): q[r, :] = e4m3(w[r, :] / s[r]), s[r] = max |row| / 448
 * (1 for a zero row), as fp8_quantize_rows. */
static void fp8_quantize_to(const float *w, size_t rows, size_t cols, uint8_t *q, float *s) {
    for (size_t r = 0; r < rows; r++) {
        const float *row = w + r * cols;
        float mx = 0;
        for (size_t k = 0; k < cols; k++) mx = fmaxf(mx, fabsf(row[k]));
        s[r] = mx > 0 ? mx / 448.0f : 1.0f;
        for (size_t k = 0; k < cols; k++) q[r * cols + k] = kv_f32_to_e4m3(row[k] / s[r]);
    }
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
            float *f = kv_malloc(t->n_elems * sizeof *f);
            kv_convert_to_f32(f, t->data, t->dtype, t->n_elems);
            fp8_quantize_to(f, rows, cols, q, rs);
            free(f);
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
        float *f = kv_malloc(n * sizeof *f);
        if (kv_dtype_size(dt) == 2)
            dummy_fill_u16(raw, ld->normal_table, n, &ld->rng);
        else
            dummy_fill_f32(raw, ld->normal_table, n, &ld->rng);
        kv_convert_to_f32(f, raw, dt, n);
        uint8_t *q = kv_malloc(n);
        float *rs = kv_malloc(n_rows * sizeof *rs);
        fp8_quantize_to(f, n_rows, (size_t)cols, q, rs);
        dev = be->ops->weight_upload_fp8(be, q, rs, n_rows, (size_t)cols);
        dev_bytes = n + n_rows * sizeof(float);
        free(raw), free(f), free(q), free(rs);
    } else if (ld->format == MODEL_LOAD_DUMMY) {
        dev = weight_dummy(ld, n, init);
    } else {
        const safetensors_tensor *parts[3];
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
        } else {
            /* stack on the host: raw bytes when the parts agree, else as f32 (FP8 parts
             * dequantized) */
            kv_dtype dt = same_dtype && !any_fp8 && !quantize ? parts[0]->dtype : KV_DTYPE_F32;
            char *at = staging_reserve(ld, n * kv_dtype_size(dt));
            for (int i = 0; i < n_parts; i++) {
                if (dt != KV_DTYPE_F32)
                    memcpy(at, parts[i]->data, parts[i]->n_bytes);
                else if (parts[i]->dtype == KV_DTYPE_F8_E4M3) {
                    if (fp8_dequantize(ld, names[i], parts[i], (float *)at, NULL, err)) return NULL;
                } else
                    kv_convert_to_f32((float *)at, parts[i]->data, parts[i]->dtype,
                                      parts[i]->n_elems);
                at += parts[i]->n_elems * kv_dtype_size(dt);
            }
            if (quantize) fp8_quantize_rows(ld->staging, n / (size_t)cols, (size_t)cols);
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
static size_t weight_elems(const hf_config *c, bool tied) {
    size_t dim = (size_t)c->hidden_size, q = (size_t)c->n_heads * (size_t)c->head_dim;
    size_t qkv = q + 2 * (size_t)c->n_kv_heads * (size_t)c->head_dim;
    size_t ff = (size_t)c->intermediate_size, vocab = (size_t)c->vocab_size;
    size_t layer = 2 * dim + qkv * dim + q * dim + 3 * ff * dim;
    if (c->attention_bias) layer += qkv;
    if (c->attention_out_bias) layer += dim;
    return (size_t)c->n_layers * layer + vocab * dim * (tied ? 1 : 2) + dim;
}

static int layer_load(loader *ld, int i, llama_layer *L, kv_error *err) {
    const hf_config *c = &ld->m->cfg;
    int64_t dim = c->hidden_size, q = (int64_t)c->n_heads * c->head_dim;
    int64_t kv = (int64_t)c->n_kv_heads * c->head_dim, ff = c->intermediate_size;
    char n[3][128];
#define NAME(k, fmt) snprintf(n[k], sizeof n[k], "model.layers.%d." fmt, i)
    NAME(0, "input_layernorm.weight");
    if (!(L->attn_norm = weight_load(ld, 1, n, &dim, 0, WEIGHT_ONES, false, err))) return -1;
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
    NAME(0, "post_attention_layernorm.weight");
    if (!(L->ffn_norm = weight_load(ld, 1, n, &dim, 0, WEIGHT_ONES, false, err))) return -1;
    NAME(0, "mlp.gate_proj.weight");
    NAME(1, "mlp.up_proj.weight");
    const int64_t gu_rows[2] = {ff, ff};
    if (!(L->wgu = weight_load(ld, 2, n, gu_rows, dim, WEIGHT_RANDOM, true, err))) return -1;
    NAME(0, "mlp.down_proj.weight");
    if (!(L->wdown = weight_load(ld, 1, n, &dim, ff, WEIGHT_RANDOM, true, err))) return -1;
#undef NAME
    return 0;
}

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
    ld.total = weight_elems(c, tied) * kv_dtype_size(be->weight_dtype);
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
    for (int i = 0; i < c->n_layers; i++)
        if (layer_load(&ld, i, &m->layers[i], err)) goto out;
    if (!(m->final_norm = weight_load1(&ld, "model.norm.weight", dim, 0, WEIGHT_ONES, err)))
        goto out;
    m->lm_head =
        tied ? m->embed : weight_load1(&ld, "lm_head.weight", vocab, dim, WEIGHT_RANDOM, err);
    if (!m->lm_head) goto out;

    float *inv_freq = kv_malloc((size_t)c->head_dim / 2 * sizeof(float));
    hf_config_rope_inv_freq(c, inv_freq);
    m->inv_freq = be->ops->dev_alloc(be, (size_t)c->head_dim / 2 * sizeof(float));
    be->ops->to_dev(be, m->inv_freq, inv_freq, (size_t)c->head_dim / 2 * sizeof(float));
    free(inv_freq);

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
        void *w[] = {L->attn_norm, L->wqkv, L->bqkv, L->wo, L->bo, L->ffn_norm, L->wgu, L->wdown};
        dev_free_all(be, w, sizeof w / sizeof *w);
    }
    free(m->layers);
    free(m->kv_scales);
    for (int i = 0; i < LLAMA_N_GRAPHS; i++)
        if (m->graphs[i].g) be->ops->graph_free(be, m->graphs[i].g);
    void *w[] = {m->embed,      m->lm_head != m->embed ? m->lm_head : NULL,
                 m->final_norm, m->inv_freq,
                 m->x,          m->h,
                 m->qkv,        m->att,
                 m->o,          m->gu,
                 m->ff,         m->out_x,
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

/* --- the forward pass --- */

/* Device pointer `elems` activations past p. */
static void *act_at(const llama_model *m, void *p, size_t elems) {
    return (char *)p + elems * kv_dtype_size(m->be->act_dtype);
}

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
            g->pool == pool && g->kvl.n_layers == kvl->n_layers &&
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
    lru->pool = pool, lru->kvl = *kvl;
    lru->last_use = m->graph_clock;
    return lru;
}

/* Every op of a step from the embeddings to the logits of out rows [0, min(n_out,
 * LLAMA_LOGIT_ROWS)) in m->logits (device); llama_forward downloads them. layer_ready: see
 * llama_forward_layers (NULL: none). */
static void forward_ops(llama_model *m, const backend_batch *batch, void *pool,
                        const backend_kv_layout *kvl, backend_event *const *layer_ready) {
    const hf_config *c = &m->cfg;
    backend *be = m->be;
    const backend_ops *op = be->ops;
    int n = batch->n_tokens, dim = c->hidden_size, hd = c->head_dim, ff = c->intermediate_size;
    int q_dim = c->n_heads * hd, kv_dim = c->n_kv_heads * hd, qkv_dim = q_dim + 2 * kv_dim;
    float eps = (float)c->rms_norm_eps, scale = 1.0f / sqrtf((float)hd);
    void *k = act_at(m, m->qkv, (size_t)q_dim), *v = act_at(m, m->qkv, (size_t)(q_dim + kv_dim));

    // token embeddings into the residual stream x
    op->embed(be, m->x, m->embed, dim);
    // first layer's attention norm (later layers get theirs fused with the residual add)
    op->rmsnorm(be, m->h, m->x, m->layers[0].attn_norm, n, dim, eps);
    for (int l = 0; l < c->n_layers; l++) {
        const llama_layer *L = &m->layers[l];
        // this layer's K/V blocks still loading from the host tier: wait for them (once a group)
        if (layer_ready && layer_ready[l] && (l == 0 || layer_ready[l] != layer_ready[l - 1]))
            op->event_wait(be, BACKEND_STREAM_COMPUTE, layer_ready[l]);
        // q, k, v projections as one matmul: rows [q | k | v]
        op->matmul(be, m->qkv, m->h, L->wqkv, L->bqkv, n, dim, qkv_dim);
        // rotary embedding of the q and k heads (adjacent in each row)
        op->rope(be, m->qkv, qkv_dim, c->n_heads + c->n_kv_heads, hd, m->inv_freq);
        // the new tokens' k and v into their blocks of the paged KV cache
        op->kv_write(be, pool, kvl, l, k, v, qkv_dim);
        // causal attention over each sequence's cached and new positions
        op->attention(be, m->att, m->qkv, qkv_dim, pool, kvl, l, c->n_heads, scale);
        // output projection
        op->matmul(be, m->o, m->att, L->wo, L->bo, n, q_dim, dim);
        // residual add, then the MLP norm
        op->add_rmsnorm(be, m->h, m->x, m->o, L->ffn_norm, n, dim, eps);
        // gate and up projections as one matmul, then silu(gate) * up
        op->matmul(be, m->gu, m->h, L->wgu, NULL, n, dim, 2 * ff);
        op->swiglu(be, m->ff, m->gu, n, ff);
        // down projection
        op->matmul(be, m->o, m->ff, L->wdown, NULL, n, ff, dim);
        // residual add, then the next layer's attention norm
        if (l + 1 < c->n_layers)
            op->add_rmsnorm(be, m->h, m->x, m->o, m->layers[l + 1].attn_norm, n, dim, eps);
        else
            op->add(be, m->x, m->o, (size_t)n * (size_t)dim);
    }
    // the rows whose logits are wanted, final norm
    op->gather_rows(be, m->out_x, m->x, dim);
    op->rmsnorm(be, m->out_x, m->out_x, m->final_norm, batch->n_out, dim, eps);
    // logits of the first LLAMA_LOGIT_ROWS rows = out_x @ lm_head^T
    int rows = batch->n_out < LLAMA_LOGIT_ROWS ? batch->n_out : LLAMA_LOGIT_ROWS;
    op->matmul(be, m->logits, m->out_x, m->lm_head, NULL, rows, dim, c->vocab_size);
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
        if (r > 0)
            op->matmul(be, m->logits, act_at(m, m->out_x, (size_t)r * (size_t)dim), m->lm_head,
                       NULL, rows, dim, (int)vocab);
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

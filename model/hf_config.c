/* config.json + generation_config.json of a decoder-only model directory into one hf_config.
 * Reads both dialects (Hub: rope_theta/rope_scaling/torch_dtype; transformers >= 5:
 * rope_parameters/dtype/layer_types). Every rejection names the field and its value. */
#include "model/hf_config.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define CONFIG_MAX_FILE_BYTES (16u << 20)

/* Where a field came from, for messages: "config.json: rope_scaling.factor ...". */
typedef struct field_ctx {
    const char *file;   /* "config.json" or "generation_config.json" */
    const char *prefix; /* "" or "rope_scaling." */
    kv_error *err;
} field_ctx;

static bool json_absent(const json_t *v) {
    return v == NULL || json_is_null(v);
}

/* Integer field in [min, max]; integral reals (8192.0) count as integers. Absent or null gives
 * def, unless required. */
static int field_int(const field_ctx *fc, const json_t *obj, const char *key, bool required,
                     long long def, long long min, long long max, long long *out) {
    const json_t *v = json_object_get(obj, key);
    if (json_absent(v)) {
        if (required) return kv_error_set(fc->err, "%s: missing %s%s", fc->file, fc->prefix, key);
        *out = def;
        return 0;
    }
    long long x;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
               fabs(json_real_value(v)) < 9e15) {
        x = (long long)json_real_value(v);
    } else {
        return kv_error_set(fc->err, "%s: %s%s must be an integer", fc->file, fc->prefix, key);
    }
    if (x < min || x > max)
        return kv_error_set(fc->err, "%s: %s%s = %lld is out of range [%lld, %lld]", fc->file,
                            fc->prefix, key, x, min, max);
    *out = x;
    return 0;
}

static int field_int32(const field_ctx *fc, const json_t *obj, const char *key, bool required,
                       int def, int min, int max, int *out) {
    long long x;
    if (field_int(fc, obj, key, required, def, min, max, &x)) return -1;
    *out = (int)x;
    return 0;
}

/* Finite number strictly greater than `above`. */
static int field_number(const field_ctx *fc, const json_t *obj, const char *key, bool required,
                        double def, double above, double *out) {
    const json_t *v = json_object_get(obj, key);
    if (json_absent(v)) {
        if (required) return kv_error_set(fc->err, "%s: missing %s%s", fc->file, fc->prefix, key);
        *out = def;
        return 0;
    }
    if (!json_is_number(v))
        return kv_error_set(fc->err, "%s: %s%s must be a number", fc->file, fc->prefix, key);
    double x = json_number_value(v);
    if (!isfinite(x) || !(x > above))
        return kv_error_set(fc->err, "%s: %s%s = %g must be greater than %g", fc->file, fc->prefix,
                            key, x, above);
    *out = x;
    return 0;
}

static int field_bool(const field_ctx *fc, const json_t *obj, const char *key, bool def,
                      bool *out) {
    const json_t *v = json_object_get(obj, key);
    if (json_absent(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v))
        return kv_error_set(fc->err, "%s: %s%s must be true or false", fc->file, fc->prefix, key);
    *out = json_is_true(v);
    return 0;
}

/* String field or NULL when absent/null. */
static int field_string(const field_ctx *fc, const json_t *obj, const char *key, const char **out) {
    const json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (json_absent(v)) return 0;
    if (!json_is_string(v))
        return kv_error_set(fc->err, "%s: %s%s must be a string", fc->file, fc->prefix, key);
    *out = json_string_value(v);
    return 0;
}

static int copy_name(const field_ctx *fc, char *dst, size_t cap, const char *src, const char *key) {
    size_t n = strlen(src);
    if (n >= cap) return kv_error_set(fc->err, "%s: %s '%.40s...' is too long", fc->file, key, src);
    memcpy(dst, src, n + 1);
    return 0;
}

static const struct {
    const char *arch_name;
    const char *model_type;
    hf_arch arch;
    int default_max_position; /* the transformers config class defaults */
} arch_table[] = {
    {"LlamaForCausalLM", "llama", HF_ARCH_LLAMA, 2048},
    {"MistralForCausalLM", "mistral", HF_ARCH_MISTRAL, 4096 * 32},
    {"Qwen2ForCausalLM", "qwen2", HF_ARCH_QWEN2, 32768},
    {"Qwen3ForCausalLM", "qwen3", HF_ARCH_QWEN3, 32768},
    {"Gemma2ForCausalLM", "gemma2", HF_ARCH_GEMMA2, 8192},
    {"Gemma3ForCausalLM", "gemma3_text", HF_ARCH_GEMMA3, 131072},
    {"Phi3ForCausalLM", "phi3", HF_ARCH_PHI3, 4096},
    {"GraniteForCausalLM", "granite", HF_ARCH_GRANITE, 2048},
    {"SmolLM3ForCausalLM", "smollm3", HF_ARCH_SMOLLM3, 32768},
};
#define SUPPORTED_ARCHS                                                                            \
    "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, "                   \
    "Gemma2ForCausalLM, Gemma3ForCausalLM, Phi3ForCausalLM, GraniteForCausalLM, "                  \
    "SmolLM3ForCausalLM"
#define N_ARCHS (int)(sizeof arch_table / sizeof arch_table[0])

/* architectures[0], else model_type. */
static int parse_arch(hf_config *cfg, const json_t *root, const field_ctx *fc, int *arch_index) {
    const char *model_type;
    if (field_string(fc, root, "model_type", &model_type)) return -1;
    const json_t *archs = json_object_get(root, "architectures");
    const char *name = NULL;
    if (!json_absent(archs)) {
        if (!json_is_array(archs) || json_array_size(archs) == 0 ||
            !json_is_string(json_array_get(archs, 0)))
            return kv_error_set(fc->err, "%s: architectures must be a non-empty list of strings",
                                fc->file);
        name = json_string_value(json_array_get(archs, 0));
    }
    for (int i = 0; i < N_ARCHS; i++) {
        bool match = name ? strcmp(name, arch_table[i].arch_name) == 0
                          : model_type && strcmp(model_type, arch_table[i].model_type) == 0;
        if (!match) continue;
        cfg->arch = arch_table[i].arch;
        *arch_index = i;
        if (copy_name(fc, cfg->arch_name, sizeof cfg->arch_name, arch_table[i].arch_name,
                      "architectures[0]"))
            return -1;
        return copy_name(fc, cfg->model_type, sizeof cfg->model_type,
                         model_type ? model_type : arch_table[i].model_type, "model_type");
    }
    if (name)
        return kv_error_set(
            fc->err, "%s: architecture '%.100s' is not supported (supported: " SUPPORTED_ARCHS ")",
            fc->file, name);
    if (model_type)
        return kv_error_set(fc->err,
                            "%s: model_type '%.100s' is not supported (supported: llama, "
                            "mistral, qwen2, qwen3, gemma2, gemma3_text, phi3, granite, smollm3)",
                            fc->file, model_type);
    return kv_error_set(fc->err, "%s: missing architectures and model_type", fc->file);
}

static int parse_shape(hf_config *cfg, const json_t *root, const field_ctx *fc) {
    if (field_int32(fc, root, "hidden_size", true, 0, 1, 1 << 20, &cfg->hidden_size) ||
        field_int32(fc, root, "num_hidden_layers", true, 0, 1, 4096, &cfg->n_layers) ||
        field_int32(fc, root, "num_attention_heads", true, 0, 1, 1 << 14, &cfg->n_heads) ||
        field_int32(fc, root, "num_key_value_heads", false, cfg->n_heads, 1, 1 << 14,
                    &cfg->n_kv_heads) ||
        field_int32(fc, root, "intermediate_size", true, 0, 1, 1 << 24, &cfg->intermediate_size) ||
        field_int32(fc, root, "vocab_size", true, 0, 1, 1 << 26, &cfg->vocab_size))
        return -1;
    if (cfg->n_heads % cfg->n_kv_heads != 0)
        return kv_error_set(fc->err,
                            "%s: num_attention_heads %d is not a multiple of "
                            "num_key_value_heads %d",
                            fc->file, cfg->n_heads, cfg->n_kv_heads);
    const json_t *hd = json_object_get(root, "head_dim");
    if (json_absent(hd) && cfg->hidden_size % cfg->n_heads != 0)
        return kv_error_set(fc->err,
                            "%s: hidden_size %d is not a multiple of num_attention_heads %d and "
                            "there is no head_dim",
                            fc->file, cfg->hidden_size, cfg->n_heads);
    if (field_int32(fc, root, "head_dim", false, cfg->hidden_size / cfg->n_heads, 2, 1 << 14,
                    &cfg->head_dim))
        return -1;
    if (cfg->head_dim % 2 != 0)
        return kv_error_set(fc->err, "%s: head_dim %d must be even for RoPE", fc->file,
                            cfg->head_dim);
    return 0;
}

/* A number that the family defaults to def when absent; null means "off" (0). */
static int field_opt_number(const field_ctx *fc, const json_t *obj, const char *key, double def,
                            double *out) {
    const json_t *v = json_object_get(obj, key);
    if (v && json_is_null(v)) {
        *out = 0;
        return 0;
    }
    return field_number(fc, obj, key, false, def, 0.0, out);
}

/* longrope's short_factor / long_factor: rot_dim / 2 positive numbers. */
static int parse_rope_factors(hf_config *cfg, const json_t *scaling, const field_ctx *sub,
                              const char *key, double *out) {
    const json_t *a = json_object_get(scaling, key);
    int want = cfg->rot_dim / 2;
    if (!json_is_array(a))
        return kv_error_set(sub->err, "%s: %s%s must be a list of numbers", sub->file, sub->prefix,
                            key);
    if ((int)json_array_size(a) != want)
        return kv_error_set(sub->err, "%s: %s%s has %zu entries, the rotary dims need %d",
                            sub->file, sub->prefix, key, json_array_size(a), want);
    if (want > HF_CONFIG_MAX_ROPE_FACTORS)
        return kv_error_set(sub->err, "%s: %s%s: more than %d factors are not supported", sub->file,
                            sub->prefix, key, HF_CONFIG_MAX_ROPE_FACTORS);
    for (int i = 0; i < want; i++) {
        const json_t *v = json_array_get(a, (size_t)i);
        if (!json_is_number(v) || !(json_number_value(v) >= 0.01) ||
            !isfinite(json_number_value(v)))
            return kv_error_set(sub->err, "%s: %s%s[%d] must be a number >= 0.01", sub->file,
                                sub->prefix, key, i);
        out[i] = json_number_value(v);
    }
    cfg->n_rope_factors = want;
    return 0;
}

/* The sliding layers' own RoPE (Gemma 3): rope_parameters.sliding_attention (v5) or
 * rope_local_base_freq (Hub), default type only. */
static int parse_rope_local(hf_config *cfg, const json_t *root, const json_t *local,
                            const field_ctx *fc) {
    cfg->rope_local = true;
    if (json_absent(local))
        return field_number(fc, root, "rope_local_base_freq", false, 10000.0, 1.0,
                            &cfg->rope_local_theta);
    field_ctx sub = *fc;
    sub.prefix = "rope_parameters.sliding_attention.";
    if (!json_is_object(local))
        return kv_error_set(fc->err, "%s: rope_parameters.sliding_attention must be an object",
                            fc->file);
    const char *type;
    if (field_string(&sub, local, "rope_type", &type)) return -1;
    if (type && strcmp(type, "default") != 0)
        return kv_error_set(fc->err, "%s: %srope_type '%.64s' is not supported (only default)",
                            fc->file, sub.prefix, type);
    return field_number(&sub, local, "rope_theta", false, 10000.0, 1.0, &cfg->rope_local_theta);
}

/* The rope dict: rope_parameters (v5; possibly keyed by layer type) or rope_scaling (Hub), the
 * rotary dims (partial_rotary_factor) and the sliding layers' own RoPE. */
static int parse_rope(hf_config *cfg, const json_t *root, const field_ctx *fc) {
    field_ctx sub = *fc;
    const json_t *params = json_object_get(root, "rope_parameters");
    const json_t *scaling = NULL, *local = NULL;
    double root_theta;
    if (field_number(fc, root, "rope_theta", false, 10000.0, 1.0, &root_theta)) return -1;
    if (!json_absent(params)) {
        if (!json_is_object(params))
            return kv_error_set(fc->err, "%s: rope_parameters must be an object", fc->file);
        const json_t *full = json_object_get(params, "full_attention");
        if (json_is_object(full) && !json_object_get(params, "rope_type")) {
            local = json_object_get(params, "sliding_attention");
            params = full;
            sub.prefix = "rope_parameters.full_attention.";
        } else {
            sub.prefix = "rope_parameters.";
        }
        scaling = params;
        if (field_number(&sub, params, "rope_theta", false, root_theta, 1.0, &cfg->rope_theta))
            return -1;
    } else {
        cfg->rope_theta = root_theta;
        scaling = json_object_get(root, "rope_scaling");
        if (json_absent(scaling))
            scaling = NULL;
        else if (!json_is_object(scaling))
            return kv_error_set(fc->err, "%s: rope_scaling must be an object or null", fc->file);
        sub.prefix = "rope_scaling.";
    }
    cfg->rope_type = HF_ROPE_DEFAULT;
    cfg->rope_factor = 1.0;
    cfg->rope_low_freq_factor = 1.0;
    cfg->rope_high_freq_factor = 1.0;
    cfg->rope_attention_factor = 1.0;
    if (field_int32(fc, root, "original_max_position_embeddings", false,
                    cfg->max_position_embeddings, 1, INT_MAX, &cfg->rope_original_max_position))
        return -1;

    /* partial rotary: the rope dict's factor (v5 may move it there), else the root's */
    double prf;
    bool in_dict = scaling && !json_absent(json_object_get(scaling, "partial_rotary_factor"));
    if (field_number(in_dict ? &sub : fc, in_dict ? scaling : root, "partial_rotary_factor", false,
                     1.0, 0.0, &prf))
        return -1;
    cfg->rot_dim = (int)(cfg->head_dim * prf);
    if (prf > 1.0 || cfg->rot_dim < 2 || cfg->rot_dim % 2 != 0)
        return kv_error_set(fc->err,
                            "%s: partial_rotary_factor %g gives %d rotary dims of head_dim %d "
                            "(must be even, at least 2, at most head_dim)",
                            fc->file, prf, cfg->rot_dim, cfg->head_dim);
    if (cfg->arch == HF_ARCH_GEMMA3 && parse_rope_local(cfg, root, local, fc)) return -1;
    if (!scaling) return 0;

    const char *type, *key = "rope_type";
    if (field_string(&sub, scaling, "rope_type", &type)) return -1;
    if (!type) {
        key = "type";
        if (field_string(&sub, scaling, "type", &type)) return -1;
    }
    if (!type && params) type = "default"; /* v5 writes rope_type, but be lenient */
    if (!type) return kv_error_set(fc->err, "%s: %srope_type is missing", fc->file, sub.prefix);
    if (strcmp(type, "default") == 0) return 0;
    if (strcmp(type, "linear") == 0) {
        cfg->rope_type = HF_ROPE_LINEAR;
        if (field_number(&sub, scaling, "factor", true, 0, 0.0, &cfg->rope_factor)) return -1;
        if (cfg->rope_factor < 1.0)
            return kv_error_set(fc->err, "%s: %sfactor = %g must be >= 1", fc->file, sub.prefix,
                                cfg->rope_factor);
        return 0;
    }
    if (strcmp(type, "longrope") == 0) {
        cfg->rope_type = HF_ROPE_LONGROPE;
        double factor, attention;
        if (field_int32(&sub, scaling, "original_max_position_embeddings", false,
                        cfg->rope_original_max_position, 1, INT_MAX,
                        &cfg->rope_original_max_position) ||
            parse_rope_factors(cfg, scaling, &sub, "short_factor", cfg->rope_short_factor) ||
            parse_rope_factors(cfg, scaling, &sub, "long_factor", cfg->rope_long_factor) ||
            field_number(&sub, scaling, "factor", false,
                         (double)cfg->max_position_embeddings / cfg->rope_original_max_position,
                         0.0, &factor))
            return -1;
        /* transformers' _compute_longrope_parameters: the paper's attention factor */
        double def =
            factor <= 1.0 ? 1.0 : sqrt(1.0 + log(factor) / log(cfg->rope_original_max_position));
        if (field_number(&sub, scaling, "attention_factor", false, def, 0.0, &attention)) return -1;
        cfg->rope_factor = factor;
        cfg->rope_attention_factor = attention;
        return 0;
    }
    if (strcmp(type, "llama3") != 0)
        return kv_error_set(
            fc->err,
            "%s: %s%s '%.64s' is not supported (supported: default, linear, llama3, "
            "longrope)",
            fc->file, sub.prefix, key, type);
    cfg->rope_type = HF_ROPE_LLAMA3;
    if (field_number(&sub, scaling, "factor", true, 0, 0.0, &cfg->rope_factor) ||
        field_number(&sub, scaling, "low_freq_factor", true, 0, 0.0, &cfg->rope_low_freq_factor) ||
        field_number(&sub, scaling, "high_freq_factor", true, 0, 0.0,
                     &cfg->rope_high_freq_factor) ||
        field_int32(&sub, scaling, "original_max_position_embeddings", true, 0, 1, INT_MAX,
                    &cfg->rope_original_max_position))
        return -1;
    if (cfg->rope_factor < 1.0)
        return kv_error_set(fc->err, "%s: %sfactor = %g must be >= 1", fc->file, sub.prefix,
                            cfg->rope_factor);
    if (!(cfg->rope_high_freq_factor > cfg->rope_low_freq_factor))
        return kv_error_set(
            fc->err, "%s: %shigh_freq_factor %g must be greater than low_freq_factor %g", fc->file,
            sub.prefix, cfg->rope_high_freq_factor, cfg->rope_low_freq_factor);
    return 0;
}

static void bit_set(uint8_t *bits, int i) {
    bits[i / 8] |= (uint8_t)(1u << (i % 8));
}

/* Which layers slide: layer_types when given (full_attention | sliding_attention; anything else
 * is a hybrid model), else the family's default as transformers' config classes set it.
 * Fills sliding_window (0 when no layer slides) and layer_sliding. */
static int parse_attention_kinds(hf_config *cfg, const json_t *root, const field_ctx *fc) {
    long long window;
    if (field_int(fc, root, "sliding_window", false, 0, 0, INT_MAX, &window)) return -1;
    int n = cfg->n_layers, n_sliding = 0;
    const json_t *types = json_object_get(root, "layer_types");
    if (!json_absent(types)) {
        if (!json_is_array(types))
            return kv_error_set(fc->err, "%s: layer_types must be a list", fc->file);
        if ((int)json_array_size(types) != n)
            return kv_error_set(fc->err, "%s: layer_types has %zu entries for %d layers", fc->file,
                                json_array_size(types), n);
        for (int i = 0; i < n; i++) {
            const json_t *t = json_array_get(types, (size_t)i);
            if (!json_is_string(t))
                return kv_error_set(fc->err, "%s: layer_types[%d] must be a string", fc->file, i);
            if (strcmp(json_string_value(t), "sliding_attention") == 0) {
                bit_set(cfg->layer_sliding, i);
                n_sliding++;
            } else if (strcmp(json_string_value(t), "full_attention") != 0) {
                return kv_error_set(fc->err,
                                    "%s: layer_types[%d] '%.64s': hybrid attention is not "
                                    "supported (only full_attention and sliding_attention)",
                                    fc->file, i, json_string_value(t));
            }
        }
    } else {
        bool use = true;
        int from = 0, pattern = 0; /* sliding: layers >= from; with pattern, (i + 1) % pattern */
        switch (cfg->arch) {
        case HF_ARCH_QWEN2:
        case HF_ARCH_QWEN3:
        case HF_ARCH_SMOLLM3:
            if (field_bool(fc, root, "use_sliding_window", false, &use) ||
                field_int32(fc, root, "max_window_layers", false, 28, 0, INT_MAX, &from))
                return -1;
            break;
        case HF_ARCH_GEMMA2:
            pattern = 2;
            break;
        case HF_ARCH_GEMMA3: {
            const char *key = json_object_get(root, "sliding_window_pattern")
                                  ? "sliding_window_pattern"
                                  : "_sliding_window_pattern";
            if (field_int32(fc, root, key, false, 6, 1, INT_MAX, &pattern)) return -1;
            break;
        }
        case HF_ARCH_MISTRAL:
        case HF_ARCH_PHI3:
            break;
        default:
            use = false; /* Llama, Granite: no window */
        }
        for (int i = 0; use && window > 0 && i < n; i++)
            if (i >= from && (pattern == 0 || (i + 1) % pattern != 0)) {
                bit_set(cfg->layer_sliding, i);
                n_sliding++;
            }
    }
    if (n_sliding && window <= 0)
        return kv_error_set(fc->err,
                            "%s: layer_types has sliding_attention layers but sliding_window is "
                            "missing or 0",
                            fc->file);
    cfg->sliding_window = n_sliding ? (int)window : 0;
    return 0;
}

/* SmolLM3's layers without RoPE: no_rope_layers (1 = RoPE, 0 = none), else every
 * no_rope_layer_interval-th layer (default 4) goes without. */
static int parse_nope_layers(hf_config *cfg, const json_t *root, const field_ctx *fc) {
    if (cfg->arch != HF_ARCH_SMOLLM3) return 0;
    const json_t *list = json_object_get(root, "no_rope_layers");
    if (json_absent(list)) {
        int interval;
        if (field_int32(fc, root, "no_rope_layer_interval", false, 4, 1, INT_MAX, &interval))
            return -1;
        for (int i = 0; i < cfg->n_layers; i++)
            if ((i + 1) % interval == 0) bit_set(cfg->layer_nope, i);
        return 0;
    }
    if (!json_is_array(list) || (int)json_array_size(list) != cfg->n_layers)
        return kv_error_set(fc->err, "%s: no_rope_layers must be a list of %d integers", fc->file,
                            cfg->n_layers);
    for (int i = 0; i < cfg->n_layers; i++) {
        const json_t *v = json_array_get(list, (size_t)i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 1)
            return kv_error_set(fc->err, "%s: no_rope_layers[%d] must be 0 or 1", fc->file, i);
        if (json_integer_value(v) == 0) bit_set(cfg->layer_nope, i);
    }
    return 0;
}

/* Model kinds no family here implements, refused before the architecture so that the message
 * names the field that makes them what they are. */
static int check_model_kind(const json_t *root, const field_ctx *fc) {
    static const char *moe_keys[] = {"num_experts", "num_local_experts", "n_routed_experts"};
    for (size_t i = 0; i < sizeof moe_keys / sizeof *moe_keys; i++) {
        const json_t *v = json_object_get(root, moe_keys[i]);
        if (json_absent(v) || (json_is_integer(v) && json_integer_value(v) == 0)) continue;
        return kv_error_set(fc->err, "%s: %s = %lld: mixture-of-experts models are not supported",
                            fc->file, moe_keys[i],
                            json_is_integer(v) ? (long long)json_integer_value(v) : -1);
    }
    static const char *hybrid_keys[] = {"layers_block_type", "hybrid_override_pattern",
                                        "attn_layer_indices"};
    for (size_t i = 0; i < sizeof hybrid_keys / sizeof *hybrid_keys; i++)
        if (!json_absent(json_object_get(root, hybrid_keys[i])))
            return kv_error_set(fc->err,
                                "%s: %s is set: hybrid attention (state-space or linear-attention "
                                "layers) is not supported",
                                fc->file, hybrid_keys[i]);
    static const char *mm_keys[] = {"vision_config", "audio_config", "text_config"};
    for (size_t i = 0; i < sizeof mm_keys / sizeof *mm_keys; i++)
        if (!json_absent(json_object_get(root, mm_keys[i])))
            return kv_error_set(fc->err,
                                "%s: %s is present: multimodal models are not supported (load "
                                "a text-only checkpoint)",
                                fc->file, mm_keys[i]);
    return 0;
}

/* The MLP activation and the family's own fields (neutral values for the others). */
static int parse_family(hf_config *cfg, const json_t *root, const field_ctx *fc) {
    bool gemma = cfg->arch == HF_ARCH_GEMMA2 || cfg->arch == HF_ARCH_GEMMA3;
    const char *act, *act_key = gemma ? "hidden_activation" : "hidden_act";
    if (field_string(fc, root, act_key, &act)) return -1;
    if (!act && gemma) {
        act_key = "hidden_act";
        if (field_string(fc, root, act_key, &act)) return -1;
    }
    const char *want = gemma ? "gelu_pytorch_tanh" : "silu";
    if (act && strcmp(act, want) != 0)
        return kv_error_set(fc->err, "%s: %s '%.64s' is not supported (only %s)", fc->file, act_key,
                            act, want);
    cfg->act = gemma ? HF_ACT_GELU_TANH : HF_ACT_SILU;
    cfg->qk_norm = cfg->arch == HF_ARCH_QWEN3 || cfg->arch == HF_ARCH_GEMMA3;
    cfg->embedding_multiplier = cfg->residual_multiplier = cfg->logits_scaling = 1.0;
    if (gemma) {
        bool g2 = cfg->arch == HF_ARCH_GEMMA2;
        if (field_number(fc, root, "query_pre_attn_scalar", false, 256, 0.0,
                         &cfg->query_pre_attn_scalar) ||
            field_opt_number(fc, root, "attn_logit_softcapping", g2 ? 50.0 : 0.0,
                             &cfg->attn_softcap) ||
            field_opt_number(fc, root, "final_logit_softcapping", g2 ? 30.0 : 0.0,
                             &cfg->final_softcap))
            return -1;
    }
    if (cfg->arch == HF_ARCH_GRANITE &&
        (field_number(fc, root, "embedding_multiplier", false, 1.0, 0.0,
                      &cfg->embedding_multiplier) ||
         field_number(fc, root, "attention_multiplier", false, 1.0, 0.0,
                      &cfg->attention_multiplier) ||
         field_number(fc, root, "residual_multiplier", false, 1.0, 0.0,
                      &cfg->residual_multiplier) ||
         field_number(fc, root, "logits_scaling", false, 1.0, 0.0, &cfg->logits_scaling)))
        return -1;
    return parse_nope_layers(cfg, root, fc);
}

/* bos_token_id (int or null) and eos_token_id (int, list of ints or null) of obj, when present. */
static int parse_special_ids(hf_config *cfg, const json_t *obj, const field_ctx *fc) {
    const json_t *bos = json_object_get(obj, "bos_token_id");
    if (bos) {
        long long id;
        if (field_int(fc, obj, "bos_token_id", false, -1, 0, INT_MAX, &id)) return -1;
        cfg->bos_token_id = (int)id;
    }
    const json_t *eos = json_object_get(obj, "eos_token_id");
    if (!eos) return 0;
    cfg->n_eos = 0;
    if (json_is_null(eos)) return 0;
    if (!json_is_array(eos)) {
        long long id;
        if (field_int(fc, obj, "eos_token_id", true, 0, 0, INT_MAX, &id)) return -1;
        cfg->eos_token_ids[cfg->n_eos++] = (int)id;
        return 0;
    }
    if (json_array_size(eos) > HF_CONFIG_MAX_EOS)
        return kv_error_set(fc->err, "%s: eos_token_id lists %zu ids, at most %d are supported",
                            fc->file, json_array_size(eos), HF_CONFIG_MAX_EOS);
    for (size_t i = 0; i < json_array_size(eos); i++) {
        const json_t *v = json_array_get(eos, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT_MAX)
            return kv_error_set(fc->err, "%s: eos_token_id[%zu] must be a non-negative integer",
                                fc->file, i);
        cfg->eos_token_ids[cfg->n_eos++] = (int)json_integer_value(v);
    }
    return 0;
}

/* A [rows, cols] block shape of two positive integers into out. */
static int parse_block(const field_ctx *fc, const json_t *v, const char *key, int out[2]) {
    if (json_absent(v)) return 0;
    if (!json_is_array(v) || json_array_size(v) != 2 || !json_is_integer(json_array_get(v, 0)) ||
        !json_is_integer(json_array_get(v, 1)) || json_integer_value(json_array_get(v, 0)) < 1 ||
        json_integer_value(json_array_get(v, 1)) < 1 ||
        json_integer_value(json_array_get(v, 0)) > 65536 ||
        json_integer_value(json_array_get(v, 1)) > 65536)
        return kv_error_set(fc->err, "%s: quantization_config: %s should be [rows, cols]", fc->file,
                            key);
    out[0] = (int)json_integer_value(json_array_get(v, 0));
    out[1] = (int)json_integer_value(json_array_get(v, 1));
    return 0;
}

/* One compressed-tensors quantization args object (weights or input_activations) must be 8-bit
 * float; what: "weights" or "input_activations". NULL/absent is fine for activations only. */
static int check_ct_args(const field_ctx *fc, const char *group, const json_t *args,
                         const char *what, int block[2]) {
    bool weights = strcmp(what, "weights") == 0;
    if (json_absent(args)) {
        if (!weights) return 0;
        return kv_error_set(fc->err,
                            "%s: quantization_config: compressed-tensors group '%s' has no weights "
                            "scheme",
                            fc->file, group);
    }
    if (!json_is_object(args))
        return kv_error_set(fc->err, "%s: quantization_config: group '%s' %s is not an object",
                            fc->file, group, what);
    const json_t *type = json_object_get(args, "type"), *bits = json_object_get(args, "num_bits");
    const char *t = json_is_string(type) ? json_string_value(type) : "?";
    long long nb = json_is_integer(bits) ? json_integer_value(bits) : -1;
    if (strcmp(t, "float") != 0 || nb != 8)
        return kv_error_set(fc->err,
                            "%s: quantization_config: compressed-tensors group '%s' quantizes %s "
                            "to %lld-bit %s, which is not supported (only 8-bit float, FP8)",
                            fc->file, group, what, nb, t);
    const json_t *strategy = json_object_get(args, "strategy");
    const char *st = json_is_string(strategy) ? json_string_value(strategy) : "tensor";
    if (weights) {
        if (strcmp(st, "block") == 0) {
            if (parse_block(fc, json_object_get(args, "block_structure"), "block_structure", block))
                return -1;
            if (!block[0])
                return kv_error_set(fc->err,
                                    "%s: quantization_config: group '%s': block strategy without "
                                    "block_structure",
                                    fc->file, group);
        } else if (strcmp(st, "tensor") != 0 && strcmp(st, "channel") != 0) {
            return kv_error_set(fc->err,
                                "%s: quantization_config: group '%s' weight strategy '%.32s' is "
                                "not supported (tensor, channel, block)",
                                fc->file, group, st);
        }
    }
    return 0;
}

/* quantization_config: absent, FP8 (see hf_config_parse), or an error naming the method. */
static int parse_quant(hf_config *cfg, const json_t *q, const field_ctx *fc) {
    cfg->quant = HF_QUANT_NONE;
    cfg->quant_block[0] = cfg->quant_block[1] = 0;
    if (json_absent(q)) return 0;
    if (!json_is_object(q))
        return kv_error_set(fc->err, "%s: quantization_config is not an object", fc->file);
    const json_t *m = json_object_get(q, "quant_method");
    const char *method = json_is_string(m) ? json_string_value(m) : NULL;
    if (!method)
        return kv_error_set(fc->err,
                            "%s: quantization_config has no quant_method: quantized models other "
                            "than FP8 are not supported",
                            fc->file);
    if (strcmp(method, "fp8") == 0) {
        const json_t *fmt = json_object_get(q, "fmt"),
                     *act = json_object_get(q, "activation_scheme");
        if (!json_absent(fmt) &&
            !(json_is_string(fmt) && strcmp(json_string_value(fmt), "e4m3") == 0))
            return kv_error_set(fc->err,
                                "%s: quantization_config.fmt is not e4m3 (only e4m3 FP8 weights "
                                "are supported)",
                                fc->file);
        if (!json_absent(act) &&
            !(json_is_string(act) && (strcmp(json_string_value(act), "dynamic") == 0 ||
                                      strcmp(json_string_value(act), "static") == 0)))
            return kv_error_set(fc->err,
                                "%s: quantization_config.activation_scheme should be dynamic or "
                                "static",
                                fc->file);
        cfg->quant = HF_QUANT_FP8;
        return parse_block(fc, json_object_get(q, "weight_block_size"), "weight_block_size",
                           cfg->quant_block);
    }
    if (strcmp(method, "compressed-tensors") == 0) {
        const json_t *groups = json_object_get(q, "config_groups");
        if (!json_is_object(groups) || json_object_size(groups) == 0)
            return kv_error_set(fc->err,
                                "%s: quantization_config: compressed-tensors without config_groups",
                                fc->file);
        const char *name;
        const json_t *g;
        json_object_foreach((json_t *)groups, name, g) {
            if (!json_is_object(g))
                return kv_error_set(fc->err, "%s: quantization_config: group '%s' is not an object",
                                    fc->file, name);
            if (check_ct_args(fc, name, json_object_get(g, "weights"), "weights",
                              cfg->quant_block) ||
                check_ct_args(fc, name, json_object_get(g, "input_activations"),
                              "input_activations", cfg->quant_block))
                return -1;
        }
        cfg->quant = HF_QUANT_COMPRESSED_TENSORS;
        return 0;
    }
    return kv_error_set(fc->err,
                        "%s: quantization_config.quant_method '%.32s' is not supported (only FP8: "
                        "fp8, or compressed-tensors float 8-bit)",
                        fc->file, method);
}

static int parse_root(hf_config *cfg, const json_t *root, const field_ctx *fc) {
    int arch_index = 0;
    if (check_model_kind(root, fc) || parse_arch(cfg, root, fc, &arch_index) ||
        parse_shape(cfg, root, fc))
        return -1;
    if (cfg->n_layers > HF_CONFIG_MAX_LAYERS)
        return kv_error_set(fc->err, "%s: num_hidden_layers %d: at most %d are supported", fc->file,
                            cfg->n_layers, HF_CONFIG_MAX_LAYERS);
    if (field_int32(fc, root, "max_position_embeddings", false,
                    arch_table[arch_index].default_max_position, 1, INT_MAX,
                    &cfg->max_position_embeddings) ||
        field_number(fc, root, "rms_norm_eps", false, 1e-6, 0.0, &cfg->rms_norm_eps) ||
        field_bool(fc, root, "tie_word_embeddings", false, &cfg->tie_word_embeddings) ||
        parse_rope(cfg, root, fc) || parse_attention_kinds(cfg, root, fc) ||
        parse_family(cfg, root, fc))
        return -1;

    /* q/k/v bias: Qwen2 always; attention_bias (where the family has it) also puts one on
     * o_proj; Mistral and Phi-3 none */
    bool bias = false, mlp_bias = false;
    bool has_bias_field =
        cfg->arch != HF_ARCH_QWEN2 && cfg->arch != HF_ARCH_MISTRAL && cfg->arch != HF_ARCH_PHI3;
    bool has_mlp_bias_field =
        cfg->arch == HF_ARCH_LLAMA || cfg->arch == HF_ARCH_GRANITE || cfg->arch == HF_ARCH_SMOLLM3;
    if ((has_bias_field && field_bool(fc, root, "attention_bias", false, &bias)) ||
        (has_mlp_bias_field && field_bool(fc, root, "mlp_bias", false, &mlp_bias)))
        return -1;
    if (mlp_bias) return kv_error_set(fc->err, "%s: mlp_bias true is not supported", fc->file);
    cfg->attention_bias = cfg->arch == HF_ARCH_QWEN2 || bias;
    cfg->attention_out_bias = bias;
    if (parse_quant(cfg, json_object_get(root, "quantization_config"), fc)) return -1;

    const char *dtype, *dtype_key = "dtype";
    if (field_string(fc, root, "dtype", &dtype)) return -1;
    if (!dtype) {
        dtype_key = "torch_dtype";
        if (field_string(fc, root, "torch_dtype", &dtype)) return -1;
    }
    cfg->dtype = KV_DTYPE_F32;
    if (dtype && !kv_dtype_parse(dtype, &cfg->dtype))
        return kv_error_set(fc->err, "%s: %s '%.64s' is not supported (float32, float16, bfloat16)",
                            fc->file, dtype_key, dtype);

    cfg->bos_token_id = -1;
    cfg->n_eos = 0;
    return parse_special_ids(cfg, root, fc);
}

/* Loads text as a JSON object; names `file` in errors. */
static json_t *load_object(const char *json, size_t len, const char *file, kv_error *err) {
    json_error_t jerr;
    json_t *root = json_loadb(json, len, 0, &jerr);
    if (!root) {
        kv_error_set(err, "%s: invalid JSON at line %d column %d: %s", file, jerr.line, jerr.column,
                     jerr.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        kv_error_set(err, "%s: top level must be a JSON object", file);
        return NULL;
    }
    return root;
}

int hf_config_parse(hf_config *cfg, const char *json, size_t len, kv_error *err) {
    memset(cfg, 0, sizeof *cfg);
    json_t *root = load_object(json, len, "config.json", err);
    if (!root) return -1;
    field_ctx fc = {"config.json", "", err};
    int rc = parse_root(cfg, root, &fc);
    json_decref(root);
    return rc;
}

int hf_config_apply_generation(hf_config *cfg, const char *json, size_t len, kv_error *err) {
    json_t *root = load_object(json, len, "generation_config.json", err);
    if (!root) return -1;
    field_ctx fc = {"generation_config.json", "", err};
    /* parse into a copy so that a bad file leaves cfg as it was */
    hf_config tmp = *cfg;
    /* null in generation_config.json means "not set here", not "no eos" */
    if (json_is_null(json_object_get(root, "eos_token_id"))) json_object_del(root, "eos_token_id");
    if (json_is_null(json_object_get(root, "bos_token_id"))) json_object_del(root, "bos_token_id");
    int rc = parse_special_ids(&tmp, root, &fc);
    if (rc == 0) *cfg = tmp;
    json_decref(root);
    return rc;
}

int hf_config_load(hf_config *cfg, const char *dir, kv_error *err) {
    char path[4096];
    size_t len;
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path)
        return kv_error_set(err, "%s: path too long", dir);
    char *text = kv_read_file(path, CONFIG_MAX_FILE_BYTES, &len, err);
    if (!text) return -1;
    int rc = hf_config_parse(cfg, text, len, err);
    free(text);
    if (rc) return -1;

    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    kv_error gen_err;
    text = kv_read_file(path, CONFIG_MAX_FILE_BYTES, &len, &gen_err);
    if (!text) {
        if (errno == ENOENT) return 0; /* generation_config.json is optional */
        if (err) *err = gen_err;
        return -1;
    }
    rc = hf_config_apply_generation(cfg, text, len, err);
    free(text);
    return rc;
}

void hf_config_rope_inv_freq(const hf_config *cfg, float *inv_freq) {
    hf_config_rope_inv_freq_for(cfg, false, false, inv_freq);
}

void hf_config_rope_inv_freq_for(const hf_config *cfg, bool local, bool long_factors,
                                 float *inv_freq) {
    const double two_pi = 2.0 * 3.14159265358979323846;
    int half = cfg->rot_dim / 2;
    bool own = local && cfg->rope_local;
    double theta = own ? cfg->rope_local_theta : cfg->rope_theta;
    hf_rope_type type = own ? HF_ROPE_DEFAULT : cfg->rope_type;
    double old_context = cfg->rope_original_max_position;
    double low_freq_wavelen = old_context / cfg->rope_low_freq_factor;
    double high_freq_wavelen = old_context / cfg->rope_high_freq_factor;
    for (int i = 0; i < half; i++) {
        double inv = 1.0 / pow(theta, (double)(2 * i) / cfg->rot_dim);
        if (type == HF_ROPE_LLAMA3) {
            /* short wavelengths keep their frequency, long ones are divided by factor, and the
             * band between is interpolated linearly in old_context / wavelen */
            double wavelen = two_pi / inv;
            if (wavelen > low_freq_wavelen) {
                inv = inv / cfg->rope_factor;
            } else if (!(wavelen < high_freq_wavelen)) {
                double smooth = (old_context / wavelen - cfg->rope_low_freq_factor) /
                                (cfg->rope_high_freq_factor - cfg->rope_low_freq_factor);
                inv = (1.0 - smooth) * inv / cfg->rope_factor + smooth * inv;
            }
        } else if (type == HF_ROPE_LINEAR) {
            inv /= cfg->rope_factor;
        } else if (type == HF_ROPE_LONGROPE) {
            inv /= long_factors ? cfg->rope_long_factor[i] : cfg->rope_short_factor[i];
        }
        inv_freq[i] = (float)inv;
    }
}

float hf_config_attn_scale(const hf_config *cfg) {
    if (cfg->attention_multiplier > 0) return (float)cfg->attention_multiplier;
    double d = cfg->query_pre_attn_scalar > 0 ? cfg->query_pre_attn_scalar : cfg->head_dim;
    return (float)(1.0 / sqrt(d));
}

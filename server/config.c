/* Configuration knobs: one table describes each knob (key, type, range, help), and every reader
 * (JSON file, --set key=value, --per-knob-flag) and the JSON printer go through it, so a knob is
 * added in one place. */
#include "server/config.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <strings.h>

typedef enum knob_type {
    KNOB_STRING, /* char *, malloc'd; nullable ones accept null (and "" on the command line) */
    KNOB_INT,    /* int within [min, max] */
    KNOB_LLONG,  /* long long within [min, max] */
    KNOB_U64,    /* unsigned long long, any non-negative integer */
    KNOB_DOUBLE, /* double within [min, max] (or (min, max] with min_exclusive) */
    KNOB_BOOL,
    KNOB_ENUM, /* an enum stored as int; value is one of names[] */
} knob_type;

typedef struct knob {
    const char *key; /* "block_size", "offload.size_gib" */
    knob_type type;
    size_t offset;
    bool nullable;
    bool power_of_two;
    bool min_exclusive;
    double min, max;
    const char *const *names; /* KNOB_ENUM: NULL-terminated, in enum order */
    const char *help;
} knob;

static const char *const device_names[] = {"auto", "cuda", "cpu", NULL};
static const char *const tool_parser_names[] = {"auto",    "hermes", "llama3_json",
                                                "mistral", "none",   NULL};
static const char *const reasoning_parser_names[] = {"none", "deepseek_r1", "qwen3", NULL};
static const char *const load_names[] = {"auto", "safetensors", "dummy", NULL};
static const char *const kv_cache_dtype_names[] = {"auto", "fp8", "fp8_e4m3", NULL};
static const char *const quantization_names[] = {"auto", "fp8", NULL};
static const char *const log_names[] = {"debug", "info", "warn", "error", NULL};

#define OFF(field) offsetof(kv_config, field)

static const knob knobs[] = {
    {"host", KNOB_STRING, OFF(host), .help = "address to listen on"},
    {"port", KNOB_INT, OFF(port), .min = 0, .max = 65535, .help = "TCP port (0 = any free port)"},
    {"model", KNOB_STRING, OFF(model), .nullable = true,
     .help = "Hugging Face model directory (config.json, safetensors, tokenizer.json)"},
    {"served_model_name", KNOB_STRING, OFF(served_model_name), .nullable = true,
     .help = "model name clients send and see (null = the model argument)"},
    {"chat_template", KNOB_STRING, OFF(chat_template), .nullable = true,
     .help = "Jinja file overriding the model's chat template (null = the model's own)"},
    {"tool_call_parser", KNOB_ENUM, OFF(tool_call_parser), .names = tool_parser_names,
     .help = "tool calls in chat output: auto (from the chat template), hermes, llama3_json, "
             "mistral or none"},
    {"reasoning_parser", KNOB_ENUM, OFF(reasoning_parser), .names = reasoning_parser_names,
     .help = "<think> blocks in chat output to reasoning_content: none, deepseek_r1 or qwen3"},
    {"generation_config", KNOB_STRING, OFF(generation_config), .nullable = true,
     .help = "default sampling parameters: null or \"auto\" = the model's generation_config.json, "
             "\"vllm\" = OpenAI's, or a folder holding a generation_config.json"},
    {"api_key", KNOB_STRING, OFF(api_key), .nullable = true,
     .help = "require 'Authorization: Bearer KEY' on /v1/* (null = open)"},
    {"allowed_origins", KNOB_STRING, OFF(allowed_origins), .nullable = true,
     .help = "CORS: \"*\" (any origin) or comma-separated origins; null = no CORS headers"},
    {"device", KNOB_ENUM, OFF(device), .names = device_names, .help = "auto, cuda or cpu"},
    {"max_model_len", KNOB_INT, OFF(max_model_len), .min = 0, .max = 1 << 24,
     .help = "longest prompt + completion in tokens (0 = from config.json)"},
    {"block_size", KNOB_INT, OFF(block_size), .power_of_two = true, .min = 1, .max = 256,
     .help = "tokens per KV block, a power of two"},
    {"gpu_memory_utilization", KNOB_DOUBLE, OFF(gpu_memory_utilization), .min_exclusive = true,
     .min = 0, .max = 1, .help = "fraction of GPU memory for weights and KV cache"},
    {"num_gpu_blocks", KNOB_INT, OFF(num_gpu_blocks), .min = 0, .max = 1 << 30,
     .help = "GPU KV blocks (0 = as many as gpu_memory_utilization allows)"},
    {"max_num_seqs", KNOB_INT, OFF(max_num_seqs), .min = 1, .max = 65536,
     .help = "requests running at once"},
    {"max_num_batched_tokens", KNOB_INT, OFF(max_num_batched_tokens), .min = 1, .max = 1 << 24,
     .help = "tokens computed per engine step (prefill is chunked to fit)"},
    {"enable_prefix_caching", KNOB_BOOL, OFF(enable_prefix_caching),
     .help = "reuse KV blocks of earlier requests with the same prefix"},
    {"max_queue", KNOB_INT, OFF(max_queue), .min = 0, .max = 1 << 24,
     .help = "waiting requests beyond which new ones get 503"},
    {"max_body_bytes", KNOB_LLONG, OFF(max_body_bytes), .min = 1024, .max = 1LL << 34,
     .help = "largest request body (larger ones get 413)"},
    {"n_threads", KNOB_INT, OFF(n_threads), .min = 0, .max = 1024,
     .help = "CPU backend threads (0 = one per core)"},
    {"http_threads", KNOB_INT, OFF(http_threads), .min = 1, .max = 256,
     .help = "HTTP polling threads"},
    {"tokenize_threads", KNOB_INT, OFF(tokenize_threads), .min = 1, .max = 256,
     .help = "threads that parse and tokenize request bodies (off the HTTP polling threads)"},
    {"tokenize_queue", KNOB_INT, OFF(tokenize_queue), .min = 1, .max = 1 << 20,
     .help = "request bodies waiting for a tokenize thread; more get 503"},
    {"max_connections", KNOB_INT, OFF(max_connections), .min = 16, .max = 1000000,
     .help = "open HTTP connections at once (idle keep-alive ones included)"},
    {"http_timeout_s", KNOB_INT, OFF(http_timeout_s), .min = 0, .max = 86400,
     .help = "seconds an idle keep-alive or stalled connection stays open (0 = forever)"},
    {"max_connections_per_ip", KNOB_INT, OFF(max_connections_per_ip), .min = 0, .max = 1000000,
     .help = "open HTTP connections from one client address (0 = no limit)"},
    {"max_logprobs", KNOB_INT, OFF(max_logprobs), .min = 0, .max = 20,
     .help = "largest logprobs a request may ask for"},
    {"max_logprob_entries", KNOB_LLONG, OFF(max_logprob_entries), .min = 0, .max = 1LL << 40,
     .help = "n x tokens x (logprobs + 1) per request, echoed prompt included (0 = no limit)"},
    {"structured_max_states", KNOB_INT, OFF(structured_max_states), .min = 16, .max = 10000000,
     .help = "automaton states a response_format / guided_* constraint may compile to"},
    {"structured_max_bytes", KNOB_LLONG, OFF(structured_max_bytes), .min = 64, .max = 1LL << 30,
     .help = "bytes of the regex a constraint (or schema) compiles to"},
    {"load_format", KNOB_ENUM, OFF(load_format), .names = load_names,
     .help = "auto, safetensors, or dummy (random weights from config.json)"},
    {"kv_cache_dtype", KNOB_ENUM, OFF(kv_cache_dtype), .names = kv_cache_dtype_names,
     .help = "KV cache elements: auto (the model's dtype) or fp8 (= fp8_e4m3, half the bytes)"},
    {"quantization", KNOB_ENUM, OFF(quantization), .names = quantization_names,
     .help = "weights: auto (the checkpoint's quantization_config) or fp8 (quantize at load)"},
    {"seed", KNOB_U64, OFF(seed), .help = "server seed of unseeded sampling (not of block hashes)"},
    {"log_level", KNOB_ENUM, OFF(log_level), .names = log_names,
     .help = "debug, info, warn, error"},
    {"offload.size_gib", KNOB_DOUBLE, OFF(offload.size_gib), .min = 0, .max = 1 << 20,
     .help = "host (CPU DRAM) KV tier size in GiB (0 = off)"},
    {"offload.store_policy", KNOB_ENUM, OFF(offload.store_policy), .names = offload_policy_names,
     .help = "write_through, on_evict or reuse_gated"},
    {"offload.reuse_threshold", KNOB_INT, OFF(offload.reuse_threshold), .min = 1, .max = 1000000,
     .help = "hits before reuse_gated stores a block"},
    {"offload.pin_chunk_mib", KNOB_INT, OFF(offload.pin_chunk_mib), .min = 1, .max = 65536,
     .help = "host memory is pinned in chunks of this many MiB, in the background"},
    {"offload.disk.path", KNOB_STRING, OFF(offload.disk_path), .nullable = true,
     .help = "disk KV tier directory (null = off; needs offload.size_gib > 0)"},
    {"offload.disk.size_gib", KNOB_DOUBLE, OFF(offload.disk_size_gib), .min_exclusive = true,
     .min = 0, .max = 1 << 24, .help = "disk tier size limit in GiB (LRU files deleted)"},
    {"offload.remote.url", KNOB_STRING, OFF(offload.remote_url), .nullable = true,
     .help = "remote KV tier shared by servers: redis://host:port[/db] (null = off)"},
    {"offload.remote.timeout_ms", KNOB_INT, OFF(offload.remote_timeout_ms), .min = 1, .max = 600000,
     .help = "remote tier get/put timeout (lookups: a fifth of it)"},
    {"kv_events.endpoint", KNOB_STRING, OFF(kv_events_endpoint), .nullable = true,
     .help = "ZMQ PUB endpoint of vLLM-format KV events, e.g. tcp://*:5557 (null = off)"},
};
#define N_KNOBS ((int)(sizeof(knobs) / sizeof(knobs[0])))

const char *config_kv_cache_dtype_name(config_kv_cache_dtype d) {
    return kv_cache_dtype_names[d];
}

void config_default(kv_config *cfg) {
    *cfg = (kv_config){
        .host = kv_strdup("0.0.0.0"),
        .allowed_origins = kv_strdup("*"),
        .port = 8000,
        .device = CONFIG_DEVICE_AUTO,
        .tool_call_parser = TOOL_PARSER_AUTO,
        .reasoning_parser = REASONING_PARSER_NONE,
        .max_model_len = 0,
        .block_size = 16,
        .gpu_memory_utilization = 0.9,
        .num_gpu_blocks = 0,
        .max_num_seqs = 256,
        .max_num_batched_tokens = 8192,
        .enable_prefix_caching = true,
        .max_queue = 4096,
        .max_body_bytes = 32LL << 20,
        .n_threads = 0,
        .http_threads = 4,
        .tokenize_threads = 2,
        .tokenize_queue = 4096,
        .max_connections = 4096,
        .http_timeout_s = 5,
        .max_connections_per_ip = 1024,
        .max_logprobs = 20,
        .max_logprob_entries = 1 << 18,
        .structured_max_states = 20000,
        .structured_max_bytes = 256 * 1024,
        .load_format = CONFIG_LOAD_AUTO,
        .kv_cache_dtype = CONFIG_KV_CACHE_AUTO,
        .quantization = CONFIG_QUANT_AUTO,
        .seed = 0,
        .log_level = CONFIG_LOG_INFO,
        .offload = {.size_gib = 0,
                    .store_policy = OFFLOAD_POLICY_WRITE_THROUGH,
                    .reuse_threshold = 2,
                    .pin_chunk_mib = 256,
                    .disk_size_gib = 64,
                    .remote_timeout_ms = 1000},
    };
}

void config_free(kv_config *cfg) {
    for (int i = 0; i < N_KNOBS; i++) {
        if (knobs[i].type != KNOB_STRING) continue;
        char **p = (char **)((char *)cfg + knobs[i].offset);
        free(*p);
        *p = NULL;
    }
}

const char *config_served_model_name(const kv_config *cfg) {
    if (cfg->served_model_name) return cfg->served_model_name;
    return cfg->model ? cfg->model : "";
}

static const knob *knob_find(const char *key) {
    for (int i = 0; i < N_KNOBS; i++)
        if (strcmp(knobs[i].key, key) == 0) return &knobs[i];
    return NULL;
}

/* A JSON value as text for messages (truncated). */
static void json_describe(const json_t *v, char *buf, size_t size) {
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    snprintf(buf, size, "%s", s ? s : "?");
    if (s && strlen(s) >= size && size > 4) strcpy(buf + size - 4, "...");
    free(s);
}

static int knob_range_error(const knob *k, const json_t *v, kv_error *err) {
    char got[64];
    json_describe(v, got, sizeof got);
    if (k->power_of_two)
        return kv_error_set(err, "config: %s must be a power of two between %.0f and %.0f (got %s)",
                            k->key, k->min, k->max, got);
    if (k->type == KNOB_DOUBLE)
        return kv_error_set(err, "config: %s must be a number in %c%g, %g] (got %s)", k->key,
                            k->min_exclusive ? '(' : '[', k->min, k->max, got);
    return kv_error_set(err, "config: %s must be an integer between %.0f and %.0f (got %s)", k->key,
                        k->min, k->max, got);
}

static int knob_enum_error(const knob *k, const json_t *v, kv_error *err) {
    char got[64], names[160] = "";
    json_describe(v, got, sizeof got);
    for (int i = 0; k->names[i]; i++) {
        size_t n = strlen(names);
        snprintf(names + n, sizeof names - n, "%s\"%s\"", i ? ", " : "", k->names[i]);
    }
    return kv_error_set(err, "config: %s must be one of %s (got %s)", k->key, names, got);
}

/* Integral JSON value (an integer, or a real with no fraction) into *out. */
static bool json_as_integer(const json_t *v, long long *out) {
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return true;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d != floor(d) || fabs(d) > 9e15) return false;
        *out = (long long)d;
        return true;
    }
    return false;
}

static int knob_set_json(kv_config *cfg, const knob *k, const json_t *v, kv_error *err) {
    void *field = (char *)cfg + k->offset;
    char got[64];
    switch (k->type) {
    case KNOB_STRING: {
        char **p = field;
        if (json_is_null(v) && k->nullable) {
            free(*p);
            *p = NULL;
            return 0;
        }
        if (!json_is_string(v) || (!k->nullable && json_string_length(v) == 0)) {
            json_describe(v, got, sizeof got);
            return kv_error_set(err, "config: %s must be %s (got %s)", k->key,
                                k->nullable ? "a string or null" : "a non-empty string", got);
        }
        free(*p);
        *p = kv_strdup(json_string_value(v));
        return 0;
    }
    case KNOB_INT:
    case KNOB_LLONG: {
        long long x;
        if (!json_as_integer(v, &x) || x < k->min || x > k->max) return knob_range_error(k, v, err);
        if (k->power_of_two && (x & (x - 1)) != 0) return knob_range_error(k, v, err);
        if (k->type == KNOB_INT)
            *(int *)field = (int)x;
        else
            *(long long *)field = x;
        return 0;
    }
    case KNOB_U64: {
        long long x;
        if (!json_as_integer(v, &x) || x < 0) {
            json_describe(v, got, sizeof got);
            return kv_error_set(err, "config: %s must be a non-negative integer (got %s)", k->key,
                                got);
        }
        *(unsigned long long *)field = (unsigned long long)x;
        return 0;
    }
    case KNOB_DOUBLE: {
        if (!json_is_number(v)) return knob_range_error(k, v, err);
        double x = json_number_value(v);
        if (!isfinite(x) || x < k->min || x > k->max || (k->min_exclusive && x <= k->min))
            return knob_range_error(k, v, err);
        *(double *)field = x;
        return 0;
    }
    case KNOB_BOOL:
        if (!json_is_boolean(v)) {
            json_describe(v, got, sizeof got);
            return kv_error_set(err, "config: %s must be true or false (got %s)", k->key, got);
        }
        *(bool *)field = json_is_true(v);
        return 0;
    case KNOB_ENUM:
        if (json_is_string(v))
            for (int i = 0; k->names[i]; i++)
                if (strcmp(k->names[i], json_string_value(v)) == 0) {
                    *(int *)field = i;
                    return 0;
                }
        return knob_enum_error(k, v, err);
    }
    kv_die(__FILE__, __LINE__, "unknown knob type");
}

/* Text from the command line as the JSON value the knob expects: numbers must parse completely,
 * booleans are true/false/1/0/yes/no, "" is null for nullable strings. NULL when the text is not a
 * value of that type (the message is then the knob's own, quoting the text). */
static json_t *knob_text_to_json(const knob *k, const char *text) {
    char *end;
    switch (k->type) {
    case KNOB_STRING:
        if (k->nullable && text[0] == '\0') return json_null();
        return json_string(text);
    case KNOB_ENUM:
        return json_string(text);
    case KNOB_INT:
    case KNOB_LLONG:
    case KNOB_U64: {
        errno = 0;
        long long x = strtoll(text, &end, 10);
        if (errno || end == text || *end) return json_string(text);
        return json_integer(x);
    }
    case KNOB_DOUBLE: {
        errno = 0;
        double x = strtod(text, &end);
        /* nan and inf parse but are no JSON number (json_real refuses them) */
        if (errno || end == text || *end || !isfinite(x)) return json_string(text);
        return json_real(x);
    }
    case KNOB_BOOL:
        if (!strcasecmp(text, "true") || !strcmp(text, "1") || !strcasecmp(text, "yes"))
            return json_true();
        if (!strcasecmp(text, "false") || !strcmp(text, "0") || !strcasecmp(text, "no"))
            return json_false();
        return json_string(text);
    }
    kv_die(__FILE__, __LINE__, "unknown knob type");
}

int config_set(kv_config *cfg, const char *key, const char *value, kv_error *err) {
    const knob *k = knob_find(key);
    if (!k) return kv_error_set(err, "config: unknown key '%s'", key);
    json_t *v = knob_text_to_json(k, value);
    KV_CHECK(v);
    int rc = knob_set_json(cfg, k, v, err);
    json_decref(v);
    return rc;
}

/* Applies the members of obj; prefix is "" at the top level or "offload." inside a section. */
static int config_apply_object(kv_config *cfg, json_t *obj, const char *prefix, kv_error *err) {
    const char *name;
    json_t *v;
    json_object_foreach(obj, name, v) {
        char key[128];
        snprintf(key, sizeof key, "%s%s", prefix, name);
        const knob *k = knob_find(key);
        if (k) {
            if (knob_set_json(cfg, k, v, err)) return -1;
            continue;
        }
        /* a section: some knob's key starts with "key." */
        size_t n = strlen(key);
        bool section = false;
        for (int i = 0; i < N_KNOBS && !section; i++)
            section = strncmp(knobs[i].key, key, n) == 0 && knobs[i].key[n] == '.';
        if (!section) return kv_error_set(err, "config: unknown key '%s'", key);
        if (!json_is_object(v)) return kv_error_set(err, "config: %s must be an object", key);
        strcat(key, ".");
        if (config_apply_object(cfg, v, key, err)) return -1;
    }
    return 0;
}

static int error_add_where(kv_error *err, const char *where) {
    if (err && where) {
        size_t n = strlen(err->msg);
        snprintf(err->msg + n, sizeof err->msg - n, " (in %s)", where);
    }
    return -1;
}

int config_apply_json(kv_config *cfg, const char *text, size_t len, const char *where,
                      kv_error *err) {
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return kv_error_set(err, "config: %s: invalid JSON at line %d column %d: %s",
                            where ? where : "input", jerr.line, jerr.column, jerr.text);
    int rc = 0;
    if (!json_is_object(root))
        rc = kv_error_set(err, "config: the top level must be a JSON object");
    else
        rc = config_apply_object(cfg, root, "", err);
    json_decref(root);
    return rc ? error_add_where(err, where) : 0;
}

int config_load_file(kv_config *cfg, const char *path, kv_error *err) {
    size_t len;
    char *buf = kv_read_file(path, 16u << 20, &len, err);
    if (!buf) {
        if (err) { /* "config: FILE: cannot open: ..." */
            kv_error inner = *err;
            kv_error_set(err, "config: %s", inner.msg);
        }
        return -1;
    }
    int rc = config_apply_json(cfg, buf, len, path, err);
    free(buf);
    return rc;
}

/* "--offload-size-gib" for "offload.size_gib". */
static void knob_flag(const knob *k, char *buf, size_t size) {
    snprintf(buf, size, "--%s", k->key);
    for (char *p = buf + 2; *p; p++)
        if (*p == '_' || *p == '.') *p = '-';
}

static const knob *knob_find_flag(const char *flag) {
    char buf[96];
    for (int i = 0; i < N_KNOBS; i++) {
        knob_flag(&knobs[i], buf, sizeof buf);
        if (strcmp(buf, flag) == 0) return &knobs[i];
    }
    return NULL;
}

static bool is_bool_text(const char *s) {
    static const char *const words[] = {"true", "false", "1", "0", "yes", "no"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (!strcasecmp(s, words[i])) return true;
    return false;
}

int config_parse_args(kv_config *cfg, int argc, char **argv, bool *show_help, kv_error *err) {
    *show_help = false;
    /* --config first, so that flags override the file whatever their order */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            *show_help = true;
            return 0;
        }
        const char *path = NULL;
        if (!strcmp(argv[i], "--config")) {
            if (i + 1 >= argc) return kv_error_set(err, "--config needs a file");
            path = argv[++i];
        } else if (!strncmp(argv[i], "--config=", 9)) {
            path = argv[i] + 9;
        }
        if (path && config_load_file(cfg, path, err)) return -1;
    }
    bool have_positional = false;
    for (int i = 1; i < argc; i++) {
        char flag[128];
        const char *arg = argv[i], *value = NULL;
        if (!strcmp(arg, "--config")) {
            i++;
            continue;
        }
        if (!strncmp(arg, "--config=", 9)) continue;
        if (strncmp(arg, "--", 2) != 0) {
            if (have_positional) return kv_error_set(err, "unexpected argument '%s'", arg);
            have_positional = true;
            if (config_set(cfg, "model", arg, err)) return -1;
            continue;
        }
        const char *eq = strchr(arg, '=');
        size_t flag_len = eq ? (size_t)(eq - arg) : strlen(arg);
        if (flag_len >= sizeof flag) return kv_error_set(err, "unknown option '%s'", arg);
        memcpy(flag, arg, flag_len);
        flag[flag_len] = '\0';
        if (eq) value = eq + 1;

        if (!strcmp(flag, "--set")) {
            if (!value) {
                if (i + 1 >= argc) return kv_error_set(err, "--set needs key=value");
                value = argv[++i];
            }
            const char *sep = strchr(value, '=');
            if (!sep) return kv_error_set(err, "--set needs key=value (got '%s')", value);
            char key[128];
            size_t n = (size_t)(sep - value);
            if (n >= sizeof key) return kv_error_set(err, "config: unknown key '%s'", value);
            memcpy(key, value, n);
            key[n] = '\0';
            if (config_set(cfg, key, sep + 1, err)) return -1;
            continue;
        }
        bool negated = false;
        const knob *k = knob_find_flag(flag);
        if (!k && !strncmp(flag, "--no-", 5)) {
            char positive[128];
            snprintf(positive, sizeof positive, "--%s", flag + 5);
            k = knob_find_flag(positive);
            negated = k && k->type == KNOB_BOOL && !value;
            if (!negated) k = NULL;
        }
        if (!k) return kv_error_set(err, "unknown option '%s' (see --help)", flag);
        if (negated) value = "false";
        if (!value && k->type == KNOB_BOOL)
            value = (i + 1 < argc && is_bool_text(argv[i + 1])) ? argv[++i] : "true";
        if (!value) {
            if (i + 1 >= argc) return kv_error_set(err, "%s needs a value", flag);
            value = argv[++i];
        }
        if (config_set(cfg, k->key, value, err)) return -1;
    }
    return 0;
}

static json_t *knob_to_json(const kv_config *cfg, const knob *k, bool redact) {
    const void *field = (const char *)cfg + k->offset;
    switch (k->type) {
    case KNOB_STRING: {
        const char *s = *(char *const *)field;
        if (!s) return json_null();
        return json_string(redact && !strcmp(k->key, "api_key") ? "***" : s);
    }
    case KNOB_INT:
        return json_integer(*(const int *)field);
    case KNOB_LLONG:
        return json_integer(*(const long long *)field);
    case KNOB_U64:
        return json_integer((json_int_t) * (const unsigned long long *)field);
    case KNOB_DOUBLE:
        return json_real(*(const double *)field);
    case KNOB_BOOL:
        return json_boolean(*(const bool *)field);
    case KNOB_ENUM:
        return json_string(k->names[*(const int *)field]);
    }
    kv_die(__FILE__, __LINE__, "unknown knob type");
}

char *config_to_json(const kv_config *cfg, bool redact_secrets) {
    json_t *root = json_object();
    for (int i = 0; i < N_KNOBS; i++) {
        const knob *k = &knobs[i];
        json_t *parent = root;
        const char *name = k->key;
        for (const char *dot; (dot = strchr(name, '.'));) { /* "offload.disk.path" */
            char section[64];
            snprintf(section, sizeof section, "%.*s", (int)(dot - name), name);
            json_t *child = json_object_get(parent, section);
            if (!child) {
                child = json_object();
                json_object_set_new(parent, section, child);
            }
            parent = child;
            name = dot + 1;
        }
        json_object_set_new(parent, name, knob_to_json(cfg, k, redact_secrets));
    }
    char *s = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    json_decref(root);
    KV_CHECK(s);
    return s;
}

void config_print_help(FILE *f, const char *prog) {
    kv_config def;
    config_default(&def);
    fprintf(f,
            "usage: %s [MODEL_DIR] [--config FILE] [--model DIR] [--port N] [--host ADDR]\n"
            "          [--set key=value]... [--<knob> VALUE]...\n\n"
            "Every knob can be set in the JSON config file (see configs/kvserve.json), with\n"
            "--set key=value, or with its own flag (key with '_' and '.' written as '-').\n"
            "Flags override the file whatever their order. Boolean flags take an optional\n"
            "true/false; --no-<flag> sets false.\n\n",
            prog);
    for (int i = 0; i < N_KNOBS; i++) {
        const knob *k = &knobs[i];
        char flag[96];
        knob_flag(k, flag, sizeof flag);
        json_t *dv = knob_to_json(&def, k, false);
        char *d = json_dumps(dv, JSON_ENCODE_ANY | JSON_REAL_PRECISION(10));
        fprintf(f, "  %-28s %s (default %s)\n", flag, k->help, d);
        free(d);
        json_decref(dv);
    }
    config_free(&def);
}

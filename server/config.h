/* The server's configuration: every knob with its default, read from a JSON file (configs/
 * kvserve.json) and overridden by command-line flags, validated knob by knob, printable as JSON.
 * Owns the strings it holds; knows nothing of the engine or HTTP beyond the values themselves. */
#ifndef KVSERVE_CONFIG_H
#define KVSERVE_CONFIG_H

#include <stdio.h>

#include "model/common.h"
#include "offload/offload.h"
#include "server/chat/reasoning_parser.h"
#include "server/chat/tool_parser.h"

typedef enum config_device {
    CONFIG_DEVICE_AUTO,
    CONFIG_DEVICE_CUDA,
    CONFIG_DEVICE_CPU
} config_device;

typedef enum config_load_format {
    CONFIG_LOAD_AUTO,
    CONFIG_LOAD_SAFETENSORS,
    CONFIG_LOAD_DUMMY
} config_load_format;

typedef enum config_kv_cache_dtype {
    CONFIG_KV_CACHE_AUTO, /* the backend's (bf16 on CUDA, f32 on CPU) */
    CONFIG_KV_CACHE_FP8,  /* = FP8_E4M3, as vLLM */
    CONFIG_KV_CACHE_FP8_E4M3
} config_kv_cache_dtype;

typedef enum config_quantization {
    CONFIG_QUANT_AUTO, /* the checkpoint's quantization_config (FP8), else none */
    CONFIG_QUANT_FP8   /* FP8 weights: an FP8 checkpoint, or bf16 weights quantized at load */
} config_quantization;

typedef enum config_log_level {
    CONFIG_LOG_DEBUG,
    CONFIG_LOG_INFO,
    CONFIG_LOG_WARN,
    CONFIG_LOG_ERROR,
} config_log_level;

typedef struct config_offload {
    double size_gib;             /* host tier size; 0 = offload off */
    offload_policy store_policy; /* offload/offload.h's names in the file */
    int reuse_threshold;         /* hits before reuse_gated stores a block */
    int pin_chunk_mib;     /* host memory is pinned in chunks of this size, in the background */
    char *disk_path;       /* disk tier directory; NULL = off */
    double disk_size_gib;  /* disk tier size limit */
    char *remote_url;      /* redis://host:port[/db]; NULL = off */
    int remote_timeout_ms; /* remote get/put timeout */
} config_offload;

typedef struct kv_config {
    char *host;              /* listen address */
    int port;                /* 0 = any free port */
    char *model;             /* Hugging Face model directory; NULL until given */
    char *served_model_name; /* name clients use; NULL = the model argument */
    char *chat_template;     /* a Jinja file overriding the model's chat template; NULL = none */
    tool_parser_kind tool_call_parser; /* tool calls in chat output; AUTO = from the template */
    reasoning_parser_kind reasoning_parser; /* <think> blocks in chat output; NONE = kept */
    char *generation_config; /* sampling defaults: NULL/"auto" = the model's, "vllm" = none, or a
                                folder holding a generation_config.json */
    char *api_key;           /* NULL = no authentication */
    char *allowed_origins;   /* CORS: "*" or comma-separated origins; NULL = no CORS headers */
    config_device device;
    int max_model_len;             /* 0 = from the model's config.json */
    int block_size;                /* tokens per KV block, a power of two */
    double gpu_memory_utilization; /* fraction of GPU memory for weights + KV cache */
    int num_gpu_blocks;            /* 0 = from gpu_memory_utilization */
    int max_num_seqs;              /* requests running at once */
    int max_num_batched_tokens;    /* tokens per engine step */
    bool enable_prefix_caching;
    int max_queue;                  /* waiting requests beyond which a new one gets 503 */
    long long max_body_bytes;       /* request bodies above this get 413 */
    int n_threads;                  /* CPU backend threads; 0 = one per core */
    int http_threads;               /* libmicrohttpd polling threads */
    int tokenize_threads;           /* workers that parse and tokenize bodies */
    int tokenize_queue;             /* bodies waiting for a worker (more get 503) */
    int max_connections;            /* open HTTP connections at once */
    int http_timeout_s;             /* idle/stalled HTTP connections close after this (0 = never) */
    int max_connections_per_ip;     /* open HTTP connections from one address (0 = no limit) */
    int max_logprobs;               /* largest logprobs a request may ask */
    long long max_logprob_entries;  /* n x tokens x (logprobs + 1) per request (0 = no limit) */
    int structured_max_states;      /* DFA states of one structured-output constraint */
    long long structured_max_bytes; /* bytes of its regex */
    config_load_format load_format;
    config_kv_cache_dtype kv_cache_dtype; /* KV pool elements */
    config_quantization quantization;     /* weight quantization */
    unsigned long long seed; /* server seed: unseeded sampling (block hashes do not use it) */
    config_log_level log_level;
    config_offload offload;
    char *kv_events_endpoint; /* ZMQ PUB endpoint of KV events; NULL = off */
} kv_config;

/* "auto", "fp8", "fp8_e4m3": the value backend_set_kv_cache_dtype takes. */
const char *config_kv_cache_dtype_name(config_kv_cache_dtype d);

/* Fills cfg with every default (strings are malloc'd; free with config_free). */
void config_default(kv_config *cfg);
void config_free(kv_config *cfg);

/* Applies the knobs of a JSON object text over cfg (what is absent keeps its value). Unknown keys,
 * wrong types and invalid values are errors naming the key: "config: unknown key 'block_szie'".
 * On error cfg may be partly updated. where names the source in messages (may be NULL). */
int config_apply_json(kv_config *cfg, const char *text, size_t len, const char *where,
                      kv_error *err);
/* Same, from a file. */
int config_load_file(kv_config *cfg, const char *path, kv_error *err);
/* Sets one knob from text, as given on the command line: key is "block_size" or
 * "offload.size_gib"; booleans are true/false/1/0. */
int config_set(kv_config *cfg, const char *key, const char *value, kv_error *err);

/* Parses the command line over the defaults: --config FILE first (wherever it appears), then every
 * other flag in order: --model DIR, --port N, --host ADDR, --set key=value, and one flag per knob
 * (--block-size 32, --offload-size-gib 8: the key with '_' and '.' as '-'). Sets *show_help when
 * --help/-h is given (and returns 0 without reading further). */
int config_parse_args(kv_config *cfg, int argc, char **argv, bool *show_help, kv_error *err);
/* Prints the usage text with every knob, its default and what it does. */
void config_print_help(FILE *f, const char *prog);

/* The effective configuration as JSON text in the file format (malloc'd; the api_key is shown as
 * "***" when redact_secrets). */
char *config_to_json(const kv_config *cfg, bool redact_secrets);

/* The model name clients use: served_model_name, else model, else "". */
const char *config_served_model_name(const kv_config *cfg);

#endif

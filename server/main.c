/* kvserve: the server a user starts. Parses the configuration (file, then flags), starts the HTTP
 * server at once (so /health answers 503 while loading), loads the weights and the tokenizer,
 * creates the engine, flips the HTTP side to ready, and on SIGINT/SIGTERM shuts down in order:
 * HTTP (no new connections; open streams end with a finish chunk and [DONE]), the engine, the
 * model. With no --model it serves the built-in demo model (server/demo_model.h). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/model.h"
#include "model/tokenizer/tokenizer.h"
#include "server/chat/chat_source.h"
#include "server/config.h"
#include "server/demo_model.h"
#include "server/generation_defaults.h"
#include "server/http.h"
#include "server/metrics.h"
#include "server/engine/kv_events.h"
#include "server/warmup.h"
#include "server/engine/scheduler.h"

/* The write end of the self-pipe that turns SIGINT/SIGTERM into a readable byte. It is kvserve's
 * only global mutable state: a signal handler gets no context argument, so the pipe can be reached
 * only through a global. Set once, before the handlers are installed, and never changed. (A
 * signalfd would need the signals blocked in every thread, and OpenBLAS starts its threads before
 * main runs, so a signal could still land in one of them and kill the process.) */
static int signal_pipe_wr = -1;

static void on_signal(int sig) {
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    /* non-blocking: when the pipe is full, a signal is already waiting to be read */
    ssize_t rc = write(signal_pipe_wr, &b, 1);
    (void)rc;
    errno = saved;
}

/* Creates the self-pipe and installs the handlers; returns the read end, or -1. SIGPIPE is
 * ignored: a client that hangs up must only fail the write to its socket. */
static int signals_install(void) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK)) return -1;
    signal_pipe_wr = fds[1];
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    struct sigaction ign = {.sa_handler = SIG_IGN};
    sigemptyset(&ign.sa_mask);
    if (sigaction(SIGINT, &sa, NULL) || sigaction(SIGTERM, &sa, NULL) ||
        sigaction(SIGPIPE, &ign, NULL))
        return -1;
    return fds[0];
}

/* The signal number waiting on the pipe (consumed), or 0; waits up to timeout_ms (-1 = forever). */
static int signal_wait(int fd, int timeout_ms) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int rc;
    while ((rc = poll(&p, 1, timeout_ms)) < 0 && errno == EINTR) {
    }
    unsigned char b;
    if (rc > 0 && read(fd, &b, 1) == 1) return b;
    return 0;
}

/* Everything the server holds, freed in reverse order by app_free. */
typedef struct app {
    kv_config cfg;
    char *demo_dir; /* the demo model's temporary directory; NULL when --model was given */
    int signal_rd;  /* read end of the self-pipe */
    metrics metrics;
    bool metrics_ready;
    http_server *http;
    backend *be;
    model *model;
    tokenizer *tok;
    chat_source chat;        /* the chat template (tmpl NULL = none) */
    sampler_params defaults; /* request defaults (generation_config.json) */
    bool defaults_loaded;
    /* The engine. HTTP threads read it through app_submit/app_cancel; it is set before the HTTP
     * side is marked ready and cleared only after the HTTP server has stopped. */
    _Atomic(scheduler *) sched;
    kv_events *events; /* KV events publisher (kv_events.endpoint), NULL when off */
} app;

static void app_log(const app *a, config_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void app_log(const app *a, config_log_level level, const char *fmt, ...) {
    if (level < a->cfg.log_level) return;
    va_list ap;
    va_start(ap, fmt);
    fputs("kvserve: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- the engine as the HTTP server sees it ----
 * The HTTP server starts before the model exists (to answer /health with 503 while loading), but
 * takes its server_engine at start: these forward to the scheduler once there is one. */

static engine_submit_status app_submit(void *ctx, const engine_request *req, uint64_t *id,
                                       kv_error *err) {
    scheduler *s = atomic_load(&((app *)ctx)->sched);
    if (!s) {
        kv_error_set(err, "the model is still loading");
        return ENGINE_SUBMIT_BUSY;
    }
    return scheduler_submit(s, req, id, err);
}

static void app_cancel(void *ctx, uint64_t id) {
    scheduler *s = atomic_load(&((app *)ctx)->sched);
    if (s) scheduler_cancel(s, id);
}

/* ---- loading ---- */

typedef struct load_progress {
    const app *a;
    bool tty;
    int last_step; /* last reported percent (tty) or tenth (log) */
    double t0;
} load_progress;

/* Weight-loading progress on stderr: a line rewritten in place on a terminal, one line per 10%
 * otherwise. A SIGINT/SIGTERM while loading ends the process at once: the HTTP side serves
 * nothing yet, and llama_load cannot be interrupted. */
static void on_load_progress(size_t done, size_t total, void *ctx) {
    load_progress *p = ctx;
    const app *a = p->a;
    int sig = signal_wait(a->signal_rd, 0);
    if (sig) {
        fprintf(stderr, "%skvserve: %s while loading the model: exiting\n", p->tty ? "\n" : "",
                strsignal(sig));
        _exit(0);
    }
    if (a->cfg.log_level > CONFIG_LOG_INFO || total == 0) return;
    int pct = (int)(100.0 * (double)done / (double)total);
    int step = p->tty ? pct : pct / 10;
    if (step == p->last_step) return;
    p->last_step = step;
    double dt = kv_now() - p->t0;
    fprintf(stderr, "%skvserve: loading weights: %3d%% (%.1f of %.1f MB, %.1f s)%s",
            p->tty ? "\r" : "", pct, done / 1e6, total / 1e6, dt, p->tty ? "" : "\n");
    if (p->tty && done == total) fputc('\n', stderr);
}

/* The engine's knobs from the server config; the KV pool gets n_blocks blocks. */
static void engine_config_from(scheduler_config *c, const kv_config *cfg, int n_blocks) {
    scheduler_config_default(c);
    c->n_gpu_blocks = n_blocks;
    c->block_size = cfg->block_size;
    c->max_num_seqs = cfg->max_num_seqs;
    c->max_num_batched_tokens = cfg->max_num_batched_tokens;
    c->max_model_len = cfg->max_model_len;
    c->max_queue = cfg->max_queue;
    c->enable_prefix_caching = cfg->enable_prefix_caching;
    c->seed = cfg->seed;
    c->offload = (offload_config){.size_gib = cfg->offload.size_gib,
                                  .policy = cfg->offload.store_policy,
                                  .reuse_threshold = cfg->offload.reuse_threshold,
                                  .chunk_bytes = (size_t)cfg->offload.pin_chunk_mib << 20,
                                  .disk_path = cfg->offload.disk_path,
                                  .disk_size_gib = cfg->offload.disk_size_gib,
                                  .remote_url = cfg->offload.remote_url,
                                  .remote_timeout_ms = cfg->offload.remote_timeout_ms};
}

/* KV pool size in blocks when num_gpu_blocks is 0. On CUDA: what gpu_memory_utilization leaves
 * after the weights, taking the free memory before loading as the device's size (budget =
 * util * before - (before - after)). On the CPU backend: half the RAM still available. Never more
 * than max_num_seqs sequences of model_len tokens can fill. */
static int kv_blocks_auto(const app *a, size_t free_before, size_t block_bytes, int model_len) {
    size_t free_after = a->be->ops->dev_free_bytes(a->be);
    double budget;
    if (strcmp(a->be->name, "cpu") == 0)
        budget = 0.5 * (double)free_after;
    else
        budget = (double)free_after - (1.0 - a->cfg.gpu_memory_utilization) * (double)free_before;
    double n = budget > 0 ? floor(budget / (double)block_bytes) : 0;
    int bs = a->cfg.block_size;
    /* in long long: max_position_embeddings may be INT_MAX */
    double cap = (double)a->cfg.max_num_seqs * (double)(((long long)model_len + bs - 1) / bs);
    if (n > cap) n = cap;
    return n > INT32_MAX / 2 ? INT32_MAX / 2 : (int)n;
}

/* MemAvailable of /proc/meminfo in bytes (what can be allocated without swapping), or 0 when it
 * cannot be read (then no check is made). */
static size_t mem_available_bytes(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    unsigned long long kib = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1) break;
    fclose(f);
    return (size_t)kib * 1024;
}

/* The bytes of the *.safetensors files in dir (0 when none can be read). */
static size_t safetensors_bytes(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    size_t total = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (n < 12 || strcmp(e->d_name + n - 12, ".safetensors") != 0) continue;
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) total += (size_t)st.st_size;
    }
    closedir(d);
    return total;
}

#define GIB(x) ((double)(x) / (double)(1ull << 30))

/* tokenizer_load on a thread of its own. */
typedef struct tokenizer_job {
    const char *dir;
    pthread_t thread;
    tokenizer *tok;
    int rc;
    kv_error err;
} tokenizer_job;

static void *tokenizer_job_run(void *arg) {
    tokenizer_job *j = arg;
    j->rc = tokenizer_load(&j->tok, j->dir, &j->err);
    return NULL;
}

/* Loads the model, the tokenizer and the engine, then marks the HTTP side ready. */
static int app_load(app *a, kv_error *err) {
    kv_config *cfg = &a->cfg;
    const char *device = cfg->device == CONFIG_DEVICE_CUDA ? "cuda" : "cpu";
    double t0 = kv_now();
    a->be = backend_create(device, cfg->n_threads, err);
    if (!a->be) return -1;
    if (backend_set_kv_cache_dtype(a->be, config_kv_cache_dtype_name(cfg->kv_cache_dtype), err))
        return -1;
    if (a->be->desc) app_log(a, CONFIG_LOG_INFO, "%s", a->be->desc);
    size_t free_before = a->be->ops->dev_free_bytes(a->be);

    bool dummy = cfg->load_format == CONFIG_LOAD_DUMMY;
    load_progress progress = {.a = a, .tty = isatty(STDERR_FILENO), .last_step = -1, .t0 = t0};
    app_log(a, CONFIG_LOG_INFO, "loading %s from %s on %s", dummy ? "random weights" : "weights",
            cfg->model, a->be->name);
    /* The CPU backend copies the weights into RAM: refuse a model that cannot fit, with the
     * sizes, rather than abort in the middle of loading it. */
    size_t avail = mem_available_bytes(), weights = dummy ? 0 : safetensors_bytes(cfg->model);
    if (strcmp(a->be->name, "cpu") == 0 && avail > 0 && weights > avail)
        return kv_error_set(err,
                            "%s: the weights take %.2f GiB but only %.2f GiB of memory is "
                            "available (MemAvailable): use a smaller model or free memory",
                            cfg->model, GIB(weights), GIB(avail));
    model_load_options lo = {.format = dummy ? MODEL_LOAD_DUMMY : MODEL_LOAD_SAFETENSORS,
                             .max_tokens = cfg->max_num_batched_tokens,
                             .quantize_fp8 = cfg->quantization == CONFIG_QUANT_FP8,
                             .progress = on_load_progress,
                             .progress_ctx = &progress};
    /* the tokenizer (a second or more of JSON and merges for a 128K vocabulary) loads on its own
     * thread while the weights load */
    tokenizer_job tj = {.dir = cfg->model};
    bool tj_started = pthread_create(&tj.thread, NULL, tokenizer_job_run, &tj) == 0;
    a->model = model_load(cfg->model, a->be, &lo, err);
    double t_weights = kv_now() - t0;
    if (tj_started)
        pthread_join(tj.thread, NULL);
    else
        tokenizer_job_run(&tj);
    if (!a->model) {
        tokenizer_free(tj.tok);
        return -1;
    }
    app_log(a, CONFIG_LOG_INFO, "%.1f MB of weights loaded in %.2f s (tokenizer ready at %.2f s)",
            a->model->weight_bytes / 1e6, t_weights, kv_now() - t0);
    a->tok = tj.tok;
    if (tj.rc) {
        if (err) *err = tj.err;
        return -1;
    }
    if (chat_source_load(&a->chat, cfg->model, cfg->chat_template, err)) return -1;
    if (a->chat.tmpl)
        app_log(a, CONFIG_LOG_INFO, "chat template from %s", a->chat.origin);
    else
        app_log(a, CONFIG_LOG_INFO,
                "the model has no chat template: /v1/chat/completions "
                "answers 400 (give one with --chat-template FILE)");
    http_server_set_chat(a->http, &a->chat);
    char taken[256];
    if (generation_defaults_load(cfg->generation_config, cfg->model, &a->defaults, taken,
                                 sizeof taken, err))
        return -1;
    a->defaults_loaded = true;
    if (taken[0])
        app_log(a, CONFIG_LOG_INFO, "default sampling parameters from generation_config.json: %s",
                taken);
    const hf_config *hc = &a->model->cfg;
    if (tokenizer_vocab_size(a->tok) > hc->vocab_size)
        app_log(a, CONFIG_LOG_WARN,
                "the tokenizer has %d tokens but the model only %d: prompts holding the others "
                "are refused",
                tokenizer_vocab_size(a->tok), hc->vocab_size);

    size_t block_bytes = model_kv_layout(a->model, cfg->block_size).block_bytes;
    int model_len = cfg->max_model_len > 0 ? cfg->max_model_len : hc->max_position_embeddings;
    int n_blocks = cfg->num_gpu_blocks > 0 ? cfg->num_gpu_blocks
                                           : kv_blocks_auto(a, free_before, block_bytes, model_len);
    if (n_blocks < 1)
        return kv_error_set(err,
                            "no memory left for the KV cache after loading the weights (%zu MB "
                            "free); lower the model size or raise gpu_memory_utilization",
                            a->be->ops->dev_free_bytes(a->be) >> 20);
    app_log(a, CONFIG_LOG_INFO, "KV cache: %d blocks of %d tokens, %s, %zu bytes each", n_blocks,
            cfg->block_size, kv_dtype_name(a->be->kv_dtype), block_bytes);
    if ((long long)n_blocks * cfg->block_size < model_len) {
        app_log(a, CONFIG_LOG_WARN,
                "the KV cache holds %lld tokens, fewer than max_model_len %d: max_model_len "
                "lowered to %lld",
                (long long)n_blocks * cfg->block_size, model_len,
                (long long)n_blocks * cfg->block_size);
        model_len = n_blocks * cfg->block_size;
    }

    /* The host tier is pinned in the background after ready: one larger than the memory left
     * would be pinned until the OOM killer ends the process. On the CPU backend the KV pool is
     * in the same RAM (allocated, not yet touched, so MemAvailable does not show it yet). */
    size_t tier_bytes = (size_t)(cfg->offload.size_gib * (double)(1ull << 30));
    avail = mem_available_bytes();
    if (avail > 0 && strcmp(a->be->name, "cpu") == 0) {
        size_t pool = (size_t)n_blocks * block_bytes;
        avail = avail > pool ? avail - pool : 0;
    }
    if (tier_bytes > 0 && mem_available_bytes() > 0 && tier_bytes > avail)
        return kv_error_set(err,
                            "offload.size_gib %g is more than the %.2f GiB of memory available "
                            "for the host tier (MemAvailable%s): lower --offload-size-gib",
                            cfg->offload.size_gib, GIB(avail),
                            strcmp(a->be->name, "cpu") == 0 ? " less the CPU KV pool" : "");

    scheduler_config sc;
    engine_config_from(&sc, cfg, n_blocks);
    sc.max_model_len = model_len;
    sc.metrics = &a->metrics;
    if (cfg->kv_events_endpoint && *cfg->kv_events_endpoint) {
        kv_events_config ec = {.endpoint = cfg->kv_events_endpoint};
        if (!(a->events = kv_events_create(&ec, err))) return -1;
        sc.events = a->events;
    }
    while (sc.seed == 0) /* 0 = a fresh seed at every start */
        if (getrandom(&sc.seed, sizeof sc.seed, 0) != sizeof sc.seed)
            sc.seed = 0x9e3779b97f4a7c15ull;
    scheduler *s = scheduler_create(a->model, &sc, err);
    if (!s) return -1;
    scheduler_start(s);
    /* On the GPU the first request would pay for lazy loading, plans and graph recording: pay
     * it here, before /health says ready (the CPU backend has nothing of the kind). */
    if (strcmp(a->be->name, "cpu") != 0) {
        double tw = kv_now();
        int wlen = model_len - 16 < 1024 ? model_len - 16 : 1024;
        int failed = warmup_run(s, hc->vocab_size, wlen);
        app_log(a, failed ? CONFIG_LOG_WARN : CONFIG_LOG_INFO,
                "warm-up: %d-token prefill and decode at batch 1-8 in %.2f s%s", wlen,
                kv_now() - tw, failed ? " (some warm-up requests failed)" : "");
    }
    atomic_store(&a->sched, s);
    http_server_set_model(a->http, a->tok, model_len, &a->defaults);
    app_log(a, CONFIG_LOG_INFO,
            "ready on %s: model '%s', %d KV blocks of %d tokens (%.2f GiB), max_model_len %d, "
            "prefix caching %s, host tier %.1f GiB (%.2f s since start)",
            a->be->name, config_served_model_name(cfg), n_blocks, cfg->block_size,
            (double)n_blocks * (double)block_bytes / (double)(1 << 30), model_len,
            cfg->enable_prefix_caching ? "on" : "off", cfg->offload.size_gib, kv_now() - t0);
    return 0;
}

/* Frees everything in reverse order of creation. The HTTP server stops first: it ends its open
 * requests (streams get their finish chunk and [DONE]) while the engine still runs to deliver the
 * last events; then the engine stops and frees its pool. */
static void app_free(app *a) {
    if (a->http) http_server_stop(a->http);
    scheduler_free(atomic_exchange(&a->sched, NULL));
    kv_events_free(a->events);
    tokenizer_free(a->tok);
    chat_source_free(&a->chat);
    if (a->defaults_loaded) sampler_params_free(&a->defaults);
    model_free(a->model);
    backend_destroy(a->be);
    if (a->metrics_ready) metrics_free(&a->metrics);
    if (a->demo_dir) demo_model_remove(a->demo_dir);
    free(a->demo_dir);
    config_free(&a->cfg);
    if (a->signal_rd >= 0) close(a->signal_rd);
}

/* Parses the command line and fills in what the user left to kvserve: the demo model when no
 * model is given, the device. Returns 0 to go on, 1 to exit 0 (help), -1 on a bad command line. */
static int app_configure(app *a, int argc, char **argv, kv_error *err) {
    kv_config *cfg = &a->cfg;
    config_default(cfg);
    bool help = false;
    if (config_parse_args(cfg, argc, argv, &help, err)) return -1;
    if (help) {
        config_print_help(stdout, "kvserve");
        return 1;
    }
    if (!cfg->model) {
        if (demo_model_create(&a->demo_dir, err)) return -1;
        fprintf(stderr,
                "kvserve: no --model given: serving the built-in demo model (random weights; "
                "output is gibberish). Point --model at a Hugging Face model directory for real "
                "output.\n");
        cfg->model = kv_strdup(a->demo_dir);
        cfg->load_format = CONFIG_LOAD_DUMMY;
        if (!cfg->served_model_name) cfg->served_model_name = kv_strdup(DEMO_MODEL_NAME);
    }
    if (cfg->load_format == CONFIG_LOAD_AUTO) cfg->load_format = CONFIG_LOAD_SAFETENSORS;
    if (cfg->device == CONFIG_DEVICE_AUTO) {
        kv_error why = {{0}};
        cfg->device = backend_cuda_check(&why) ? CONFIG_DEVICE_CUDA : CONFIG_DEVICE_CPU;
        if (cfg->device == CONFIG_DEVICE_CPU)
            fprintf(stderr, "kvserve: warning: device auto: using the CPU backend (slow): %s\n",
                    why.msg);
    }
    return 0;
}

int main(int argc, char **argv) {
    app a = {.signal_rd = -1};
    kv_error err = {{0}};
    int rc = app_configure(&a, argc, argv, &err);
    if (rc) {
        if (rc < 0) fprintf(stderr, "kvserve: %s\n", err.msg);
        app_free(&a);
        return rc < 0 ? 2 : 0;
    }
    char *json = config_to_json(&a.cfg, true);
    fprintf(stderr, "kvserve: effective configuration:\n%s\n", json);
    free(json);

    a.signal_rd = signals_install();
    if (a.signal_rd < 0) {
        fprintf(stderr, "kvserve: cannot install signal handlers: %s\n", strerror(errno));
        app_free(&a);
        return 1;
    }
    const char *name = config_served_model_name(&a.cfg);
    metrics_init(&a.metrics, name);
    a.metrics_ready = true;
    server_engine engine = {.ctx = &a, .submit = app_submit, .cancel = app_cancel};
    http_server_options opt = {.host = a.cfg.host,
                               .port = a.cfg.port,
                               .api_key = a.cfg.api_key,
                               .allowed_origins = a.cfg.allowed_origins,
                               .log_requests = a.cfg.log_level <= CONFIG_LOG_INFO,
                               .max_body_bytes = a.cfg.max_body_bytes,
                               .n_threads = a.cfg.http_threads,
                               .n_tokenize_threads = a.cfg.tokenize_threads,
                               .max_tokenize_queue = a.cfg.tokenize_queue,
                               .max_connections = a.cfg.max_connections,
                               .connection_timeout_s = a.cfg.http_timeout_s,
                               .max_connections_per_ip = a.cfg.max_connections_per_ip,
                               .max_logprobs = a.cfg.max_logprobs,
                               .max_logprob_entries = a.cfg.max_logprob_entries,
                               .structured_max_states = a.cfg.structured_max_states,
                               .structured_max_bytes = a.cfg.structured_max_bytes,
                               .served_model_name = name,
                               .tool_call_parser = a.cfg.tool_call_parser,
                               .reasoning_parser = a.cfg.reasoning_parser,
                               .model_root = a.demo_dir ? DEMO_MODEL_NAME : a.cfg.model};
    if (http_server_start(&a.http, &opt, &engine, &a.metrics, &err)) {
        fprintf(stderr, "kvserve: %s\n", err.msg);
        app_free(&a);
        return 1;
    }
    /* printed whatever the log level: scripts and tests read the port from this line */
    fprintf(stderr,
            "kvserve: listening on http://%s:%d (loading the model; /health answers 503 "
            "until it is ready)\n",
            a.cfg.host, http_server_port(a.http));

    if (app_load(&a, &err)) {
        fprintf(stderr, "kvserve: %s\n", err.msg);
        app_free(&a);
        return 1;
    }
    int sig;
    while (!(sig = signal_wait(a.signal_rd, -1))) {
    }
    app_log(&a, CONFIG_LOG_INFO, "%s: shutting down (open streams end, the engine stops)",
            strsignal(sig));
    app_free(&a);
    fprintf(stderr, "kvserve: stopped\n");
    return 0;
}

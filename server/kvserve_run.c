/* kvserve-run: a developer tool that loads a model and generates greedily from token ids, without
 * the server, the tokenizer or the block manager: the prompt is one prefill step, then one token
 * per step, in sequential blocks of a pool it allocates. Prints the ids (and top-N logprobs). */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "model/model.h"

static void usage(FILE *f) {
    fprintf(
        f,
        "usage: kvserve-run --model DIR [--device cpu|cuda] [--prompt-ids 1,2,3] [-n 32]\n"
        "                   [--top N] [--load-format safetensors|dummy] [--block-size 16]\n"
        "                   [--threads N]\n"
        "Greedy generation from token ids (default: the model's BOS). Prints the generated ids,\n"
        "or with --top one line per step with the N most likely ids and their logprobs.\n");
}

/* Parses "1,2,3" into ids (malloc'd); -1 on a malformed list. */
static int parse_ids(const char *s, int32_t **ids, int *n) {
    *n = 0;
    *ids = kv_malloc((strlen(s) / 2 + 1) * sizeof **ids);
    while (*s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 0 || v > INT32_MAX || (*end && *end != ',')) return -1;
        (*ids)[(*n)++] = (int32_t)v;
        s = *end ? end + 1 : end;
    }
    return *n > 0 ? 0 : -1;
}

/* A whole-number flag value in [lo, hi] into *out; false (with a message) otherwise. */
static bool parse_int_arg(const char *flag, const char *text, int lo, int hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < lo || v > hi) {
        fprintf(stderr, "kvserve-run: %s must be an integer in [%d, %d] (got '%s')\n", flag, lo, hi,
                text);
        return false;
    }
    *out = (int)v;
    return true;
}

/* Prints the top n ids of logits with their log-softmax values. */
static void print_top(const float *logits, int vocab, int n) {
    double mx = -INFINITY, sum = 0;
    for (int i = 0; i < vocab; i++) mx = logits[i] > mx ? logits[i] : mx;
    for (int i = 0; i < vocab; i++) sum += exp(logits[i] - mx);
    double lse = mx + log(sum);
    int *top = kv_malloc((size_t)n * sizeof *top);
    for (int k = 0; k < n; k++) { /* n is small: repeated selection */
        top[k] = -1;
        for (int i = 0; i < vocab; i++) {
            bool taken = false;
            for (int j = 0; j < k; j++) taken = taken || top[j] == i;
            if (!taken && (top[k] < 0 || logits[i] > logits[top[k]])) top[k] = i;
        }
        printf("%s%d:%.5f", k ? " " : "", top[k], logits[top[k]] - lse);
    }
    printf("\n");
    free(top);
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

int main(int argc, char **argv) {
    const char *model_dir = NULL, *device = "cpu", *prompt = NULL;
    int n_gen = 32, n_top = 0, block_size = 16, n_threads = 0;
    model_load_format format = MODEL_LOAD_SAFETENSORS;
    static const struct option opts[] = {{"model", required_argument, NULL, 'm'},
                                         {"device", required_argument, NULL, 'd'},
                                         {"prompt-ids", required_argument, NULL, 'p'},
                                         {"top", required_argument, NULL, 't'},
                                         {"load-format", required_argument, NULL, 'f'},
                                         {"block-size", required_argument, NULL, 'b'},
                                         {"threads", required_argument, NULL, 'j'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "n:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model_dir = optarg;
            break;
        case 'd':
            device = optarg;
            break;
        case 'p':
            prompt = optarg;
            break;
        case 'n':
            if (!parse_int_arg("-n", optarg, 1, 1 << 24, &n_gen)) return 2;
            break;
        case 't':
            if (!parse_int_arg("--top", optarg, 0, 1 << 20, &n_top)) return 2;
            break;
        case 'b':
            if (!parse_int_arg("--block-size", optarg, 1, 1 << 16, &block_size)) return 2;
            break;
        case 'j':
            if (!parse_int_arg("--threads", optarg, 0, 1024, &n_threads)) return 2;
            break;
        case 'f':
            if (strcmp(optarg, "dummy") == 0)
                format = MODEL_LOAD_DUMMY;
            else if (strcmp(optarg, "safetensors") != 0) {
                fprintf(stderr, "kvserve-run: --load-format must be safetensors or dummy\n");
                return 2;
            }
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!model_dir) {
        usage(stderr);
        return 2;
    }

    int32_t *ids = NULL;
    int n_prompt = 0;
    if (prompt && parse_ids(prompt, &ids, &n_prompt)) {
        fprintf(stderr, "kvserve-run: --prompt-ids must be a comma-separated list of ids\n");
        free(ids);
        return 2;
    }
    kv_error err = {{0}};
    backend *be = backend_create(device, n_threads, &err);
    model *m = NULL;
    double t0 = kv_now();
    /* max_tokens: the prompt is one step (a BOS-only prompt when none is given) */
    if (be) {
        model_load_options opt = {.format = format, .max_tokens = n_prompt > 0 ? n_prompt : 1};
        m = model_load(model_dir, be, &opt, &err);
    }
    if (!m) {
        fprintf(stderr, "kvserve-run: %s\n", err.msg);
        backend_destroy(be);
        free(ids);
        return 1;
    }
    double t_load = kv_now() - t0;
    int vocab = m->vocab;
    if (!ids) {
        ids = kv_malloc(sizeof *ids);
        ids[0] = m->cfg.bos_token_id >= 0 ? m->cfg.bos_token_id : 0;
        n_prompt = 1;
    }
    for (int i = 0; i < n_prompt; i++)
        if (ids[i] >= vocab) {
            fprintf(stderr, "kvserve-run: prompt id %d is outside the vocabulary (%d)\n", ids[i],
                    vocab);
            model_free(m);
            backend_destroy(be);
            free(ids);
            return 2;
        }

    /* one sequence in blocks 0, 1, 2, ... of a pool just large enough */
    backend_kv_layout l = model_kv_layout(m, block_size);
    int n_blocks = (n_prompt + n_gen + block_size - 1) / block_size;
    void *pool = be->ops->dev_alloc(be, l.block_bytes * (size_t)n_blocks);
    int32_t *table = kv_malloc((size_t)n_blocks * sizeof *table);
    for (int i = 0; i < n_blocks; i++) table[i] = i;
    int32_t *positions = kv_malloc((size_t)n_prompt * sizeof *positions);
    for (int i = 0; i < n_prompt; i++) positions[i] = i;
    float *logits = kv_malloc((size_t)vocab * sizeof *logits);

    int32_t seq_start[2] = {0, n_prompt}, seq_len = n_prompt, last = n_prompt - 1, tok;
    backend_batch b = {.n_tokens = n_prompt,
                       .n_seqs = 1,
                       .tokens = ids,
                       .positions = positions,
                       .seq_start = seq_start,
                       .seq_len = &seq_len,
                       .block_table = table,
                       .max_blocks = n_blocks,
                       .n_out = 1,
                       .out_rows = &last};
    double t1 = kv_now();
    model_forward(m, &b, pool, &l, logits);
    double t_prefill = kv_now() - t1, t2 = kv_now();
    for (int i = 0; i < n_gen; i++) {
        tok = argmax(logits, vocab);
        if (n_top) {
            printf("%d\t", tok);
            print_top(logits, vocab, n_top < vocab ? n_top : vocab);
        } else {
            printf("%s%d", i ? " " : "", tok);
        }
        if (i + 1 == n_gen) break;
        /* the next step: the new token alone at position n_prompt + i */
        int32_t pos = n_prompt + i, zero = 0;
        seq_start[1] = 1;
        seq_len = pos + 1;
        b = (backend_batch){.n_tokens = 1,
                            .n_seqs = 1,
                            .tokens = &tok,
                            .positions = &pos,
                            .seq_start = seq_start,
                            .seq_len = &seq_len,
                            .block_table = table,
                            .max_blocks = n_blocks,
                            .n_out = 1,
                            .out_rows = &zero};
        model_forward(m, &b, pool, &l, logits);
    }
    if (!n_top) printf("\n");
    double t_decode = kv_now() - t2;
    fprintf(stderr,
            "kvserve-run: %s, %.1f MB of weights loaded in %.2f s; prefill %d tokens %.2f ms; "
            "%d decode steps %.1f ms (%.1f tok/s)\n",
            be->name, m->weight_bytes / 1e6, t_load, n_prompt, t_prefill * 1e3, n_gen - 1,
            t_decode * 1e3, n_gen > 1 ? (n_gen - 1) / t_decode : 0.0);

    be->ops->dev_free(be, pool);
    model_free(m);
    backend_destroy(be);
    free(ids), free(table), free(positions), free(logits);
    return 0;
}

/* Structured-output mask cost per decode step on a 128K-vocabulary tokenizer (Llama 3's): compile
 * a realistic JSON Schema, then decode documents valid under it token by token (ids from the
 * tokenizer), applying the mask to a full logits row and advancing the automaton at each step, at
 * batch 1 and 64 (one constraint per request, as the server compiles them). Cold = masks built on
 * first visit of a state; warm = the same states again (cached). Printed in µs per decode step,
 * next to the sampler's own time on the row and, with --step-us, as a share of that decode step.
 * Run: build/tests/bench/bench_structured [--tokenizer DIR] [--step-us US] [--docs N] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "model/sampler.h"
#include "model/structured/json_schema.h"
#include "model/tokenizer/tokenizer.h"

static const char *SCHEMA =
    "{\"type\":\"object\",\"properties\":{"
    "\"order_id\":{\"type\":\"string\",\"format\":\"uuid\"},"
    "\"created\":{\"type\":\"string\",\"format\":\"date-time\"},"
    "\"status\":{\"enum\":[\"pending\",\"paid\",\"shipped\",\"cancelled\"]},"
    "\"customer\":{\"type\":\"object\",\"properties\":{"
    "\"name\":{\"type\":\"string\",\"maxLength\":40},"
    "\"email\":{\"type\":\"string\",\"pattern\":\"[a-z0-9.]+@[a-z0-9]+\\\\.[a-z]{2,4}\"},"
    "\"vip\":{\"type\":\"boolean\"}},\"required\":[\"name\",\"email\"]},"
    "\"items\":{\"type\":\"array\",\"minItems\":1,\"maxItems\":8,\"items\":{\"type\":\"object\","
    "\"properties\":{\"sku\":{\"type\":\"string\",\"pattern\":\"[A-Z]{3}-[0-9]{4}\"},"
    "\"qty\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":99},"
    "\"price\":{\"type\":\"number\",\"minimum\":0,\"maximum\":10000},"
    "\"note\":{\"anyOf\":[{\"type\":\"string\",\"maxLength\":60},{\"type\":\"null\"}]}},"
    "\"required\":[\"sku\",\"qty\",\"price\"]}},"
    "\"total\":{\"type\":\"number\"},"
    "\"comment\":{\"type\":\"string\"}},"
    "\"required\":[\"order_id\",\"created\",\"status\",\"customer\",\"items\",\"total\"]}";

static const char *const NAMES[] = {"Ada Lovelace",   "Grace Hopper", "Linus T",
                                    "Barbara Liskov", "Ken Thompson", "Edsger Dijkstra"};
static const char *const NOTES[] = {"gift wrap please", "leave at the door", "fragile: glass",
                                    "call before delivery"};

/* A document valid under SCHEMA, varied by k. */
static void make_doc(char *buf, size_t cap, int k) {
    int n = snprintf(buf, cap,
                     "{\"order_id\": \"%08x-1b2c-4d3e-8f90-%012x\", \"created\": "
                     "\"2025-0%d-1%dT1%d:2%d:3%dZ\", \"status\": \"%s\", \"customer\": {\"name\": "
                     "\"%s\", \"email\": \"user%d@example.com\", \"vip\": %s}, \"items\": [",
                     0x1234abcd + k, 0x42 * k + 7, 1 + k % 9, k % 10, k % 10, k % 6, k % 10,
                     k % 2 ? "paid" : "shipped", NAMES[k % 6], k, k % 3 ? "true" : "false");
    int n_items = 1 + k % 4;
    for (int i = 0; i < n_items; i++)
        n +=
            snprintf(buf + n, cap - (size_t)n,
                     "%s{\"sku\": \"ABC-%04d\", \"qty\": %d, \"price\": %d.%02d, \"note\": %s%s%s}",
                     i ? ", " : "", 1000 + 37 * i + k, 1 + (i + k) % 20, 10 + 13 * i, k % 100,
                     i % 2 ? "\"" : "", i % 2 ? NOTES[(i + k) % 4] : "null", i % 2 ? "\"" : "");
    snprintf(buf + n, cap - (size_t)n,
             "], \"total\": %d.5, \"comment\": \"Please deliver between nine and five, thanks! "
             "Order %d.\"}",
             100 + k, k);
}

typedef struct run_stats {
    double us_per_step_cold, us_per_step_warm;
    int steps;
} run_stats;

/* Runs n_docs documents through batch constraints (rows of vocab logits), cold then warm. */
static run_stats run_batch(const sc_vocab *voc, const char *re, int batch, bool shared,
                           int32_t **docs, const int *n_doc, int n_docs, int vocab, int32_t eos) {
    sc_constraint **cs = kv_malloc((size_t)batch * sizeof *cs);
    for (int b = 0; b < batch; b++) {
        if (shared && b > 0) { /* the server's constraint cache: one DFA and mask set */
            cs[b] = sc_constraint_ref(cs[0]);
            continue;
        }
        sc_dfa *d = NULL;
        kv_error err;
        KV_CHECK(sc_regex_compile(re, strlen(re), NULL, &d, &err) == 0);
        cs[b] = sc_constraint_new(d, voc);
    }
    float *rows = kv_malloc((size_t)batch * (size_t)vocab * sizeof(float));
    run_stats r = {0};
    for (int pass = 0; pass < 2; pass++) {
        double t = 0;
        int steps = 0;
        for (int k = 0; k < n_docs; k++) {
            int32_t st[64];
            for (int b = 0; b < batch; b++) st[b] = cs[b]->dfa->start;
            for (int i = 0; i <= n_doc[k]; i++) { /* the last step: eos must be allowed */
                memset(rows, 0, (size_t)batch * (size_t)vocab * sizeof(float)); /* not timed */
                int32_t tok = i < n_doc[k] ? docs[k][i] : eos;
                double t0 = kv_now();
                for (int b = 0; b < batch; b++) {
                    float *row = rows + (size_t)b * vocab;
                    int n_ok = sc_constraint_apply(cs[b], st[b], row, vocab, &eos, 1);
                    KV_CHECK(n_ok > 0 && row[tok] == 0.0f); /* the document's token is allowed */
                    st[b] = sc_constraint_advance(cs[b], st[b], tok, &eos, 1);
                    KV_CHECK(st[b] >= 0);
                }
                t += kv_now() - t0;
                steps++;
            }
            for (int b = 0; b < batch; b++) KV_CHECK(cs[b]->dfa->accept[st[b]]);
        }
        if (pass == 0)
            r.us_per_step_cold = 1e6 * t / steps;
        else
            r.us_per_step_warm = 1e6 * t / steps;
        r.steps = steps;
    }
    for (int b = 0; b < batch; b++) sc_constraint_unref(cs[b]);
    free(cs);
    free(rows);
    return r;
}

int main(int argc, char **argv) {
    char path[4096] = "";
    double step_us = 0;
    int n_docs = 8;
    const char *td = getenv("KVSERVE_TESTDATA");
    if (td) snprintf(path, sizeof path, "%s/tokenizers/llama3", td);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc)
            snprintf(path, sizeof path, "%s", argv[++i]);
        else if (!strcmp(argv[i], "--step-us") && i + 1 < argc)
            step_us = atof(argv[++i]);
        else if (!strcmp(argv[i], "--docs") && i + 1 < argc)
            n_docs = atoi(argv[++i]);
    }
    if (n_docs < 1 || n_docs > 64) n_docs = 8;
    tokenizer *tok = NULL;
    kv_error err;
    if (!path[0] || tokenizer_load(&tok, path, &err)) {
        printf("SKIP: no tokenizer (%s): set KVSERVE_TESTDATA or --tokenizer\n", path);
        return 77;
    }
    int vocab = tokenizer_vocab_size(tok);
    double t0 = kv_now();
    char **bytes = kv_calloc((size_t)vocab, sizeof *bytes);
    size_t *lens = kv_calloc((size_t)vocab, sizeof *lens);
    for (int32_t id = 0; id < vocab; id++)
        if (tokenizer_token_bytes(tok, id, &bytes[id], &lens[id], NULL)) lens[id] = 0;
    sc_vocab *voc = sc_vocab_new(vocab, (const char *const *)bytes, lens);
    double t_vocab = kv_now() - t0;
    for (int32_t id = 0; id < vocab; id++) free(bytes[id]);
    free(bytes), free(lens);

    json_t *schema = json_loads(SCHEMA, 0, NULL);
    KV_CHECK(schema);
    char *re = NULL;
    t0 = kv_now();
    KV_CHECK(sc_schema_regex(schema, NULL, &re, &err) == 0);
    sc_dfa *d = NULL;
    KV_CHECK(sc_regex_compile(re, strlen(re), NULL, &d, &err) == 0);
    double t_compile = kv_now() - t0;
    int n_states = d->n_states;
    sc_dfa_free(d);

    int32_t *docs[64];
    int n_doc[64], total = 0;
    for (int k = 0; k < n_docs; k++) {
        char buf[4096];
        make_doc(buf, sizeof buf, k);
        KV_CHECK(tokenizer_encode(tok, buf, strlen(buf), false, &docs[k], &n_doc[k], &err) == 0);
        total += n_doc[k];
    }
    int32_t eos = tokenizer_eos_id(tok) >= 0 ? tokenizer_eos_id(tok) : 128001;

    /* the sampler alone on one row, for scale */
    sampler smp;
    sampler_init(&smp, vocab, &eos, 1, 1);
    sampler_params p;
    sampler_params_default(&p);
    p.max_tokens = 1 << 20;
    sampler_state sst;
    sampler_state_init(&smp, &sst, &p, NULL, 0);
    float *row = kv_malloc((size_t)vocab * sizeof(float));
    uint64_t x = 88172645463325252ull;
    double t_sample = 0;
    for (int i = 0; i < 200; i++) {
        for (int v = 0; v < vocab; v++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            row[v] = (float)(x >> 40) / (float)(1 << 24) * 8.0f;
        }
        double s0 = kv_now();
        sampler_sample(&smp, &p, &sst, row, NULL);
        t_sample += kv_now() - s0;
    }
    free(row);
    sampler_state_free(&sst);
    sampler_free(&smp);

    printf("structured outputs, tokenizer %s (vocab %d, %d trie nodes): vocab trie %.0f ms, "
           "schema -> DFA %.1f ms (%zu-byte regex, %d states)\n",
           path, vocab, voc->n_nodes, 1e3 * t_vocab, 1e3 * t_compile, strlen(re), n_states);
    printf("%d documents, %d tokens (+1 eos step each); sampler alone: %.1f us/row "
           "(temperature 1, full row)\n",
           n_docs, total, 1e6 * t_sample / 200);
    printf("%-8s %14s %14s %s\n", "batch", "cold us/step", "warm us/step",
           step_us > 0 ? "share of the given step (cold / warm)" : "");
    const int batches[] = {1, 64, 64};
    const char *const labels[] = {"1", "64", "64 own"};
    for (int k = 0; k < 3; k++) {
        /* 64: the same schema in every request, shared through the cache; 64 own: a separate
         * constraint (and mask cache) per request, e.g. 64 different schemas */
        run_stats r = run_batch(voc, re, batches[k], k < 2, docs, n_doc, n_docs, vocab, eos);
        printf("%-8s %14.1f %14.1f", labels[k], r.us_per_step_cold, r.us_per_step_warm);
        if (step_us > 0)
            printf("   %.1f%% / %.1f%% of %.0f us", 100 * r.us_per_step_cold / step_us,
                   100 * r.us_per_step_warm / step_us, step_us);
        printf("\n");
    }
    for (int k = 0; k < n_docs; k++) free(docs[k]);
    free(re);
    json_decref(schema);
    sc_vocab_free(voc);
    tokenizer_free(tok);
    return 0;
}

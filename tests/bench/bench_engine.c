/* bench_engine: the engine in process (no HTTP): prefill tok/s, decode tok/s at batch 1 and 32,
 * and the TTFT of a long prompt cold, with a full GPU prefix hit (one token computed), and (with
 * --offload-gib) served from the host tier after the GPU cache was emptied, with their ratios
 * measured in the same run. Drives scheduler_step on this thread, so engine overhead counts.
 *   bench_engine --model DIR [--device cpu|cuda] [--load-format safetensors|dummy]
 *                [--prompt-len 2000] [--decode-steps 64] [--blocks N] [--offload-gib G]
 * On the H100: bench_engine --model tests/bench/models/llama-3.1-8b --load-format dummy
 *              --device cuda --offload-gib 8 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "kvcache/prefix_cache.h"
#include "tests/bench/bench_util.h"

int main(int argc, char **argv) {
    const char *model_dir = NULL, *device = "cpu";
    model_load_format fmt = MODEL_LOAD_SAFETENSORS;
    int prompt_len = 2000, steps = 64, n_blocks = 0, n_threads = 0, budget = 4096;
    double offload_gib = 0;
    static const struct option opts[] = {{"model", required_argument, NULL, 'm'},
                                         {"device", required_argument, NULL, 'd'},
                                         {"load-format", required_argument, NULL, 'f'},
                                         {"prompt-len", required_argument, NULL, 'p'},
                                         {"decode-steps", required_argument, NULL, 's'},
                                         {"blocks", required_argument, NULL, 'b'},
                                         {"threads", required_argument, NULL, 'j'},
                                         {"offload-gib", required_argument, NULL, 'o'},
                                         {NULL, 0, NULL, 0}};
    for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        if (c == 'm')
            model_dir = optarg;
        else if (c == 'd')
            device = optarg;
        else if (c == 'f')
            fmt = strcmp(optarg, "dummy") == 0 ? MODEL_LOAD_DUMMY : MODEL_LOAD_SAFETENSORS;
        else if (c == 'p')
            prompt_len = atoi(optarg);
        else if (c == 's')
            steps = atoi(optarg);
        else if (c == 'b')
            n_blocks = atoi(optarg);
        else if (c == 'j')
            n_threads = atoi(optarg);
        else if (c == 'o')
            offload_gib = atof(optarg);
        else {
            fprintf(stderr, "usage: bench_engine --model DIR [--device cpu|cuda] [--load-format "
                            "dummy] [--prompt-len N] [--decode-steps N] [--blocks N] "
                            "[--offload-gib G]\n");
            return 2;
        }
    }
    if (!model_dir) {
        const char *td = getenv("KVSERVE_TESTDATA");
        static char dir[1024];
        snprintf(dir, sizeof dir, "%s/models/stories260K", td ? td : "../shared/testdata");
        model_dir = dir;
    }
    if (prompt_len < 2 || prompt_len > budget) budget = prompt_len > budget ? prompt_len : budget;
    kv_error err = {{0}};
    backend *be = backend_create(device, n_threads, &err);
    model *m = be ? model_load(model_dir, be,
                               &(model_load_options){.format = fmt, .max_tokens = budget}, &err)
                  : NULL;
    if (!m) {
        fprintf(stderr, "bench_engine: %s (skipped)\n", err.msg);
        backend_destroy(be);
        return 77;
    }
    if (n_blocks <= 0) {
        backend_kv_layout l = model_kv_layout(m, 16);
        n_blocks = bench_blocks_fitting(be, &l, 0.8);
        int want = 4 * (prompt_len + 64) / 16 + 32 * (32 + steps + 16) / 16 + 64;
        if (n_blocks < 0 || n_blocks > 4 * want) n_blocks = 4 * want; /* enough, not all memory */
    }
    scheduler_config cfg;
    scheduler_config_default(&cfg);
    cfg.n_gpu_blocks = n_blocks;
    cfg.max_num_batched_tokens = budget;
    cfg.max_model_len = prompt_len + steps + 64;
    cfg.offload.size_gib = offload_gib;
    scheduler *s = scheduler_create(m, &cfg, &err);
    if (!s) {
        fprintf(stderr, "bench_engine: %s\n", err.msg);
        return 1;
    }
    scheduler_wait_tier_ready(s);
    int vocab = m->vocab;
    int32_t *prompt = malloc((size_t)prompt_len * sizeof *prompt);
    bench_probe p = {0};

    /* warm-up (allocations, GEMM plans), then cold prefill = TTFT without a hit */
    bench_fill_random(prompt, prompt_len, vocab, 1);
    bench_ttft(s, prompt, prompt_len, "warm-up", &p);
    bench_fill_random(prompt, prompt_len, vocab, 2);
    double t_cold = bench_ttft(s, prompt, prompt_len, "cold", &p);
    double t_hit = bench_ttft(s, prompt, prompt_len, "cold", &p);
    int hit_gpu = p.n_cached_gpu;
    double t_host = 0;
    int hit_host = 0;
    if (offload_gib > 0) {
        /* let the stores finish, drop the GPU cache, ask again: the blocks come from the host */
        scheduler_run_until_idle(s);
        prefix_cache_reset(scheduler_prefix_cache(s));
        t_host = bench_ttft(s, prompt, prompt_len, "cold", &p);
        hit_host = p.n_cached_host;
    }
    double dec1 = bench_decode_rate(s, 1, 32, steps, vocab, 900, "decode-1");
    double dec32 = bench_decode_rate(s, 32, 32, steps, vocab, 900, "decode-2");
    scheduler_stats st = scheduler_get_stats(s);

    printf("bench_engine: %s, %s, %d layers, dim %d, kv %s, block 16, %d GPU blocks, "
           "budget %d tokens/step, %.0f MB weights\n",
           model_dir, be->name, m->cfg.n_layers, m->cfg.hidden_size, kv_dtype_name(be->kv_dtype),
           n_blocks, budget, m->weight_bytes / 1e6);
    printf("| measure | value |\n|---|---|\n");
    printf("| prefill, %d-token prompt | %.0f tok/s |\n", prompt_len, prompt_len / t_cold);
    printf("| decode, batch 1 | %.1f tok/s (weights %.1f GB/s) |\n", dec1,
           dec1 * m->weight_bytes / 1e9);
    printf("| decode, batch 32 | %.1f tok/s |\n", dec32);
    printf("| TTFT %d tokens, no cache | %.3f ms |\n", prompt_len, t_cold * 1e3);
    printf("| TTFT %d tokens, full GPU prefix hit (%d cached) | %.3f ms |\n", prompt_len, hit_gpu,
           t_hit * 1e3);
    printf("| TTFT ratio cold / GPU hit | %.1fx |\n", t_cold / t_hit);
    if (offload_gib > 0) {
        printf("| TTFT %d tokens, host-tier hit (%d from host) | %.3f ms |\n", prompt_len, hit_host,
               t_host * 1e3);
        printf("| TTFT ratio cold / host hit | %.1fx |\n", t_cold / t_host);
        printf("| host tier stored / loaded | %.1f / %.1f MB |\n", st.host.stored_bytes / 1e6,
               st.host.loaded_bytes / 1e6);
    }
    free(prompt);
    scheduler_free(s);
    model_free(m);
    backend_destroy(be);
    return 0;
}

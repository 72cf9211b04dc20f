/* libFuzzer target: config.json text through hf_config_parse (and, when it parses, the same
 * bytes as generation_config.json and the RoPE frequencies of every layer kind, which must be
 * finite and positive, and at most 1 without linear or longrope factors). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "model/hf_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    hf_config cfg;
    kv_error err = {{0}};
    if (hf_config_parse(&cfg, (const char *)data, size, &err) != 0) {
        KV_CHECK(err.msg[0] != '\0');
        return 0;
    }
    KV_CHECK(cfg.head_dim > 0 && cfg.head_dim % 2 == 0);
    KV_CHECK(cfg.n_kv_heads > 0 && cfg.n_heads % cfg.n_kv_heads == 0);
    KV_CHECK(cfg.n_eos >= 0 && cfg.n_eos <= HF_CONFIG_MAX_EOS);
    KV_CHECK(cfg.rot_dim >= 2 && cfg.rot_dim <= cfg.head_dim && cfg.rot_dim % 2 == 0);
    KV_CHECK(cfg.sliding_window >= 0 && cfg.n_layers <= HF_CONFIG_MAX_LAYERS);
    float *inv_freq = kv_malloc((size_t)cfg.rot_dim / 2 * sizeof *inv_freq);
    bool factors = cfg.rope_type == HF_ROPE_LINEAR || cfg.rope_type == HF_ROPE_LONGROPE;
    for (int kind = 0; kind < 3; kind++) {
        hf_config_rope_inv_freq_for(&cfg, kind == 1, kind == 2, inv_freq);
        for (int i = 0; i < cfg.rot_dim / 2; i++)
            KV_CHECK(isfinite(inv_freq[i]) && inv_freq[i] >= 0 && (factors || inv_freq[i] <= 1));
    }
    free(inv_freq);
    hf_config_apply_generation(&cfg, (const char *)data, size, &err);
    KV_CHECK(cfg.n_eos >= 0 && cfg.n_eos <= HF_CONFIG_MAX_EOS);
    return 0;
}

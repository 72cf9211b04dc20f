/* libFuzzer target: config.json text through hf_config_parse (and, when it parses, the same
 * bytes as generation_config.json and the RoPE frequencies, which must lie in (0, 1]). */
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
    float *inv_freq = kv_malloc((size_t)cfg.head_dim / 2 * sizeof *inv_freq);
    hf_config_rope_inv_freq(&cfg, inv_freq);
    for (int i = 0; i < cfg.head_dim / 2; i++) KV_CHECK(inv_freq[i] >= 0 && inv_freq[i] <= 1);
    free(inv_freq);
    hf_config_apply_generation(&cfg, (const char *)data, size, &err);
    KV_CHECK(cfg.n_eos >= 0 && cfg.n_eos <= HF_CONFIG_MAX_EOS);
    return 0;
}

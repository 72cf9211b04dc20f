/* libFuzzer target: random logits x random sampling parameters through sampler_sample. The first
 * 48 bytes are the parameters (any int / float bits: top_k of any size, NaN temperatures, ...),
 * kept only when sampler_params_validate accepts them, as the server does; the rest are logits
 * (NaN and Inf included). The drawn token must lie in the vocabulary. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/sampler.h"

enum { PARAM_BYTES = 48 };

static uint32_t take_u32(const uint8_t *d) {
    uint32_t v;
    memcpy(&v, d, sizeof v);
    return v;
}

static float take_f32(const uint8_t *d) {
    float v;
    memcpy(&v, d, sizeof v);
    return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < PARAM_BYTES + sizeof(float)) return 0;
    int vocab = (int)((size - PARAM_BYTES) / sizeof(float));
    if (vocab > 1 << 16) vocab = 1 << 16;
    sampler_params p;
    sampler_params_default(&p);
    p.temperature = take_f32(data);
    p.top_p = take_f32(data + 4);
    p.top_k = (int)take_u32(data + 8);
    p.min_p = take_f32(data + 12);
    p.presence_penalty = take_f32(data + 16);
    p.frequency_penalty = take_f32(data + 20);
    p.repetition_penalty = take_f32(data + 24);
    p.has_seed = data[28] & 1;
    p.seed = take_u32(data + 29);
    p.min_tokens = data[33] % 4;
    p.max_tokens = 1 + data[34] % 8;
    p.logprobs = (int)(data[35] % (SAMPLER_MAX_LOGPROBS + 2)) - 1;
    p.ignore_eos = data[36] & 1;
    int32_t stop = (int32_t)(take_u32(data + 40) % (uint32_t)vocab);
    p.stop_token_ids = &stop;
    p.n_stop_token_ids = data[37] & 1;
    int32_t eos = (int32_t)(take_u32(data + 44) % (uint32_t)vocab);
    kv_error err = {{0}};
    if (sampler_params_validate(&p, vocab, &err) != 0) {
        KV_CHECK(err.msg[0] != '\0');
        return 0;
    }

    float *logits = kv_malloc((size_t)vocab * sizeof(float));
    float *row = kv_malloc((size_t)vocab * sizeof(float));
    memcpy(logits, data + PARAM_BYTES, (size_t)vocab * sizeof(float));
    sampler s;
    sampler_init(&s, vocab, &eos, 1, 1);
    sampler_state st;
    int32_t prompt[2] = {0, (int32_t)(vocab - 1)};
    sampler_state_init(&s, &st, &p, prompt, 2);
    for (int i = 0; i < p.max_tokens; i++) {
        memcpy(row, logits, (size_t)vocab * sizeof(float));
        sampler_logprobs lp;
        int32_t t = sampler_sample(&s, &p, &st, row, &lp);
        KV_CHECK(t >= 0 && t < vocab);
        if (p.logprobs >= 0) KV_CHECK(lp.token == t && lp.n_top <= p.logprobs);
        if (sampler_check_finish(&s, &p, &st, t) != KV_FINISH_NONE) break;
    }
    sampler_state_free(&st);
    sampler_free(&s);
    free(row);
    free(logits);
    return 0;
}

/* Turns a row of logits into the next token: penalties, temperature, top-k, top-p, min-p, seeded
 * randomness, and top-N logprobs of the raw distribution. Owns nothing beyond per-request state;
 * knows nothing of batches or HTTP. */
#ifndef KVSERVE_SAMPLER_H
#define KVSERVE_SAMPLER_H

#include "model/common.h"

#define SAMPLER_MAX_LOGPROBS 20

/* Per-request sampling parameters (OpenAI / vLLM meaning). Defaults: sampler_params_default. */
typedef struct sampler_params {
    float temperature;        /* 0 = greedy */
    float top_p;              /* 1 = off */
    int top_k;                /* <= 0 = off */
    float min_p;              /* 0 = off */
    bool has_seed;
    uint64_t seed;            /* same seed, same output, whatever the batch */
    float presence_penalty;   /* 0 = off */
    float frequency_penalty;  /* 0 = off */
    float repetition_penalty; /* 1 = off; applies to prompt and output tokens */
    int max_tokens;
    int min_tokens;           /* eos and stop ids are suppressed before this many tokens */
    bool ignore_eos;
    int32_t *stop_token_ids;  /* owned by the params (free with sampler_params_free) */
    int n_stop_token_ids;
    int logprobs;             /* top-N logprobs per generated token; -1 = none */
    int prompt_logprobs;      /* top-N logprobs per prompt token; -1 = none */
} sampler_params;

void sampler_params_default(sampler_params *p);
void sampler_params_free(sampler_params *p);
void sampler_params_copy(sampler_params *dst, const sampler_params *src);

#endif

/* Turns a row of logits into the next token: penalties, temperature, top-k, top-p, min-p, seeded
 * randomness, and top-N logprobs of the raw distribution. Owns nothing beyond per-request state;
 * knows nothing of batches or HTTP. */
#ifndef KVSERVE_SAMPLER_H
#define KVSERVE_SAMPLER_H

#include "model/common.h"
#include "model/structured/token_mask.h"

#define SAMPLER_MAX_LOGPROBS 20

typedef struct sampler_logprob {
    int32_t token;
    float logprob;
} sampler_logprob;

/* Per-request sampling parameters (OpenAI / vLLM meaning). Defaults: sampler_params_default. */
typedef struct sampler_params {
    float temperature; /* 0 = greedy */
    float top_p;       /* 1 = off */
    int top_k;         /* <= 0 = off */
    float min_p;       /* 0 = off */
    bool has_seed;
    uint64_t seed;            /* same seed, same output, whatever the batch */
    float presence_penalty;   /* 0 = off */
    float frequency_penalty;  /* 0 = off */
    float repetition_penalty; /* 1 = off; applies to prompt and output tokens */
    int max_tokens;
    int min_tokens; /* eos and stop ids are suppressed before this many tokens */
    bool ignore_eos;
    int32_t *stop_token_ids; /* owned by the params (free with sampler_params_free) */
    int n_stop_token_ids;
    int logprobs;        /* top-N logprobs per generated token; -1 = none */
    int prompt_logprobs; /* top-N logprobs per prompt token; -1 = none */
    /* logit_bias (owned): -100 bans the token, +100 forces it (the +100 tokens are the only ones
     * left), values between are added to the logit */
    int32_t *bias_ids;
    float *bias_values;
    int n_bias;
    /* structured output: the tokens allowed follow this automaton (a counted reference; NULL =
     * unconstrained); eos is allowed only in its accepting states */
    sc_constraint *constraint;
} sampler_params;

/* The range of a logit_bias value. */
#define SAMPLER_BIAS_MAX 100.0f

/* temperature 1, top_p 1, top_k 0, min_p 0, no seed, no penalties, max_tokens 16 (the OpenAI
 * completions default), min_tokens 0, no stop ids, logprobs and prompt_logprobs -1. */
void sampler_params_default(sampler_params *p);
void sampler_params_free(sampler_params *p);
/* Deep copy (dst gets its own stop_token_ids); dst must not hold anything. */
void sampler_params_copy(sampler_params *dst, const sampler_params *src);
/* The ranges of the numeric sampling parameters, written here and nowhere else (the HTTP layer
 * checks request values against them with sampler_param_check). vLLM's SamplingParams limits,
 * except repetition_penalty: vLLM takes any value > 0, kvserve keeps (0, 2]. */
typedef struct sampler_range {
    const char *name; /* the request field and the sampler_params member */
    double lo, hi;
    bool lo_open, hi_open; /* lo (hi) itself is out of range */
    bool is_float;         /* stored as float: the value must also survive narrowing */
    const char *text;      /* the range in words, for the message: "in (0, 1]" */
} sampler_range;

/* NULL when name is not a ranged parameter. */
const sampler_range *sampler_range_of(const char *name);
/* Checks value, as the client sent it (before narrowing to float), against the range of name,
 * which must be one sampler_range_of knows. Returns -1 with a message naming the parameter, its
 * range and the value when it is out (or when a float field would get a different, out-of-range
 * value once narrowed: 1e300 does not fit, 1e-50 becomes 0). */
int sampler_param_check(const char *name, double value, kv_error *err);
/* Checks every ranged field through sampler_param_check, then max_tokens >= 1, 0 <= min_tokens
 * <= max_tokens, logprobs in [-1, SAMPLER_MAX_LOGPROBS], stop ids in [0, vocab). Returns -1 with a
 * message naming the request field when one is out of range. */
int sampler_params_validate(const sampler_params *p, int vocab, kv_error *err);

/* --- randomness: xoshiro256**, one stream per request --- */

typedef struct sampler_rng {
    uint64_t s[4];
} sampler_rng;

/* Seeds through splitmix64: any seed, 0 included, gives a good state. */
void sampler_rng_seed(sampler_rng *r, uint64_t seed);
uint64_t sampler_rng_next(sampler_rng *r);
/* Uniform in [0, 1) with 53 random bits. */
double sampler_rng_uniform(sampler_rng *r);

/* --- the engine-wide sampler and per-request state --- */

typedef struct sampler_cand {
    float logit;
    float weight; /* exp(logit - max logit) once top-k is done */
    int32_t token;
} sampler_cand;

/* One per engine thread: vocabulary size, the model's eos ids, scratch rows, and the RNG that
 * seeds requests without a seed. Not thread-safe (scratch is shared between calls). */
typedef struct sampler {
    int vocab;
    int32_t *eos_ids; /* owned copy of the eos list (generation_config may give several) */
    int n_eos;
    sampler_rng rng;
    float *raw;         /* [vocab] unmodified logits kept for logprobs */
    sampler_cand *cand; /* [vocab] candidates of top-k / top-p */
    double *block_z;    /* [vocab / 1024 + 1] weight sums of row blocks */
} sampler;

/* Per request: its RNG, how many tokens it generated, and the token counts the penalties need
 * (an open-addressing map token -> counts; empty when no penalty is on). */
typedef struct sampler_token_count {
    int32_t token; /* -1 = empty slot */
    int32_t n_out; /* times generated */
    bool in_prompt;
} sampler_token_count;

typedef struct sampler_state {
    sampler_rng rng;
    int n_generated;
    bool track_tokens; /* some penalty is on */
    sampler_token_count *counts;
    uint32_t counts_mask; /* capacity - 1 */
    int n_counts;
    int32_t sc_state; /* the constraint's automaton state; -1 = none */
} sampler_state;

/* Logprobs of one position under the RAW distribution (log_softmax of the unmodified logits, as
 * vLLM's default "raw_logprobs"): the given token's logprob, its rank (the number of tokens with a
 * logprob >= its own, as vLLM counts: 1 for the most likely), and the n_top most likely tokens,
 * most likely first (ties: lower id first). */
typedef struct sampler_logprobs {
    int32_t token;
    float logprob;
    int rank;
    int n_top;
    sampler_logprob top[SAMPLER_MAX_LOGPROBS];
} sampler_logprobs;

/* eos_ids is copied. seed seeds the engine RNG (requests without a seed draw their own seed from
 * it when their state is made). */
void sampler_init(sampler *s, int vocab, const int32_t *eos_ids, int n_eos, uint64_t seed);
void sampler_free(sampler *s);

/* Starts a request: seeds its RNG (from p->seed, or from the engine RNG) and, when a penalty is
 * on, records the prompt tokens for the repetition penalty. */
void sampler_state_init(sampler *s, sampler_state *st, const sampler_params *p,
                        const int32_t *prompt, int n_prompt);
void sampler_state_free(sampler_state *st);

/* Picks the next token from one row of logits [vocab] (overwritten: used as scratch) and records it
 * in st. In order: raw logprobs are taken (when p->logprobs >= 0 and lp is not NULL); the
 * constraint's mask; logit_bias; eos and stop ids are masked while fewer than min_tokens were
 * generated; repetition (prompt + output),
 * frequency and presence (output) penalties; then greedy argmax when temperature < 1e-5, else
 * temperature, min_p, top_k, top_p and a draw from st's RNG. One draw per call, so a seeded
 * request gives the same tokens whatever else the engine samples in between. */
int32_t sampler_sample(sampler *s, const sampler_params *p, sampler_state *st, float *logits,
                       sampler_logprobs *lp);
/* sampler_sample returns this when a constraint or logit_bias is set and no token is left to
 * choose (the constraint, biases and min_tokens together ban every token): the request must end
 * with an error. */
#define SAMPLER_NO_TOKEN (-1)
/* The penalty step of sampler_sample alone, in place on logits [vocab] (vLLM's apply_penalties):
 * repetition divides positive logits and multiplies the others for tokens in the prompt or the
 * output, then logit -= frequency * n_out + presence * (n_out > 0) for output tokens. */
void sampler_apply_penalties(const sampler_params *p, const sampler_state *st, float *logits);
/* Whether the request ends after generating token (already recorded by sampler_sample): LENGTH,
 * STOP (eos or a stop id) or NONE. Checked as vLLM v1 does: length first, nothing else before
 * min_tokens, then eos, then stop ids. */
kv_finish sampler_check_finish(const sampler *s, const sampler_params *p, const sampler_state *st,
                               int32_t token);

/* Raw logprobs of token at one row of logits [vocab] (not modified), with the n_top best. */
void sampler_logprobs_of(const float *logits, int vocab, int32_t token, int n_top,
                         sampler_logprobs *out);
/* Prompt logprobs: row i of logits [n_rows, vocab] scores next_tokens[i] (the prompt token after
 * position i); out[i] gets its logprob, rank and the n_top best. */
void sampler_prompt_logprobs(const float *logits, int n_rows, int vocab, const int32_t *next_tokens,
                             int n_top, sampler_logprobs *out);

#endif

/* Sampling one token from a row of logits: penalties, temperature, min-p, top-k, top-p, seeded
 * draws, raw logprobs. Works on one row at a time in host memory; O(vocab) per token with a
 * partial selection for top-k and a sort limited to the likely head for top-p. */
#include "model/sampler.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Temperatures below this are greedy (vLLM's _SAMPLING_EPS). */
#define SAMPLER_GREEDY_EPS 1e-5f
/* Rows are summed in blocks of WBLOCK elements: float vector lanes inside a block, doubles across
 * blocks (keeps ~1e-7 relative accuracy at 128k terms), and the block sums let a draw skip to its
 * block instead of walking the whole row. */
enum { WBLOCK = 1024 };

/* --- parameters --- */

void sampler_params_default(sampler_params *p) {
    memset(p, 0, sizeof(*p));
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->repetition_penalty = 1.0f;
    p->max_tokens = 16;
    p->logprobs = -1;
    p->prompt_logprobs = -1;
}

void sampler_params_free(sampler_params *p) {
    free(p->stop_token_ids);
    p->stop_token_ids = NULL;
    p->n_stop_token_ids = 0;
    free(p->bias_ids);
    free(p->bias_values);
    p->bias_ids = NULL;
    p->bias_values = NULL;
    p->n_bias = 0;
    sc_constraint_unref(p->constraint);
    p->constraint = NULL;
}

void sampler_params_copy(sampler_params *dst, const sampler_params *src) {
    *dst = *src;
    dst->stop_token_ids = NULL;
    if (src->n_stop_token_ids > 0) {
        size_t n = (size_t)src->n_stop_token_ids * sizeof(int32_t);
        dst->stop_token_ids = kv_malloc(n);
        memcpy(dst->stop_token_ids, src->stop_token_ids, n);
    }
    dst->bias_ids = NULL;
    dst->bias_values = NULL;
    if (src->n_bias > 0) {
        dst->bias_ids = kv_malloc((size_t)src->n_bias * sizeof(int32_t));
        dst->bias_values = kv_malloc((size_t)src->n_bias * sizeof(float));
        memcpy(dst->bias_ids, src->bias_ids, (size_t)src->n_bias * sizeof(int32_t));
        memcpy(dst->bias_values, src->bias_values, (size_t)src->n_bias * sizeof(float));
    }
    dst->constraint = sc_constraint_ref(src->constraint);
}

static const sampler_range sampler_ranges[] = {
    {"temperature", 0, INFINITY, false, true, true, "a number >= 0"},
    {"top_p", 0, 1, true, false, true, "in (0, 1]"},
    {"top_k", -1, INT_MAX, false, false, false, "-1 or 0 (disabled) or at least 1"},
    {"min_p", 0, 1, false, false, true, "in [0, 1]"},
    {"presence_penalty", -2, 2, false, false, true, "in [-2, 2]"},
    {"frequency_penalty", -2, 2, false, false, true, "in [-2, 2]"},
    {"repetition_penalty", 0, 2, true, false, true, "in (0, 2]"},
};

const sampler_range *sampler_range_of(const char *name) {
    for (size_t i = 0; i < sizeof sampler_ranges / sizeof sampler_ranges[0]; i++)
        if (strcmp(sampler_ranges[i].name, name) == 0) return &sampler_ranges[i];
    return NULL;
}

static bool sampler_range_holds(const sampler_range *r, double x) {
    bool lo_ok = r->lo_open ? x > r->lo : x >= r->lo; /* false for NaN */
    bool hi_ok = r->hi_open ? x < r->hi : x <= r->hi;
    return lo_ok && hi_ok;
}

/* The shortest of %.15g / %.17g that reads back as x, so 0.1 prints as the client wrote it. */
static void format_double(char *buf, size_t n, double x) {
    snprintf(buf, n, "%.15g", x);
    if (strtod(buf, NULL) != x) snprintf(buf, n, "%.17g", x);
}

int sampler_param_check(const char *name, double value, kv_error *err) {
    const sampler_range *r = sampler_range_of(name);
    KV_CHECK(r);
    char sent[40];
    format_double(sent, sizeof sent, value);
    if (!sampler_range_holds(r, value))
        return kv_error_set(err, "'%s' must be %s, got %s", name, r->text, sent);
    if (!r->is_float) return 0;
    if (fabs(value) > FLT_MAX) /* checked before the cast: out of float's range it is undefined */
        return kv_error_set(err, "'%s' must be %s and fit a 32-bit float, got %s", name, r->text,
                            sent);
    if (!sampler_range_holds(r, (double)(float)value)) {
        char narrowed[40];
        format_double(narrowed, sizeof narrowed, (double)(float)value);
        return kv_error_set(err, "'%s' must be %s, got %s (%s as a 32-bit float)", name, r->text,
                            sent, narrowed);
    }
    return 0;
}

int sampler_params_validate(const sampler_params *p, int vocab, kv_error *err) {
    if (sampler_param_check("temperature", p->temperature, err) ||
        sampler_param_check("top_p", p->top_p, err) ||
        sampler_param_check("top_k", p->top_k, err) ||
        sampler_param_check("min_p", p->min_p, err) ||
        sampler_param_check("presence_penalty", p->presence_penalty, err) ||
        sampler_param_check("frequency_penalty", p->frequency_penalty, err) ||
        sampler_param_check("repetition_penalty", p->repetition_penalty, err))
        return -1;
    if (p->max_tokens < 1)
        return kv_error_set(err, "max_tokens must be at least 1, got %d", p->max_tokens);
    if (p->min_tokens < 0 || p->min_tokens > p->max_tokens)
        return kv_error_set(err, "min_tokens must be in [0, max_tokens = %d], got %d",
                            p->max_tokens, p->min_tokens);
    if (p->logprobs < -1 || p->logprobs > SAMPLER_MAX_LOGPROBS)
        return kv_error_set(err, "logprobs must be at most %d, got %d", SAMPLER_MAX_LOGPROBS,
                            p->logprobs);
    if (p->prompt_logprobs < -1 || p->prompt_logprobs > SAMPLER_MAX_LOGPROBS)
        return kv_error_set(err, "prompt_logprobs must be at most %d, got %d", SAMPLER_MAX_LOGPROBS,
                            p->prompt_logprobs);
    for (int i = 0; i < p->n_stop_token_ids; i++)
        if (p->stop_token_ids[i] < 0 || p->stop_token_ids[i] >= vocab)
            return kv_error_set(err, "stop_token_ids[%d] = %d is outside the vocabulary [0, %d)", i,
                                p->stop_token_ids[i], vocab);
    return 0;
}

/* --- RNG: splitmix64 seeding, xoshiro256** stream (Blackman & Vigna) --- */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void sampler_rng_seed(sampler_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

uint64_t sampler_rng_next(sampler_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double sampler_rng_uniform(sampler_rng *r) {
    return (double)(sampler_rng_next(r) >> 11) * (1.0 / 9007199254740992.0); /* 2^-53 */
}

/* --- engine sampler and per-request state --- */

void sampler_init(sampler *s, int vocab, const int32_t *eos_ids, int n_eos, uint64_t seed) {
    KV_CHECK(vocab > 0 && n_eos >= 0);
    memset(s, 0, sizeof(*s));
    s->vocab = vocab;
    s->n_eos = n_eos;
    s->eos_ids = kv_malloc((size_t)(n_eos ? n_eos : 1) * sizeof(int32_t));
    if (n_eos) memcpy(s->eos_ids, eos_ids, (size_t)n_eos * sizeof(int32_t));
    sampler_rng_seed(&s->rng, seed);
    s->raw = kv_malloc((size_t)vocab * sizeof(float));
    s->cand = kv_malloc((size_t)vocab * sizeof(sampler_cand));
    s->block_z = kv_malloc(((size_t)vocab / WBLOCK + 1) * sizeof(double));
}

void sampler_free(sampler *s) {
    free(s->eos_ids);
    free(s->raw);
    free(s->cand);
    free(s->block_z);
    memset(s, 0, sizeof(*s));
}

static uint32_t token_slot_home(int32_t token, uint32_t mask) {
    return ((uint32_t)token * 0x9e3779b1u) & mask;
}

static void counts_grow(sampler_state *st, uint32_t cap) {
    sampler_token_count *old = st->counts;
    uint32_t old_cap = old ? st->counts_mask + 1 : 0;
    st->counts = kv_malloc((size_t)cap * sizeof(sampler_token_count));
    for (uint32_t i = 0; i < cap; i++) st->counts[i] = (sampler_token_count){.token = -1};
    st->counts_mask = cap - 1;
    for (uint32_t i = 0; i < old_cap; i++) {
        if (old[i].token < 0) continue;
        uint32_t j = token_slot_home(old[i].token, st->counts_mask);
        while (st->counts[j].token >= 0) j = (j + 1) & st->counts_mask;
        st->counts[j] = old[i];
    }
    free(old);
}

/* The count entry of token, inserted when missing. */
static sampler_token_count *counts_entry(sampler_state *st, int32_t token) {
    if ((uint32_t)(st->n_counts + 1) * 2 > st->counts_mask + 1)
        counts_grow(st, 2 * (st->counts_mask + 1));
    uint32_t j = token_slot_home(token, st->counts_mask);
    while (st->counts[j].token >= 0 && st->counts[j].token != token) j = (j + 1) & st->counts_mask;
    if (st->counts[j].token < 0) {
        st->counts[j] = (sampler_token_count){.token = token};
        st->n_counts++;
    }
    return &st->counts[j];
}

void sampler_state_init(sampler *s, sampler_state *st, const sampler_params *p,
                        const int32_t *prompt, int n_prompt) {
    memset(st, 0, sizeof(*st));
    sampler_rng_seed(&st->rng, p->has_seed ? p->seed : sampler_rng_next(&s->rng));
    st->sc_state = p->constraint ? p->constraint->dfa->start : -1;
    st->track_tokens = p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f ||
                       p->repetition_penalty != 1.0f;
    if (!st->track_tokens) return;
    uint32_t cap = 16;
    while (cap < 2u * (uint32_t)n_prompt + 16) cap *= 2;
    counts_grow(st, cap);
    if (p->repetition_penalty == 1.0f) return; /* the prompt only matters to repetition */
    for (int i = 0; i < n_prompt; i++) {
        KV_CHECK(prompt[i] >= 0 && prompt[i] < s->vocab); /* the API layer rejects others */
        counts_entry(st, prompt[i])->in_prompt = true;
    }
}

void sampler_state_free(sampler_state *st) {
    free(st->counts);
    memset(st, 0, sizeof(*st));
    st->sc_state = -1;
}

/* -100 bans, +100 forces (every token without +100 is banned), others add. */
static void apply_logit_bias(const sampler *s, const sampler_params *p, float *logits) {
    int n_force = 0;
    for (int i = 0; i < p->n_bias; i++) n_force += p->bias_values[i] >= SAMPLER_BIAS_MAX;
    if (n_force > 0) {
        float keep[64];
        int32_t ids[64];
        int n_keep = 0;
        for (int i = 0; i < p->n_bias && n_keep < 64; i++) {
            if (p->bias_values[i] < SAMPLER_BIAS_MAX || p->bias_ids[i] >= s->vocab) continue;
            ids[n_keep] = p->bias_ids[i];
            keep[n_keep++] = logits[p->bias_ids[i]];
        }
        for (int t = 0; t < s->vocab; t++) logits[t] = -INFINITY;
        for (int i = 0; i < n_keep; i++) logits[ids[i]] = keep[i];
        return;
    }
    for (int i = 0; i < p->n_bias; i++) {
        int32_t t = p->bias_ids[i];
        if (t < 0 || t >= s->vocab) continue;
        if (p->bias_values[i] <= -SAMPLER_BIAS_MAX)
            logits[t] = -INFINITY;
        else
            logits[t] += p->bias_values[i];
    }
}

/* --- the steps of sampler_sample --- */

void sampler_apply_penalties(const sampler_params *p, const sampler_state *st, float *logits) {
    if (!st->track_tokens) return;
    float rep = p->repetition_penalty, freq = p->frequency_penalty, pres = p->presence_penalty;
    for (uint32_t i = 0; i <= st->counts_mask; i++) {
        const sampler_token_count *c = &st->counts[i];
        if (c->token < 0) continue;
        float l = logits[c->token];
        if (rep != 1.0f && (c->in_prompt || c->n_out > 0)) l = l > 0.0f ? l / rep : l * rep;
        if (c->n_out > 0) l -= freq * (float)c->n_out + pres;
        logits[c->token] = l;
    }
}

static void mask_stop_ids(const sampler *s, const sampler_params *p, float *logits) {
    for (int i = 0; i < s->n_eos; i++)
        if (s->eos_ids[i] >= 0 && s->eos_ids[i] < s->vocab) logits[s->eos_ids[i]] = -INFINITY;
    for (int i = 0; i < p->n_stop_token_ids; i++) {
        int32_t t = p->stop_token_ids[i];
        KV_CHECK(t >= 0 && t < s->vocab); /* sampler_params_validate rejects others */
        logits[t] = -INFINITY;
    }
}

/* e^x for x <= 0, four at a time, 0 below -87 and for -inf or NaN: x = n ln2 + r with |r| <=
 * ln2 / 2, e^r by its degree-7 Taylor polynomial (truncation < 6e-8), 2^n put into the exponent
 * bits; relative error ~2e-7. GCC/clang vector extensions: libm's expf is scalar and ~5x slower,
 * and the exps over the vocabulary are most of a sampling step. */
typedef float vf4 __attribute__((vector_size(16)));
typedef int32_t vi4 __attribute__((vector_size(16)));
#define VF4(c) ((vf4){(c), (c), (c), (c)})

static inline vf4 exp_nonpos4(vf4 x) {
    vi4 ok = x >= VF4(-87.0f); /* all ones where x is in range (false for NaN) */
    vf4 xc = (vf4)(((vi4)x & ok) | ((vi4)VF4(-87.0f) & ~ok));
    /* round to nearest by the 1.5 * 2^23 trick (no SSE4.1 round needed) */
    vf4 n = (xc * VF4(1.44269504f) + VF4(12582912.0f)) - VF4(12582912.0f);
    vf4 r = xc - n * VF4(0.693145752f) - n * VF4(1.42860677e-06f); /* ln2 hi/lo (Cody-Waite) */
    vf4 e = VF4(1.0f / 5040);
    e = e * r + VF4(1.0f / 720);
    e = e * r + VF4(1.0f / 120);
    e = e * r + VF4(1.0f / 24);
    e = e * r + VF4(1.0f / 6);
    e = e * r + VF4(0.5f);
    e = e * r + VF4(1.0f);
    e = e * r + VF4(1.0f);
    vi4 bits = (__builtin_convertvector(n, vi4) + 127) << 23;
    return (vf4)((vi4)(e * (vf4)bits) & ok);
}

static inline float exp_nonpos(float x) {
    return exp_nonpos4(VF4(x))[0];
}

static inline vf4 load4(const float *p) {
    vf4 v;
    memcpy(&v, p, sizeof(v));
    return v;
}

/* Row kernels. Each keeps LANES independent partial results so that GCC's SLP vectorizer turns
 * the inner loop into vector code at -O2 (a single running max or sum is a serial chain). */
enum { LANES = 16 };

/* Largest element, NaN ignored; -inf when there is none. */
static float row_max(const float *x, int n) {
    float acc[LANES];
    for (int j = 0; j < LANES; j++) acc[j] = -INFINITY;
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
    float m = -INFINITY;
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    for (int j = 0; j < LANES; j++) m = acc[j] > m ? acc[j] : m;
    return m;
}

/* First index of the largest logit (NaN never wins); 0 when every logit is -inf or NaN. */
static int32_t argmax(const float *x, int n) {
    float m = row_max(x, n);
    for (int i = 0; i < n; i++)
        if (x[i] == m) return i;
    return 0;
}

/* x[i] = exp((x[i] - m) / t) where that is >= e^lower_exp (min_p), else 0. Writes the sum of
 * block b to block_z[b] (ceil(n / WBLOCK) of them); returns the total. */
static double row_weights(float *x, int n, float m, float t, float lower_exp, double *block_z) {
    double z = 0.0;
    for (int b = 0; b * WBLOCK < n; b++) {
        int i = b * WBLOCK, end = n - i > WBLOCK ? i + WBLOCK : n;
        vf4 acc = VF4(0.0f);
        for (; i + 4 <= end; i += 4) {
            vf4 d = (load4(x + i) - VF4(m)) / VF4(t);
            vf4 w = (vf4)((vi4)exp_nonpos4(d) & (d >= VF4(lower_exp)));
            memcpy(x + i, &w, sizeof(w));
            acc += w;
        }
        double bz = (double)acc[0] + acc[1] + acc[2] + acc[3];
        for (; i < end; i++) {
            float d = (x[i] - m) / t;
            x[i] = d >= lower_exp ? exp_nonpos(d) : 0.0f;
            bz += x[i];
        }
        block_z[b] = bz;
        z += bz;
    }
    return z;
}

/* The index where the running sum of weights w passes target (block sums from row_weights);
 * the last positive weight when rounding leaves target at the very top. */
static int32_t row_walk(const float *w, int n, const double *block_z, double target) {
    int n_blocks = (n + WBLOCK - 1) / WBLOCK, b = 0;
    double acc = 0.0;
    while (b < n_blocks - 1 && acc + block_z[b] <= target) acc += block_z[b++];
    int32_t last = -1;
    for (int i = b * WBLOCK; i < n; i++) {
        if (w[i] == 0.0f) continue;
        acc += w[i];
        last = i;
        if (acc > target) return i;
    }
    for (int i = b * WBLOCK - 1; last < 0 && i >= 0; i--)
        if (w[i] > 0.0f) last = i;
    return last;
}

/* Sum of the weights >= c. */
static double row_mass_ge(const float *w, int n, float c) {
    double z = 0.0;
    int i = 0;
    while (i + 4 <= n) {
        int end = n - i > WBLOCK ? i + WBLOCK : n;
        vf4 acc = VF4(0.0f);
        for (; i + 4 <= end; i += 4) {
            vf4 v = load4(w + i);
            acc += (vf4)((vi4)v & (v >= VF4(c)));
        }
        z += (double)acc[0] + acc[1] + acc[2] + acc[3];
    }
    for (; i < n; i++) z += w[i] >= c ? w[i] : 0.0f;
    return z;
}

/* Sum of exp(x[i] - m), same blocking. */
static double row_sum_exp(const float *x, int n, float m) {
    double z = 0.0;
    int i = 0;
    while (i + 4 <= n) {
        int end = n - i > WBLOCK ? i + WBLOCK : n;
        vf4 acc = VF4(0.0f);
        for (; i + 4 <= end; i += 4) acc += exp_nonpos4(load4(x + i) - VF4(m));
        z += (double)acc[0] + acc[1] + acc[2] + acc[3];
    }
    for (; i < n; i++) z += exp_nonpos(x[i] - m);
    return z;
}

/* Number of elements >= v. */
static int row_count_ge(const float *x, int n, float v) {
    int acc[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) acc[j] += x[i + j] >= v;
    int c = 0;
    for (; i < n; i++) c += x[i] >= v;
    for (int j = 0; j < LANES; j++) c += acc[j];
    return c;
}

/* Reorders c[0, n) so that c[k - 1] holds the k-th largest logit (1 <= k <= n); returns it.
 * Quickselect with a median-of-three pivot: O(n) on average. */
static float kth_largest(sampler_cand *c, int n, int k) {
    int lo = 0, hi = n - 1, target = k - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        float a = c[lo].logit, b = c[mid].logit, d = c[hi].logit;
        float pivot = a < b ? (b < d ? b : (a < d ? d : a)) : (a < d ? a : (b < d ? d : b));
        int i = lo, j = hi;
        while (i <= j) {
            while (c[i].logit > pivot) i++;
            while (c[j].logit < pivot) j--;
            if (i <= j) {
                sampler_cand t = c[i];
                c[i++] = c[j];
                c[j--] = t;
            }
        }
        if (target <= j)
            hi = j;
        else if (target >= i)
            lo = i;
        else
            break; /* c[j+1 .. i-1] all equal the pivot */
    }
    return c[target].logit;
}

/* Keeps the smallest set of most likely candidates whose weight reaches need (top_p times the
 * total weight), like vLLM (a token stays while the mass before it is < top_p). No sort: a
 * quickselect on weight that keeps whole partitions, O(n) on average. Equal weights at the cut are
 * taken in array order. Returns the kept count; the kept candidates end up in c[0, kept). */
static int top_p_filter(sampler_cand *c, int n, double need) {
    double kept = 0.0;
    int lo = 0, hi = n; /* c[0, lo) kept; the cut lies in c[lo, hi) */
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        float a = c[lo].weight, b = c[mid].weight, d = c[hi - 1].weight;
        float pivot = a < b ? (b < d ? b : (a < d ? d : a)) : (a < d ? a : (b < d ? d : b));
        /* three-way partition of [lo, hi): > pivot in [lo, gt), == in [gt, i), < in [lt, hi) */
        int gt = lo, i = lo, lt = hi;
        double mass_gt = 0.0;
        while (i < lt) {
            sampler_cand t = c[i];
            if (t.weight > pivot) {
                mass_gt += t.weight;
                c[i++] = c[gt];
                c[gt++] = t;
            } else if (t.weight < pivot) {
                c[i] = c[--lt];
                c[lt] = t;
            } else {
                i++;
            }
        }
        if (kept + mass_gt >= need && gt > lo) { /* the cut is among the heavier ones */
            hi = gt;
            continue;
        }
        kept += mass_gt;
        for (int j = gt; j < lt; j++) {
            kept += c[j].weight;
            if (kept >= need) return j + 1;
        }
        lo = lt;
    }
    return lo > 0 ? lo : 1;
}

/* Draws from c[0, n) in proportion to weight. */
static int32_t draw_cand(const sampler_cand *c, int n, double u) {
    double z = 0.0;
    for (int i = 0; i < n; i++) z += c[i].weight;
    double target = u * z, acc = 0.0;
    for (int i = 0; i < n; i++) {
        acc += c[i].weight;
        if (acc > target) return c[i].token;
    }
    return c[n - 1].token; /* rounding left target at the very top */
}

/* The k largest logits >= lower into c, plus every token tied with the k-th (vLLM keeps ties);
 * returns the count. One pass: candidates above a rising threshold are buffered, and whenever
 * the buffer holds `limit` of them it is cut to those >= its k-th largest, which becomes the
 * threshold. c has room for the whole vocabulary, so ties can always grow the buffer. */
static int collect_top_k(sampler_cand *c, const float *logits, int vocab, float lower, int k) {
    if (k > vocab) k = vocab; /* k comes from a request: any int; 4 * k must not overflow */
    int n = 0, limit = k <= (vocab - 64) / 4 ? 4 * k + 64 : vocab;
    float thr = lower;
    for (int i = 0; i < vocab; i++) {
        if (!(logits[i] >= thr)) continue;
        c[n++] = (sampler_cand){.logit = logits[i], .token = i};
        if (n < limit) continue;
        thr = kth_largest(c, n, k);
        int kept = 0;
        for (int j = 0; j < n; j++)
            if (c[j].logit >= thr) c[kept++] = c[j];
        n = kept;
        if (n > limit / 2) limit = n < vocab / 2 ? 2 * n : vocab; /* ties: make room */
    }
    if (n <= k) return n;
    float kth = kth_largest(c, n, k);
    int kept = 0;
    for (int j = 0; j < n; j++)
        if (c[j].logit >= kth) c[kept++] = c[j];
    return kept;
}

/* Temperature, min_p, top_k, top_p, then one draw u (vLLM's order). Works on the raw-scale
 * logits: dividing by t > 0 keeps their order, so the max, min_p's cut and top-k are found before
 * scaling, and only the weights exp((l - max) / t) see the temperature. Overwrites logits. */
static int32_t sample_random(sampler *s, const sampler_params *p, float *logits, double u) {
    int vocab = s->vocab;
    float t = p->temperature;
    float m = row_max(logits, vocab);
    if (m == -INFINITY || m == INFINITY) return argmax(logits, vocab);
    /* min_p keeps tokens with prob >= min_p * max prob: (l - max) / t >= log(min_p). */
    float lower_exp = p->min_p > 0.0f ? logf(p->min_p) : -INFINITY;
    sampler_cand *c = s->cand;
    int n;
    double z;

    /* top_k >= vocab keeps every token: the same as off */
    if (p->top_k > 0 && p->top_k < vocab) { /* a few candidates: weights for them alone */
        n = collect_top_k(c, logits, vocab, p->min_p > 0.0f ? m + t * lower_exp : -FLT_MAX,
                          p->top_k);
        z = 0.0;
        for (int i = 0; i < n; i++) z += c[i].weight = exp_nonpos((c[i].logit - m) / t);
    } else {
        z = row_weights(logits, vocab, m, t, lower_exp, s->block_z);
        if (p->top_p >= 1.0f) return row_walk(logits, vocab, s->block_z, u * z);
        /* Only tokens above a weight cut c can be in the nucleus once their mass reaches top_p
         * (the nucleus is the shortest heaviest prefix with that mass): find such a cut, 2^-8,
         * 2^-16, 2^-24 of the max weight, else every token, and select among those alone. */
        float cut = 0.0f;
        for (float try_cut = 1.0f / 256; try_cut > 1e-8f; try_cut /= 256)
            if (row_mass_ge(logits, vocab, try_cut) >= (double)p->top_p * z) {
                cut = try_cut;
                break;
            }
        n = 0;
        for (int i = 0; i < vocab; i++)
            if (logits[i] > 0.0f && logits[i] >= cut)
                c[n++] = (sampler_cand){.logit = logits[i], .weight = logits[i], .token = i};
    }
    if (p->top_p < 1.0f) n = top_p_filter(c, n, (double)p->top_p * z);
    return draw_cand(c, n, u);
}

static void record_token(sampler_state *st, int32_t token) {
    st->n_generated++;
    if (st->track_tokens) counts_entry(st, token)->n_out++;
}

int32_t sampler_sample(sampler *s, const sampler_params *p, sampler_state *st, float *logits,
                       sampler_logprobs *lp) {
    bool want_lp = lp && p->logprobs >= 0;
    if (want_lp) memcpy(s->raw, logits, (size_t)s->vocab * sizeof(float));
    /* Drawn on every call, greedy or not: a request's stream advances one step per token. */
    double u = sampler_rng_uniform(&st->rng);
    if (p->constraint) {
        if (st->sc_state < 0) return SAMPLER_NO_TOKEN;
        sc_constraint_apply(p->constraint, st->sc_state, logits, s->vocab, s->eos_ids, s->n_eos);
    }
    if (p->n_bias > 0) apply_logit_bias(s, p, logits);
    if (st->n_generated < p->min_tokens) mask_stop_ids(s, p, logits);
    sampler_apply_penalties(p, st, logits);
    /* (min_tokens alone keeps its old fallback: all -inf picks token 0) */
    if ((p->constraint || p->n_bias > 0) && row_max(logits, s->vocab) == -INFINITY)
        return SAMPLER_NO_TOKEN;
    int32_t token = p->temperature < SAMPLER_GREEDY_EPS ? argmax(logits, s->vocab)
                                                        : sample_random(s, p, logits, u);
    if (want_lp) sampler_logprobs_of(s->raw, s->vocab, token, p->logprobs, lp);
    record_token(st, token);
    if (p->constraint)
        st->sc_state =
            sc_constraint_advance(p->constraint, st->sc_state, token, s->eos_ids, s->n_eos);
    return token;
}

kv_finish sampler_check_finish(const sampler *s, const sampler_params *p, const sampler_state *st,
                               int32_t token) {
    if (st->n_generated >= p->max_tokens) return KV_FINISH_LENGTH;
    if (st->n_generated < p->min_tokens) return KV_FINISH_NONE;
    if (!p->ignore_eos)
        for (int i = 0; i < s->n_eos; i++)
            if (token == s->eos_ids[i]) return KV_FINISH_STOP;
    for (int i = 0; i < p->n_stop_token_ids; i++)
        if (token == p->stop_token_ids[i]) return KV_FINISH_STOP;
    return KV_FINISH_NONE;
}

/* --- logprobs --- */

void sampler_logprobs_of(const float *logits, int vocab, int32_t token, int n_top,
                         sampler_logprobs *out) {
    KV_CHECK(token >= 0 && token < vocab);
    if (n_top > SAMPLER_MAX_LOGPROBS) n_top = SAMPLER_MAX_LOGPROBS;
    if (n_top > vocab) n_top = vocab;
    if (n_top < 0) n_top = 0;
    float m = row_max(logits, vocab);
    double lse = (double)m + log(row_sum_exp(logits, vocab, m));

    float lt = logits[token];
    int n = 0; /* top[0, n) sorted by logit, descending; ties keep the lower id first */
    sampler_logprob *top = out->top;
    for (int i = 0; i < vocab && n_top > 0; i++) {
        float l = logits[i];
        if (n == n_top && !(l > top[n - 1].logprob)) continue;
        int j = n < n_top ? n++ : n - 1;
        while (j > 0 && l > top[j - 1].logprob) {
            top[j] = top[j - 1];
            j--;
        }
        top[j] = (sampler_logprob){.token = i, .logprob = l};
    }
    for (int j = 0; j < n; j++) top[j].logprob = (float)((double)top[j].logprob - lse);
    out->token = token;
    out->logprob = (float)((double)lt - lse);
    out->rank = row_count_ge(logits, vocab, lt);
    out->n_top = n;
}

void sampler_prompt_logprobs(const float *logits, int n_rows, int vocab, const int32_t *next_tokens,
                             int n_top, sampler_logprobs *out) {
    for (int i = 0; i < n_rows; i++)
        sampler_logprobs_of(logits + (size_t)i * vocab, vocab, next_tokens[i], n_top, &out[i]);
}

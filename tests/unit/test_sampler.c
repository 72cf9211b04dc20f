/* Unit tests for model/sampler: greedy, seeded reproducibility, the sampled distributions of
 * temperature / top-k / top-p / min-p (chi-square against softmax computed here from the
 * definitions), penalties against hand-computed logits, min_tokens and finish rules, raw logprobs
 * against a long-double log_softmax, and parameter validation. */
#include <check.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/sampler.h"

static uint64_t lcg_state;
static float rand_logit(float scale) { /* deterministic test data, not the sampler's RNG */
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return scale * ((float)(lcg_state >> 40) / (float)(1 << 24) - 0.5f);
}

static int32_t ref_argmax(const float *x, int n) {
    int32_t b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* softmax(x / t) in double */
static void ref_softmax(const float *x, int n, double t, double *p) {
    double m = -INFINITY, z = 0;
    for (int i = 0; i < n; i++) m = fmax(m, x[i] / t);
    for (int i = 0; i < n; i++) z += p[i] = exp(x[i] / t - m);
    for (int i = 0; i < n; i++) p[i] /= z;
}

/* Draws n_draws tokens and returns the chi-square statistic of the counts against expected
 * probabilities p (tokens with p = 0 must never be drawn). */
static double draw_chi2(sampler *s, const sampler_params *par, const float *logits, int vocab,
                        const double *p, int n_draws) {
    sampler_state st;
    sampler_state_init(s, &st, par, NULL, 0);
    int counts[16] = {0};
    float row[16];
    for (int d = 0; d < n_draws; d++) {
        memcpy(row, logits, sizeof(float) * (size_t)vocab);
        int32_t t = sampler_sample(s, par, &st, row, NULL);
        ck_assert(t >= 0 && t < vocab);
        counts[t]++;
    }
    sampler_state_free(&st);
    double chi2 = 0;
    for (int i = 0; i < vocab; i++) {
        if (p[i] == 0) {
            ck_assert_msg(counts[i] == 0, "token %d drawn %d times, expected never", i, counts[i]);
            continue;
        }
        double e = p[i] * n_draws;
        chi2 += (counts[i] - e) * (counts[i] - e) / e;
    }
    return chi2;
}

START_TEST(rng_seeding_matches_splitmix64_reference) {
    /* Rosetta Code "Pseudo-random numbers/Splitmix64": seed 1234567 gives these first outputs. */
    sampler_rng r;
    sampler_rng_seed(&r, 1234567);
    ck_assert_uint_eq(r.s[0], 6457827717110365317ull);
    ck_assert_uint_eq(r.s[1], 3203168211198807973ull);
    ck_assert_uint_eq(r.s[2], 9817491932198370423ull);
    ck_assert_uint_eq(r.s[3], 4593380528125082431ull);
    double sum = 0;
    for (int i = 0; i < 100000; i++) {
        double u = sampler_rng_uniform(&r);
        ck_assert(u >= 0 && u < 1);
        sum += u;
    }
    ck_assert_double_eq_tol(sum / 100000, 0.5, 0.005); /* sd of the mean: 0.0009 */
}
END_TEST

START_TEST(greedy_is_argmax_and_top_k_1_is_greedy) {
    enum { V = 5000 };
    sampler s;
    sampler_init(&s, V, NULL, 0, 1);
    sampler_params g, k1;
    sampler_params_default(&g);
    g.temperature = 0;
    sampler_params_default(&k1);
    k1.top_k = 1;
    k1.temperature = 1.3f;
    sampler_state sg, sk;
    sampler_state_init(&s, &sg, &g, NULL, 0);
    sampler_state_init(&s, &sk, &k1, NULL, 0);
    static float row[V], copy[V];
    lcg_state = 7;
    for (int r = 0; r < 50; r++) {
        for (int i = 0; i < V; i++) row[i] = rand_logit(20);
        int32_t want = ref_argmax(row, V);
        memcpy(copy, row, sizeof(row));
        ck_assert_int_eq(sampler_sample(&s, &g, &sg, copy, NULL), want);
        memcpy(copy, row, sizeof(row));
        ck_assert_int_eq(sampler_sample(&s, &k1, &sk, copy, NULL), want);
    }
    ck_assert_int_eq(sg.n_generated, 50);
    sampler_state_free(&sg);
    sampler_state_free(&sk);
    sampler_free(&s);
}
END_TEST

/* A seeded request gives the same tokens whatever is sampled in between, by other requests. */
START_TEST(seeded_requests_reproduce_independently_of_other_calls) {
    enum { V = 300, STEPS = 60 };
    sampler s;
    sampler_init(&s, V, NULL, 0, 99);
    sampler_params p, other;
    sampler_params_default(&p);
    p.has_seed = true;
    p.seed = 42;
    p.top_p = 0.95f;
    sampler_params_default(&other);
    static float rows[STEPS][V], row[V];
    lcg_state = 3;
    for (int t = 0; t < STEPS; t++)
        for (int i = 0; i < V; i++) rows[t][i] = rand_logit(4);

    int32_t alone[STEPS], mixed[STEPS], reseeded[STEPS];
    sampler_state a, b, c, noise;
    sampler_state_init(&s, &a, &p, NULL, 0);
    for (int t = 0; t < STEPS; t++) {
        memcpy(row, rows[t], sizeof(row));
        alone[t] = sampler_sample(&s, &p, &a, row, NULL);
    }
    sampler_state_init(&s, &noise, &other, NULL, 0); /* unseeded: draws from the engine RNG */
    sampler_state_init(&s, &b, &p, NULL, 0);
    for (int t = 0; t < STEPS; t++) {
        for (int k = 0; k < t % 3; k++) {
            memcpy(row, rows[(t * 7) % STEPS], sizeof(row));
            sampler_sample(&s, &other, &noise, row, NULL);
        }
        memcpy(row, rows[t], sizeof(row));
        mixed[t] = sampler_sample(&s, &p, &b, row, NULL);
    }
    p.seed = 43;
    sampler_state_init(&s, &c, &p, NULL, 0);
    int n_diff = 0;
    for (int t = 0; t < STEPS; t++) {
        memcpy(row, rows[t], sizeof(row));
        reseeded[t] = sampler_sample(&s, &p, &c, row, NULL);
        n_diff += reseeded[t] != alone[t];
        ck_assert_int_eq(mixed[t], alone[t]);
    }
    ck_assert_int_gt(n_diff, STEPS / 2); /* another seed, another sequence (flat-ish rows) */
    sampler_state_free(&a);
    sampler_state_free(&b);
    sampler_state_free(&c);
    sampler_state_free(&noise);
    sampler_free(&s);
}
END_TEST

/* Chi-square critical values at p = 0.001 for 1..5 degrees of freedom. With the fixed seeds
 * below the draws are deterministic; a correct sampler fails such a test with probability 0.001
 * per seed, a wrong distribution (shifted by a few % of mass) fails by a wide margin. */
static const double chi2_crit[6] = {0, 10.83, 13.82, 16.27, 18.47, 20.52};
static const float L6[6] = {2.0f, 1.5f, 1.0f, 0.2f, -0.5f, -1.5f};

START_TEST(temperature_distribution) {
    sampler s;
    sampler_init(&s, 6, NULL, 0, 5);
    sampler_params p;
    sampler_params_default(&p);
    double want[6];
    const float temps[3] = {1.0f, 0.5f, 2.0f};
    for (int k = 0; k < 3; k++) {
        p.temperature = temps[k];
        ref_softmax(L6, 6, temps[k], want);
        double chi2 = draw_chi2(&s, &p, L6, 6, want, 60000);
        ck_assert_msg(chi2 < chi2_crit[5], "T=%g chi2=%g", temps[k], chi2);
    }
    sampler_free(&s);
}
END_TEST

START_TEST(top_k_top_p_min_p_distributions) {
    sampler s;
    sampler_init(&s, 6, NULL, 0, 11);
    sampler_params p;
    double sm[6], want[6];
    ref_softmax(L6, 6, 1.0, sm); /* .444 .269 .163 .073 .037 .013 */

    /* top_k = 3: renormalised over the 3 largest */
    sampler_params_default(&p);
    p.top_k = 3;
    double z = sm[0] + sm[1] + sm[2];
    for (int i = 0; i < 6; i++) want[i] = i < 3 ? sm[i] / z : 0;
    ck_assert(draw_chi2(&s, &p, L6, 6, want, 60000) < chi2_crit[2]);

    /* top_p = 0.9: the mass before token 3 is .877 < 0.9 (kept), before token 4 it is .950
     * (dropped) */
    sampler_params_default(&p);
    p.top_p = 0.9f;
    z = sm[0] + sm[1] + sm[2] + sm[3];
    ck_assert(sm[0] + sm[1] + sm[2] < 0.9 && z > 0.9);
    for (int i = 0; i < 6; i++) want[i] = i < 4 ? sm[i] / z : 0;
    ck_assert(draw_chi2(&s, &p, L6, 6, want, 60000) < chi2_crit[3]);

    /* min_p = 0.3: keeps p >= 0.3 * .444 = .133: tokens 0, 1, 2 */
    sampler_params_default(&p);
    p.min_p = 0.3f;
    z = sm[0] + sm[1] + sm[2];
    ck_assert(sm[2] > 0.3 * sm[0] && sm[3] < 0.3 * sm[0]);
    for (int i = 0; i < 6; i++) want[i] = i < 3 ? sm[i] / z : 0;
    ck_assert(draw_chi2(&s, &p, L6, 6, want, 60000) < chi2_crit[2]);

    /* temperature 2 then top_k 4 then top_p 0.7 (vLLM order: top_p over the top-k set) */
    sampler_params_default(&p);
    p.temperature = 2.0f;
    p.top_k = 4;
    p.top_p = 0.7f;
    double t2[6];
    ref_softmax(L6, 4, 2.0, t2); /* renormalised over the top 4: .358 .279 .217 .146 */
    ck_assert(t2[0] + t2[1] < 0.7 && t2[0] + t2[1] + t2[2] > 0.7);
    z = t2[0] + t2[1] + t2[2];
    for (int i = 0; i < 6; i++) want[i] = i < 3 ? t2[i] / z : 0;
    ck_assert(draw_chi2(&s, &p, L6, 6, want, 60000) < chi2_crit[2]);
    sampler_free(&s);
}
END_TEST

/* At a 128k vocabulary: every draw falls in the nucleus / top-k set found by a full sort here,
 * for a peaked row (one threshold pass) and a flat row (several). */
static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x > y ? -1 : x < y;
}

START_TEST(large_vocab_top_p_and_top_k_stay_in_the_reference_set) {
    enum { V = 128256 };
    sampler s;
    sampler_init(&s, V, NULL, 0, 3);
    static float row[V], copy[V], sorted[V];
    for (int flat = 0; flat < 2; flat++) {
        lcg_state = 100 + (uint64_t)flat;
        for (int i = 0; i < V; i++) row[i] = rand_logit(flat ? 1.0f : 12.0f);
        row[1234] = 9.0f; /* a clear favourite on the peaked row */
        memcpy(sorted, row, sizeof(row));
        qsort(sorted, V, sizeof(float), cmp_desc);
        double m = sorted[0], z = 0, acc = 0;
        for (int i = 0; i < V; i++) z += exp(sorted[i] - m);
        int n_nucleus = 0;
        while (acc < 0.9 * z) acc += exp(sorted[n_nucleus++] - m);
        float p_cut = sorted[n_nucleus - 1], k_cut = sorted[49];

        sampler_params p;
        sampler_params_default(&p);
        p.top_p = 0.9f;
        sampler_state st;
        sampler_state_init(&s, &st, &p, NULL, 0);
        for (int d = 0; d < 200; d++) {
            memcpy(copy, row, sizeof(row));
            int32_t t = sampler_sample(&s, &p, &st, copy, NULL);
            ck_assert_msg(row[t] >= p_cut, "flat=%d token %d outside the nucleus", flat, t);
        }
        sampler_state_free(&st);
        p.top_k = 50;
        p.top_p = 1.0f;
        sampler_state_init(&s, &st, &p, NULL, 0);
        for (int d = 0; d < 200; d++) {
            memcpy(copy, row, sizeof(row));
            int32_t t = sampler_sample(&s, &p, &st, copy, NULL);
            ck_assert(row[t] >= k_cut);
        }
        sampler_state_free(&st);
    }
    sampler_free(&s);
}
END_TEST

/* Feeds token t as the output of a greedy step (a row where t wins by far). */
static void emit(sampler *s, const sampler_params *p, sampler_state *st, int vocab, int32_t t) {
    float row[16] = {0};
    row[t] = 1000.0f;
    ck_assert_int_eq(sampler_sample(s, p, st, row, NULL), t);
    (void)vocab;
}

START_TEST(penalties_match_hand_computed_logits) {
    sampler s;
    sampler_init(&s, 6, NULL, 0, 1);
    sampler_params p;
    sampler_params_default(&p);
    p.temperature = 0;
    p.repetition_penalty = 2.0f;
    p.frequency_penalty = 0.5f;
    p.presence_penalty = 0.25f;
    int32_t prompt[3] = {0, 1, 1};
    sampler_state st;
    sampler_state_init(&s, &st, &p, prompt, 3);
    emit(&s, &p, &st, 6, 2);
    emit(&s, &p, &st, 6, 2);
    emit(&s, &p, &st, 6, 3);
    /* prompt {0, 1}, output {2: twice, 3: once}, token 4 and 5 unseen */
    float l[6] = {3.0f, -1.0f, 4.0f, -2.0f, 1.0f, -3.0f};
    sampler_apply_penalties(&p, &st, l);
    ck_assert_float_eq_tol(l[0], 1.5f, 1e-6);                 /* 3 / 2 */
    ck_assert_float_eq_tol(l[1], -2.0f, 1e-6);                /* -1 * 2 */
    ck_assert_float_eq_tol(l[2], 2.0f - 1.0f - 0.25f, 1e-6);  /* 4/2 - 0.5*2 - 0.25 */
    ck_assert_float_eq_tol(l[3], -4.0f - 0.5f - 0.25f, 1e-6); /* -2*2 - 0.5*1 - 0.25 */
    ck_assert_float_eq(l[4], 1.0f);
    ck_assert_float_eq(l[5], -3.0f);
    sampler_state_free(&st);

    /* the penalties decide greedy picks: repetition divides positives, multiplies negatives */
    sampler_params q;
    sampler_params_default(&q);
    q.temperature = 0;
    q.repetition_penalty = 1.2f;
    int32_t pr0[1] = {0};
    sampler_state_init(&s, &st, &q, pr0, 1);
    float a[6] = {2.0f, 1.9f, -9, -9, -9, -9}; /* 2 / 1.2 = 1.67 < 1.9 */
    ck_assert_int_eq(sampler_sample(&s, &q, &st, a, NULL), 1);
    sampler_state_free(&st);
    sampler_state_init(&s, &st, &q, pr0, 1);
    float b[6] = {-1.0f, -1.1f, -9, -9, -9, -9}; /* -1 * 1.2 = -1.2 < -1.1 */
    ck_assert_int_eq(sampler_sample(&s, &q, &st, b, NULL), 1);
    sampler_state_free(&st);

    /* presence and frequency ignore the prompt */
    q.repetition_penalty = 1.0f;
    q.frequency_penalty = 2.0f;
    q.presence_penalty = 2.0f;
    sampler_state_init(&s, &st, &q, pr0, 1);
    float c[6] = {2.0f, 1.9f, -9, -9, -9, -9};
    ck_assert_int_eq(sampler_sample(&s, &q, &st, c, NULL), 0);
    sampler_state_free(&st);
    sampler_free(&s);
}
END_TEST

START_TEST(min_tokens_and_finish_rules) {
    int32_t eos[2] = {2, 3};
    sampler s;
    sampler_init(&s, 6, eos, 2, 1);
    sampler_params p;
    sampler_params_default(&p);
    p.temperature = 0;
    p.min_tokens = 3;
    p.max_tokens = 10;
    p.n_stop_token_ids = 1;
    p.stop_token_ids = kv_malloc(sizeof(int32_t));
    p.stop_token_ids[0] = 4;
    sampler_state st;
    sampler_state_init(&s, &st, &p, NULL, 0);
    const float row0[6] = {0.0f, 1.0f, 9.0f, 8.0f, 7.0f, -1.0f}; /* eos, eos, stop lead */
    float row[6];
    for (int i = 0; i < 3; i++) {
        memcpy(row, row0, sizeof(row));
        int32_t t = sampler_sample(&s, &p, &st, row, NULL);
        ck_assert_int_eq(t, 1); /* best token that is not eos or a stop id */
        ck_assert_int_eq(sampler_check_finish(&s, &p, &st, t), KV_FINISH_NONE);
    }
    memcpy(row, row0, sizeof(row));
    int32_t t = sampler_sample(&s, &p, &st, row, NULL);
    ck_assert_int_eq(t, 2);
    ck_assert_int_eq(sampler_check_finish(&s, &p, &st, t), KV_FINISH_STOP);
    ck_assert_int_eq(sampler_check_finish(&s, &p, &st, 3), KV_FINISH_STOP);
    ck_assert_int_eq(sampler_check_finish(&s, &p, &st, 4), KV_FINISH_STOP);
    ck_assert_int_eq(sampler_check_finish(&s, &p, &st, 0), KV_FINISH_NONE);
    p.ignore_eos = true;
    ck_assert_int_eq(sampler_check_finish(&s, &p, &st, 2), KV_FINISH_NONE);
    ck_assert_int_eq(sampler_check_finish(&s, &p, &st, 4), KV_FINISH_STOP);
    p.max_tokens = 4; /* length is checked first, as vLLM v1 does */
    ck_assert_int_eq(sampler_check_finish(&s, &p, &st, 2), KV_FINISH_LENGTH);

    sampler_params copy;
    sampler_params_copy(&copy, &p);
    ck_assert_ptr_ne(copy.stop_token_ids, p.stop_token_ids);
    ck_assert_int_eq(copy.stop_token_ids[0], 4);
    sampler_params_free(&copy);
    sampler_params_free(&p);
    sampler_state_free(&st);
    sampler_free(&s);
}
END_TEST

START_TEST(logprobs_are_the_raw_log_softmax) {
    enum { V = 2000 };
    sampler s;
    sampler_init(&s, V, NULL, 0, 8);
    sampler_params p;
    sampler_params_default(&p);
    p.temperature = 0.5f; /* neither temperature nor penalties change the reported logprobs */
    p.repetition_penalty = 1.7f;
    p.top_k = 10;
    p.logprobs = 5;
    static float row[V], copy[V];
    long double ref[V];
    lcg_state = 11;
    for (int i = 0; i < V; i++) row[i] = rand_logit(16);
    long double m = -INFINITY, z = 0;
    for (int i = 0; i < V; i++) m = fmaxl(m, row[i]);
    for (int i = 0; i < V; i++) z += expl(row[i] - m);
    for (int i = 0; i < V; i++) ref[i] = row[i] - m - logl(z);

    int32_t prompt[2] = {ref_argmax(row, V), 5};
    sampler_state st;
    sampler_state_init(&s, &st, &p, prompt, 2);
    memcpy(copy, row, sizeof(row));
    sampler_logprobs lp;
    int32_t t = sampler_sample(&s, &p, &st, copy, &lp);
    ck_assert_int_eq(lp.token, t);
    ck_assert_double_eq_tol(lp.logprob, (double)ref[t], 1e-5);
    int rank = 0;
    for (int i = 0; i < V; i++) rank += ref[i] >= ref[t];
    ck_assert_int_eq(lp.rank, rank);
    ck_assert_int_eq(lp.n_top, 5);
    /* the top 5 are the 5 largest of the reference, in order */
    long double prev = INFINITY;
    for (int j = 0; j < 5; j++) {
        int32_t id = lp.top[j].token;
        ck_assert_double_eq_tol(lp.top[j].logprob, (double)ref[id], 1e-5);
        ck_assert(ref[id] <= prev);
        prev = ref[id];
        int n_better = 0;
        for (int i = 0; i < V; i++) n_better += ref[i] > ref[id];
        ck_assert_int_eq(n_better, j);
    }
    sampler_state_free(&st);

    /* every token's logprob through the prompt helper: probabilities sum to 1 */
    static int32_t next[V];
    static sampler_logprobs all[V];
    static float rows[4][V];
    for (int r = 0; r < 4; r++) memcpy(rows[r], row, sizeof(row));
    double sum = 0;
    for (int i0 = 0; i0 < V; i0 += 4) {
        for (int r = 0; r < 4; r++) next[r] = i0 + r;
        sampler_prompt_logprobs(&rows[0][0], 4, V, next, 0, all);
        for (int r = 0; r < 4; r++) {
            ck_assert_int_eq(all[r].n_top, 0);
            ck_assert_double_eq_tol(all[r].logprob, (double)ref[i0 + r], 1e-5);
            sum += exp(all[r].logprob);
        }
    }
    ck_assert_double_eq_tol(sum, 1.0, 1e-4);
    sampler_free(&s);
}
END_TEST

/* Issue 20: top_k from a request is any int; 4 * k + 64 overflowed int and crashed the draw.
 * A top_k at or above the vocabulary keeps every token: the same draw as top_k off. */
START_TEST(huge_top_k_is_clamped_to_the_vocabulary) {
    enum { V = 300 };
    sampler s;
    sampler_init(&s, V, NULL, 0, 1);
    float logits[V], row[V];
    lcg_state = 7;
    for (int i = 0; i < V; i++) logits[i] = rand_logit(8.0f);
    int ks[] = {V, V + 1, 536870896, INT_MAX};
    for (size_t j = 0; j < sizeof ks / sizeof ks[0]; j++) {
        sampler_params p, off;
        sampler_params_default(&p);
        p.top_k = ks[j];
        p.seed = 42;
        p.has_seed = true;
        off = p;
        off.top_k = 0;
        sampler_state a, b;
        sampler_state_init(&s, &a, &p, NULL, 0);
        sampler_state_init(&s, &b, &off, NULL, 0);
        for (int d = 0; d < 50; d++) {
            memcpy(row, logits, sizeof row);
            int32_t t = sampler_sample(&s, &p, &a, row, NULL);
            memcpy(row, logits, sizeof row);
            int32_t u = sampler_sample(&s, &off, &b, row, NULL);
            ck_assert_int_eq(t, u);
        }
        sampler_state_free(&a);
        sampler_state_free(&b);
    }
    sampler_free(&s);
}
END_TEST

/* sampler_param_check: one table of ranges, open and closed ends, values that change (or break)
 * when narrowed to float, and the value quoted as given. */
START_TEST(param_check_ranges) {
    kv_error err;
    ck_assert_ptr_null(sampler_range_of("max_tokens"));
    ck_assert_ptr_nonnull(sampler_range_of("repetition_penalty"));
    ck_assert_int_eq(sampler_param_check("temperature", 0, &err), 0);
    ck_assert_int_eq(sampler_param_check("temperature", 1e30, &err), 0);
    ck_assert_int_eq(sampler_param_check("temperature", -1e-9, &err), -1);
    ck_assert_int_eq(sampler_param_check("temperature", INFINITY, &err), -1);
    ck_assert_int_eq(sampler_param_check("temperature", NAN, &err), -1);
    ck_assert_int_eq(sampler_param_check("temperature", 1e300, &err), -1);
    ck_assert_str_eq(err.msg,
                     "'temperature' must be a number >= 0 and fit a 32-bit float, got 1e+300");
    ck_assert_int_eq(sampler_param_check("top_p", 0, &err), -1);
    ck_assert_str_eq(err.msg, "'top_p' must be in (0, 1], got 0");
    ck_assert_int_eq(sampler_param_check("top_p", 1e-50, &err), -1); /* 0 once a float */
    ck_assert_ptr_nonnull(strstr(err.msg, "got 1e-50 (0 as a 32-bit float)"));
    ck_assert_int_eq(sampler_param_check("top_p", 1e-30, &err), 0);
    ck_assert_int_eq(sampler_param_check("top_p", 1, &err), 0);
    ck_assert_int_eq(sampler_param_check("top_p", 1.5, &err), -1);
    ck_assert_str_eq(err.msg, "'top_p' must be in (0, 1], got 1.5");
    ck_assert_int_eq(sampler_param_check("top_k", -1, &err), 0);
    ck_assert_int_eq(sampler_param_check("top_k", -2, &err), -1);
    ck_assert_int_eq(sampler_param_check("top_k", 3e9, &err), -1);
    ck_assert_int_eq(sampler_param_check("min_p", 1, &err), 0);
    ck_assert_int_eq(sampler_param_check("min_p", 1.1, &err), -1);
    ck_assert_str_eq(err.msg, "'min_p' must be in [0, 1], got 1.1"); /* not 1.10000002 */
    ck_assert_int_eq(sampler_param_check("presence_penalty", -2, &err), 0);
    ck_assert_int_eq(sampler_param_check("presence_penalty", 2.01, &err), -1);
    ck_assert_int_eq(sampler_param_check("frequency_penalty", -2.5, &err), -1);
    ck_assert_int_eq(sampler_param_check("repetition_penalty", 2, &err), 0);
    ck_assert_int_eq(sampler_param_check("repetition_penalty", 0, &err), -1);
    ck_assert_int_eq(sampler_param_check("repetition_penalty", 3, &err), -1);
    ck_assert_str_eq(err.msg, "'repetition_penalty' must be in (0, 2], got 3");
}
END_TEST

/* The engine-side check goes through the same table, so its messages match the HTTP ones. */
START_TEST(validate_uses_the_table) {
    sampler_params p;
    kv_error err;
    sampler_params_default(&p);
    p.min_p = 2;
    ck_assert_int_eq(sampler_params_validate(&p, 100, &err), -1);
    ck_assert_str_eq(err.msg, "'min_p' must be in [0, 1], got 2");
    sampler_params_default(&p);
    p.top_k = -2;
    ck_assert_int_eq(sampler_params_validate(&p, 100, &err), -1);
    ck_assert_str_eq(err.msg, "'top_k' must be -1 or 0 (disabled) or at least 1, got -2");
}
END_TEST

START_TEST(validate_names_the_field) {
    sampler_params p;
    kv_error err;
    sampler_params_default(&p);
    ck_assert_int_eq(sampler_params_validate(&p, 100, &err), 0);
    p.temperature = -1;
    ck_assert_int_eq(sampler_params_validate(&p, 100, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "temperature"));
    sampler_params_default(&p);
    p.top_p = 0;
    ck_assert_int_eq(sampler_params_validate(&p, 100, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "top_p"));
    sampler_params_default(&p);
    p.repetition_penalty = 0;
    ck_assert_int_eq(sampler_params_validate(&p, 100, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "repetition_penalty"));
    sampler_params_default(&p);
    p.min_tokens = 17;
    ck_assert_int_eq(sampler_params_validate(&p, 100, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "min_tokens"));
    sampler_params_default(&p);
    p.logprobs = 21;
    ck_assert_int_eq(sampler_params_validate(&p, 100, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "logprobs"));
    sampler_params_default(&p);
    int32_t bad = 100;
    p.stop_token_ids = &bad;
    p.n_stop_token_ids = 1;
    ck_assert_int_eq(sampler_params_validate(&p, 100, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "stop_token_ids"));
}
END_TEST

START_TEST(logit_bias_bans_forces_and_adds) {
    enum { V = 8 };
    int32_t eos = 7;
    sampler s;
    sampler_init(&s, V, &eos, 1, 42);
    sampler_params p;
    sampler_params_default(&p);
    p.max_tokens = 1000;
    p.n_bias = 2;
    p.bias_ids = kv_malloc(2 * sizeof(int32_t));
    p.bias_values = kv_malloc(2 * sizeof(float));
    p.bias_ids[0] = 3, p.bias_values[0] = -100.0f; /* the likeliest token, banned */
    p.bias_ids[1] = 0, p.bias_values[1] = 2.0f;    /* added */
    sampler_state st;
    sampler_state_init(&s, &st, &p, NULL, 0);
    float base[V] = {0.0f, 1.0f, 0.5f, 9.0f, 0.2f, 0.1f, 0.3f, 0.0f};
    int count0 = 0, n = 4000;
    for (int i = 0; i < n; i++) {
        float row[V];
        memcpy(row, base, sizeof row);
        int32_t t = sampler_sample(&s, &p, &st, row, NULL);
        ck_assert_int_ne(t, 3);
        count0 += t == 0;
    }
    /* token 0 has logit 2 after the bias: its probability is e^2 / sum over the others */
    double z = 0;
    for (int t = 0; t < V; t++) z += t == 3 ? 0 : exp(t == 0 ? 2.0 : base[t]);
    double expect = exp(2.0) / z;
    ck_assert_msg(fabs(count0 / (double)n - expect) < 0.03, "token 0 drawn %d/%d, expected %.3f",
                  count0, n, expect);
    /* greedy: the ban moves argmax off token 3 */
    p.temperature = 0;
    float row[V];
    memcpy(row, base, sizeof row);
    ck_assert_int_eq(sampler_sample(&s, &p, &st, row, NULL), 0);
    /* +100 forces the least likely token at temperature 1, whatever the draw */
    p.temperature = 1;
    p.bias_values[1] = 100.0f;
    p.bias_ids[1] = 5;
    for (int i = 0; i < 500; i++) {
        memcpy(row, base, sizeof row);
        row[5] = -50.0f;
        ck_assert_int_eq(sampler_sample(&s, &p, &st, row, NULL), 5);
    }
    /* forcing a banned token leaves nothing: an error, not a silent pick */
    p.bias_ids[0] = 5;
    p.bias_values[0] = -100.0f;
    p.bias_values[1] = 100.0f;
    p.n_bias = 1; /* only the ban: fine */
    memcpy(row, base, sizeof row);
    ck_assert_int_ne(sampler_sample(&s, &p, &st, row, NULL), 5);
    sampler_params q;
    sampler_params_copy(&q, &p);
    ck_assert_ptr_ne(q.bias_ids, p.bias_ids);
    ck_assert_int_eq(q.bias_ids[0], 5);
    sampler_params_free(&q);
    sampler_state_free(&st);
    sampler_params_free(&p);
    sampler_free(&s);
}
END_TEST

/* A constraint over a byte vocabulary: every sampled sequence spells a string of the language,
 * eos comes only when the string is complete, and a dead end is SAMPLER_NO_TOKEN. */
START_TEST(constraint_masks_tokens_and_gates_eos) {
    enum { V = 6 };
    const char *pieces[V] = {"a", "b", "c", "ab", "x", NULL}; /* 5 = eos (no bytes) */
    size_t lens[V] = {1, 1, 1, 2, 1, 0};
    sc_vocab *voc = sc_vocab_new(V, pieces, lens);
    sc_dfa *d = NULL;
    kv_error err;
    ck_assert_int_eq(sc_regex_compile("(ab|ac)c?", 9, NULL, &d, &err), 0);
    int32_t eos = 5;
    sampler s;
    sampler_init(&s, V, &eos, 1, 7);
    sampler_params p;
    sampler_params_default(&p);
    p.max_tokens = 100;
    p.constraint = sc_constraint_new(d, voc);
    int seen_long = 0;
    for (int seed = 0; seed < 300; seed++) {
        p.has_seed = true;
        p.seed = (uint64_t)seed;
        sampler_params q;
        sampler_params_copy(&q, &p);
        sampler_state st;
        sampler_state_init(&s, &st, &q, NULL, 0);
        char out[64];
        size_t n = 0;
        for (int step = 0; step < 10; step++) {
            float row[V] = {0.1f, 0.2f, 0.3f, 0.4f, 3.0f, 0.5f};
            int32_t t = sampler_sample(&s, &q, &st, row, NULL);
            ck_assert_int_ge(t, 0);
            ck_assert_int_ne(t, 4);
            if (t == eos) break;
            memcpy(out + n, pieces[t], lens[t]);
            n += lens[t];
        }
        out[n] = 0;
        ck_assert_msg(!strcmp(out, "ab") || !strcmp(out, "ac") || !strcmp(out, "abc") ||
                          !strcmp(out, "acc"),
                      "seed %d: %s", seed, out);
        seen_long += n == 3;
        sampler_state_free(&st);
        sampler_params_free(&q);
    }
    ck_assert_int_gt(seen_long, 0);
    /* only "x" allowed but banned by logit_bias: nothing is left */
    sc_dfa *dx = NULL;
    ck_assert_int_eq(sc_regex_compile("x+", 2, NULL, &dx, &err), 0);
    sc_constraint_unref(p.constraint);
    p.constraint = sc_constraint_new(dx, voc);
    p.n_bias = 1;
    p.bias_ids = kv_malloc(sizeof(int32_t));
    p.bias_values = kv_malloc(sizeof(float));
    p.bias_ids[0] = 4, p.bias_values[0] = -100.0f;
    sampler_state st;
    sampler_state_init(&s, &st, &p, NULL, 0);
    float row[V] = {0};
    ck_assert_int_eq(sampler_sample(&s, &p, &st, row, NULL), SAMPLER_NO_TOKEN);
    sampler_state_free(&st);
    sampler_params_free(&p);
    sampler_free(&s);
    sc_vocab_free(voc);
}
END_TEST

int main(void) {
    Suite *s = suite_create("sampler");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, rng_seeding_matches_splitmix64_reference);
    tcase_add_test(tc, greedy_is_argmax_and_top_k_1_is_greedy);
    tcase_add_test(tc, seeded_requests_reproduce_independently_of_other_calls);
    tcase_add_test(tc, temperature_distribution);
    tcase_add_test(tc, top_k_top_p_min_p_distributions);
    tcase_add_test(tc, large_vocab_top_p_and_top_k_stay_in_the_reference_set);
    tcase_add_test(tc, penalties_match_hand_computed_logits);
    tcase_add_test(tc, min_tokens_and_finish_rules);
    tcase_add_test(tc, logprobs_are_the_raw_log_softmax);
    tcase_add_test(tc, validate_names_the_field);
    tcase_add_test(tc, param_check_ranges);
    tcase_add_test(tc, validate_uses_the_table);
    tcase_add_test(tc, huge_top_k_is_clamped_to_the_vocabulary);
    tcase_add_test(tc, logit_bias_bans_forces_and_adds);
    tcase_add_test(tc, constraint_masks_tokens_and_gates_eos);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

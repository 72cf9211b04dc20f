/* Test support for the transformers reference fixtures of tests/fixtures/models (made by
 * make_fixtures.py): listing the fixture directories, parsing expected.json, reading the f32
 * logits files. Shared by the CPU (tests/unit) and CUDA (tests/gpu) fixture tests; the checks
 * against the references stay in those tests. Failures are Check assertions (test code only). */
#ifndef KVSERVE_TEST_FIXTURE_SUPPORT_H
#define KVSERVE_TEST_FIXTURE_SUPPORT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define FIXTURE_MAX         32   /* fixture directories listed at most */
#define FIXTURE_MAX_PROMPTS 8    /* prompts of one expected.json at most */
#define FIXTURE_PATH_MAX    4600 /* a listed fixture directory, with its NUL */

/* One prompt of expected.json. */
typedef struct fixture_prompt {
    int32_t *ids;    /* [n] prompt token ids */
    int n;           /* prompt length */
    int32_t *greedy; /* [fixture.n_greedy] reference greedy ids ("greedy_ids") */
    double *gap;     /* [fixture.n_greedy] reference top1 - top2 per step ("greedy_top2_gap") */
    int row_offset;  /* first row of this prompt in logits.bin ("logits_row_offset") */
    double noise;    /* transformers' own cache-vs-full and prefix-vs-full noise (max) */
} fixture_prompt;

/* A parsed expected.json. Strings point into expected and live until fixture_free. */
typedef struct fixture {
    json_t *expected;         /* the whole document, for fields read by one test only */
    const char *name;         /* "fixture" */
    int vocab;                /* "vocab_size" */
    int n_greedy;             /* "n_greedy": greedy steps of every prompt */
    const char *stored_dtype; /* "stored_dtype" ("bfloat16", "float32"); NULL when absent */
    fixture_prompt prompts[FIXTURE_MAX_PROMPTS];
    int n_prompts;
    int n_rows;  /* sum of the prompt lengths: rows of logits.bin */
    int longest; /* max over prompts of n + n_greedy: KV positions one sequence needs */
} fixture;

/* "<source_dir>/tests/fixtures/models" into root[cap]. */
void fixture_root(char *root, size_t cap, const char *source_dir);

/* Lists the subdirectories of fixture_root(source_dir) holding an expected.json as full paths
 * into dirs[0..max), sorted by name; returns how many (0 when the directory is absent). */
int fixture_list(const char *source_dir, char (*dirs)[FIXTURE_PATH_MAX], int max);

/* Parses <dir>/expected.json into *fx, asserting its shape: 1..FIXTURE_MAX_PROMPTS prompts,
 * vocab and n_greedy > 0, n_greedy greedy ids per prompt, and prompts stored back to back in
 * logits.bin (row_offset = sum of the lengths before). The caller frees with fixture_free. */
void fixture_load(const char *dir, fixture *fx);
void fixture_free(fixture *fx);

/* The n little-endian f32 values of <dir>/<name> (asserts the file holds exactly n). The caller
 * frees. */
float *fixture_read_f32(const char *dir, const char *name, size_t n);

/* The integers of a JSON array as a malloc'd int32 array; *n receives its length. */
int32_t *fixture_json_ids(const json_t *arr, int *n);

/* Index of the largest of x[0..n) (the first one on ties). */
int fixture_argmax(const float *x, int n);

#endif

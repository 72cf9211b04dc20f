/* Test support for the transformers reference fixtures: directory listing, expected.json,
 * f32 logits files (see fixture_support.h). */
#include "tests/unit/fixture_support.h"

#include <check.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void fixture_root(char *root, size_t cap, const char *source_dir) {
    snprintf(root, cap, "%s/tests/fixtures/models", source_dir);
}

static int name_cmp(const void *a, const void *b) {
    return strcmp(a, b);
}

int fixture_list(const char *source_dir, char (*dirs)[FIXTURE_PATH_MAX], int max) {
    char root[4200];
    fixture_root(root, sizeof root, source_dir);
    root[4000] = 0; /* leaves room for an entry name */
    int n = 0;
    DIR *d = opendir(root);
    struct dirent *e;
    while (d && (e = readdir(d)) && n < max) {
        struct stat sb;
        char probe[4500];
        snprintf(probe, sizeof probe, "%s/%s/expected.json", root, e->d_name);
        if (e->d_name[0] != '.' && stat(probe, &sb) == 0)
            snprintf(dirs[n++], FIXTURE_PATH_MAX, "%s/%s", root, e->d_name);
    }
    if (d) closedir(d);
    qsort(dirs, (size_t)n, sizeof dirs[0], name_cmp);
    return n;
}

void fixture_load(const char *dir, fixture *fx) {
    char path[4500];
    snprintf(path, sizeof path, "%s/expected.json", dir);
    json_error_t jerr;
    json_t *ex = json_load_file(path, 0, &jerr);
    ck_assert_msg(ex != NULL, "%s: %s", path, jerr.text);
    memset(fx, 0, sizeof *fx);
    fx->expected = ex;
    fx->name = json_string_value(json_object_get(ex, "fixture"));
    fx->vocab = (int)json_integer_value(json_object_get(ex, "vocab_size"));
    fx->n_greedy = (int)json_integer_value(json_object_get(ex, "n_greedy"));
    fx->stored_dtype = json_string_value(json_object_get(ex, "stored_dtype"));
    json_t *jp = json_object_get(ex, "prompts");
    fx->n_prompts = (int)json_array_size(jp);
    ck_assert(fx->n_prompts > 0 && fx->n_prompts <= FIXTURE_MAX_PROMPTS && fx->vocab > 0 &&
              fx->n_greedy > 0);
    int n_greedy = fx->n_greedy;
    for (int i = 0; i < fx->n_prompts; i++) {
        fixture_prompt *p = &fx->prompts[i];
        json_t *o = json_array_get(jp, (size_t)i), *g = json_object_get(o, "greedy_top2_gap");
        int ng;
        p->ids = fixture_json_ids(json_object_get(o, "ids"), &p->n);
        p->greedy = fixture_json_ids(json_object_get(o, "greedy_ids"), &ng);
        ck_assert_int_eq(ng, n_greedy);
        p->gap = malloc((size_t)n_greedy * sizeof(double));
        for (int s = 0; s < n_greedy; s++)
            p->gap[s] = json_number_value(json_array_get(g, (size_t)s));
        p->row_offset = (int)json_integer_value(json_object_get(o, "logits_row_offset"));
        p->noise = fmax(json_number_value(json_object_get(o, "noise_cache_vs_full_max_abs")),
                        json_number_value(json_object_get(o, "noise_prefix_vs_full_max_abs")));
        ck_assert_int_eq(p->row_offset, fx->n_rows);
        fx->n_rows += p->n;
        fx->longest = p->n + n_greedy > fx->longest ? p->n + n_greedy : fx->longest;
    }
}

void fixture_free(fixture *fx) {
    for (int i = 0; i < fx->n_prompts; i++)
        free(fx->prompts[i].ids), free(fx->prompts[i].greedy), free(fx->prompts[i].gap);
    json_decref(fx->expected);
    memset(fx, 0, sizeof *fx);
}

float *fixture_read_f32(const char *dir, const char *name, size_t n) {
    char path[4700];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    float *x = malloc(n * sizeof *x);
    size_t got = fread(x, sizeof *x, n, f);
    ck_assert_msg(got == n && fgetc(f) == EOF, "%s: expected %zu floats", path, n);
    fclose(f);
    return x; /* little-endian f32, as this host */
}

int32_t *fixture_json_ids(const json_t *arr, int *n) {
    *n = (int)json_array_size(arr);
    int32_t *ids = malloc((size_t)*n * sizeof *ids + 1);
    for (int i = 0; i < *n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(arr, (size_t)i));
    return ids;
}

int fixture_argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

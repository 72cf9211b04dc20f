/* Unit tests for model/safetensors: valid F32/F16/BF16 files and shard sets written here, every
 * malformation the reference reader rejects (each error must name the file or tensor), and the
 * real stories260K checkpoint from testdata. */
#include <check.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "model/safetensors.h"

static char tmp_dir[64];

static void make_tmp_dir(void) {
    strcpy(tmp_dir, "/tmp/kv_safetensors_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmp_dir));
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void remove_tmp_dir(void) {
    nftw(tmp_dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
}

static const char *tmp_path(const char *name) {
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", tmp_dir, name);
    return path;
}

/* Writes raw bytes to tmp_dir/name. */
static void write_raw(const char *name, const void *bytes, size_t n) {
    FILE *f = fopen(tmp_path(name), "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(bytes, 1, n, f), n);
    fclose(f);
}

/* Writes a safetensors file: 8-byte little-endian header_len (the header's length unless
 * header_len_override != 0), the header padded with spaces to a multiple of 8 bytes (as the
 * safetensors library writes it, so that tensor data is aligned), then data. */
static void write_st_len(const char *name, const char *header, const void *data, size_t data_len,
                         uint64_t header_len_override) {
    size_t hlen = (strlen(header) + 7) / 8 * 8;
    uint64_t n = header_len_override ? header_len_override : hlen;
    size_t total = 8 + hlen + data_len;
    uint8_t *buf = malloc(total);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(n >> (8 * i));
    memset(buf + 8, ' ', hlen);
    memcpy(buf + 8, header, strlen(header));
    if (data_len) memcpy(buf + 8 + hlen, data, data_len);
    write_raw(name, buf, total);
    free(buf);
}

static void write_st(const char *name, const char *header, const void *data, size_t data_len) {
    write_st_len(name, header, data, data_len, 0);
}

/* Opening tmp_dir/name must fail with a message containing every needle (NULL-terminated). */
static void assert_open_file_fails(const char *name, const char *needle1, const char *needle2) {
    safetensors_model m = {0};
    kv_error err = {{0}};
    char path[256];
    snprintf(path, sizeof path, "%s", tmp_path(name));
    ck_assert_int_eq(safetensors_open_file(&m, path, &err), -1);
    ck_assert_int_eq(m.n_tensors, 0);
    ck_assert_int_eq(m.n_files, 0);
    ck_assert_msg(strstr(err.msg, path) != NULL, "'%s' does not name the file", err.msg);
    ck_assert_msg(strstr(err.msg, needle1) != NULL, "'%s' lacks '%s'", err.msg, needle1);
    if (needle2)
        ck_assert_msg(strstr(err.msg, needle2) != NULL, "'%s' lacks '%s'", err.msg, needle2);
    safetensors_close(&m);
}

static void assert_open_dir_fails(const char *needle1, const char *needle2) {
    safetensors_model m;
    kv_error err = {{0}};
    ck_assert_int_eq(safetensors_open(&m, tmp_dir, &err), -1);
    ck_assert_int_eq(m.n_tensors, 0);
    ck_assert_msg(strstr(err.msg, needle1) != NULL, "'%s' lacks '%s'", err.msg, needle1);
    if (needle2)
        ck_assert_msg(strstr(err.msg, needle2) != NULL, "'%s' lacks '%s'", err.msg, needle2);
}

START_TEST(valid_f32_file) {
    make_tmp_dir();
    float data[6] = {1.5f, -2.0f, 3.25f, 4.0f, 5.0f, 6.0f};
    write_st("model.safetensors",
             "{\"__metadata__\": {\"format\": \"pt\"},"
             " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [16, 24]},"
             " \"a\": {\"dtype\": \"F32\", \"shape\": [2, 2], \"data_offsets\": [0, 16]}}   ",
             data, sizeof data);
    safetensors_model m;
    kv_error err;
    ck_assert_msg(safetensors_open(&m, tmp_dir, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(m.n_files, 1);
    ck_assert_int_eq(m.n_tensors, 2);
    const safetensors_tensor *a = safetensors_find(&m, "a"), *b = safetensors_find(&m, "b");
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_null(safetensors_find(&m, "__metadata__"));
    ck_assert_int_eq(a->dtype, KV_DTYPE_F32);
    ck_assert_int_eq(a->n_dims, 2);
    ck_assert_int_eq(a->shape[0], 2);
    ck_assert_int_eq(a->shape[1], 2);
    ck_assert_uint_eq(a->n_elems, 4);
    ck_assert_uint_eq(a->n_bytes, 16);
    float got[2];
    memcpy(got, b->data, sizeof got);
    ck_assert_float_eq(got[0], 5.0f);
    ck_assert_float_eq(got[1], 6.0f);
    memcpy(got, a->data, sizeof got);
    ck_assert_float_eq(got[0], 1.5f);
    ck_assert_float_eq(got[1], -2.0f);
    safetensors_close(&m);
    ck_assert_int_eq(m.n_tensors, 0);
    remove_tmp_dir();
}
END_TEST

START_TEST(valid_f16_bf16_scalar_and_empty) {
    make_tmp_dir();
    /* f16 1.0 = 0x3c00, -2.0 = 0xc000; bf16 0.5 = 0x3f00, 3.0 = 0x4040 (little endian) */
    uint8_t data[] = {0x00, 0x3c, 0x00, 0xc0, 0x00, 0x3f, 0x40, 0x40, 0x00, 0x00, 0x80, 0x3f};
    write_st("x.safetensors",
             "{\"h\": {\"dtype\": \"F16\", \"shape\": [1, 2], \"data_offsets\": [0, 4]},"
             " \"e\": {\"dtype\": \"F32\", \"shape\": [0, 7], \"data_offsets\": [4, 4]},"
             " \"g\": {\"dtype\": \"BF16\", \"shape\": [2], \"data_offsets\": [4, 8]},"
             " \"s\": {\"dtype\": \"F32\", \"shape\": [], \"data_offsets\": [8, 12]}}",
             data, sizeof data);
    safetensors_model m = {0};
    kv_error err;
    ck_assert_msg(safetensors_open_file(&m, tmp_path("x.safetensors"), &err) == 0, "%s", err.msg);
    const safetensors_tensor *h = safetensors_find(&m, "h"), *g = safetensors_find(&m, "g");
    const safetensors_tensor *s = safetensors_find(&m, "s"), *e = safetensors_find(&m, "e");
    float f[2];
    kv_convert_to_f32(f, h->data, h->dtype, 2);
    ck_assert_int_eq(h->dtype, KV_DTYPE_F16);
    ck_assert_float_eq(f[0], 1.0f);
    ck_assert_float_eq(f[1], -2.0f);
    ck_assert_int_eq(g->dtype, KV_DTYPE_BF16);
    kv_convert_to_f32(f, g->data, g->dtype, 2);
    ck_assert_float_eq(f[0], 0.5f);
    ck_assert_float_eq(f[1], 3.0f);
    ck_assert_int_eq(s->n_dims, 0);
    ck_assert_uint_eq(s->n_elems, 1);
    kv_convert_to_f32(f, s->data, s->dtype, 1);
    ck_assert_float_eq(f[0], 1.0f);
    ck_assert_uint_eq(e->n_elems, 0);
    ck_assert_uint_eq(e->n_bytes, 0);
    safetensors_close(&m);
    remove_tmp_dir();
}
END_TEST

static const char *index_two_shards = "{\"metadata\": {\"total_size\": 24}, \"weight_map\": {"
                                      " \"a\": \"model-00001-of-00002.safetensors\","
                                      " \"b\": \"model-00001-of-00002.safetensors\","
                                      " \"c\": \"model-00002-of-00002.safetensors\"}}";

static void write_two_shards(void) {
    float d1[4] = {1, 2, 3, 4}, d2[2] = {7, 8};
    write_st("model-00001-of-00002.safetensors",
             "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
             " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}}",
             d1, sizeof d1);
    write_st("model-00002-of-00002.safetensors",
             "{\"c\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", d2,
             sizeof d2);
}

START_TEST(valid_sharded) {
    make_tmp_dir();
    write_two_shards();
    write_raw("model.safetensors.index.json", index_two_shards, strlen(index_two_shards));
    safetensors_model m;
    kv_error err;
    ck_assert_msg(safetensors_open(&m, tmp_dir, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(m.n_files, 2);
    ck_assert_int_eq(m.n_tensors, 3);
    const safetensors_tensor *c = safetensors_find(&m, "c");
    ck_assert_ptr_nonnull(strstr(m.files[c->file].path, "model-00002-of-00002.safetensors"));
    float v;
    memcpy(&v, c->data, 4);
    ck_assert_float_eq(v, 7.0f);
    memcpy(&v, safetensors_find(&m, "b")->data, 4);
    ck_assert_float_eq(v, 3.0f);
    safetensors_close(&m);
    remove_tmp_dir();
}
END_TEST

START_TEST(sharded_errors) {
    make_tmp_dir();
    write_two_shards();
    /* missing shard */
    const char *idx = "{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\","
                      " \"z\": \"model-00003-of-00003.safetensors\"}}";
    write_raw("model.safetensors.index.json", idx, strlen(idx));
    assert_open_dir_fails("model-00003-of-00003.safetensors", "No such file");
    /* index naming a tensor its shard lacks */
    idx = "{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\","
          " \"lm_head.weight\": \"model-00002-of-00002.safetensors\"}}";
    write_raw("model.safetensors.index.json", idx, strlen(idx));
    assert_open_dir_fails("'lm_head.weight'", "model-00002-of-00002.safetensors");
    /* index naming the wrong shard */
    idx = "{\"weight_map\": {\"a\": \"model-00002-of-00002.safetensors\","
          " \"c\": \"model-00001-of-00002.safetensors\"}}";
    write_raw("model.safetensors.index.json", idx, strlen(idx));
    assert_open_dir_fails("tensor '", "listed in");
    /* shard outside the directory */
    idx = "{\"weight_map\": {\"a\": \"../model-00001-of-00002.safetensors\"}}";
    write_raw("model.safetensors.index.json", idx, strlen(idx));
    assert_open_dir_fails("weight_map['a']", "inside the model directory");
    /* no weight_map, bad JSON */
    write_raw("model.safetensors.index.json", "{\"x\": 1}", 8);
    assert_open_dir_fails("model.safetensors.index.json", "weight_map");
    write_raw("model.safetensors.index.json", "{\"weight_map\": ", 15);
    assert_open_dir_fails("model.safetensors.index.json", "invalid JSON");
    /* the same tensor in two shards */
    float d[2] = {0, 0};
    write_st("model-00002-of-00002.safetensors",
             "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", d,
             sizeof d);
    write_raw("model.safetensors.index.json", index_two_shards, strlen(index_two_shards));
    assert_open_dir_fails("tensor 'a' appears twice", "model-00002-of-00002.safetensors");
    /* nothing at all */
    remove_tmp_dir();
    make_tmp_dir();
    assert_open_dir_fails(tmp_dir, "no model.safetensors");
    remove_tmp_dir();
}
END_TEST

START_TEST(malformed_files) {
    make_tmp_dir();
    float d[8] = {0};
    const char *one = "{\"w\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}";

    write_raw("short.safetensors", "\x10\x00\x00", 3);
    assert_open_file_fails("short.safetensors", "too short", NULL);

    write_raw("empty.safetensors", "", 0);
    assert_open_file_fails("empty.safetensors", "too short", NULL);

    write_st_len("pasteof.safetensors", one, d, 16, 5000);
    assert_open_file_fails("pasteof.safetensors", "header length 5000", "past the end");

    write_st_len("huge.safetensors", one, d, 16, 100000001);
    assert_open_file_fails("huge.safetensors", "100000001", "limit");

    /* truncated: header promises 16 data bytes, file has 12 */
    write_st("trunc.safetensors", one, d, 12);
    assert_open_file_fails("trunc.safetensors", "'w'", "out of bounds");

    write_st("badjson.safetensors", "{\"w\": {\"dtype\": \"F32\", \"shape\": [4], ", d, 16);
    assert_open_file_fails("badjson.safetensors", "invalid header JSON", NULL);

    write_st("notobj.safetensors", "[1, 2, 3]", d, 0);
    assert_open_file_fails("notobj.safetensors", "'{'", NULL);

    write_st("oob.safetensors",
             "{\"w\": {\"dtype\": \"F32\", \"shape\": [16], \"data_offsets\": [0, 64]}}", d, 32);
    assert_open_file_fails("oob.safetensors", "'w'", "out of bounds");

    write_st("reversed.safetensors",
             "{\"w\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [16, 8]}}", d, 16);
    assert_open_file_fails("reversed.safetensors", "'w'", "out of bounds");

    write_st("mismatch.safetensors",
             "{\"w\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 8]}}", d, 8);
    assert_open_file_fails("mismatch.safetensors", "'w'", "needs 16");

    write_st("overlap.safetensors",
             "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]},"
             " \"b\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [8, 24]}}",
             d, 24);
    assert_open_file_fails("overlap.safetensors", "'a' and 'b' overlap", NULL);

    write_st("gap.safetensors",
             "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
             " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [16, 24]}}",
             d, 24);
    assert_open_file_fails("gap.safetensors", "belong to no tensor", "'b'");

    write_st("tail.safetensors", one, d, 20);
    assert_open_file_fails("tail.safetensors", "20 bytes", NULL);

    write_st("i64.safetensors",
             "{\"pos\": {\"dtype\": \"I64\", \"shape\": [2], \"data_offsets\": [0, 16]}}", d, 16);
    assert_open_file_fails("i64.safetensors", "'pos'", "I64");

    write_st("f8.safetensors",
             "{\"w8\": {\"dtype\": \"F8_E5M2\", \"shape\": [16], \"data_offsets\": [0, 16]}}", d,
             16);
    assert_open_file_fails("f8.safetensors", "'w8'", "F8_E5M2");
    /* F8_E4M3 (FP8 checkpoints) is read: one byte per element */
    write_st("e4m3.safetensors",
             "{\"w8\": {\"dtype\": \"F8_E4M3\", \"shape\": [4, 4], \"data_offsets\": [0, 16]}}", d,
             16);
    {
        safetensors_model m;
        kv_error err;
        memset(&m, 0, sizeof m);
        ck_assert_msg(safetensors_open_file(&m, tmp_path("e4m3.safetensors"), &err) == 0, "%s",
                      err.msg);
        const safetensors_tensor *t = safetensors_find(&m, "w8");
        ck_assert(t && t->dtype == KV_DTYPE_F8_E4M3 && t->n_elems == 16 && t->n_bytes == 16);
        safetensors_close(&m);
    }

    write_st("unknown.safetensors",
             "{\"q\": {\"dtype\": \"Q4_K\", \"shape\": [4], \"data_offsets\": [0, 16]}}", d, 16);
    assert_open_file_fails("unknown.safetensors", "'q'", "unknown dtype 'Q4_K'");

    write_st("dup.safetensors",
             "{\"layer.w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
             " \"layer.w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}}",
             d, 16);
    assert_open_file_fails("dup.safetensors", "duplicate", "layer.w");

    write_st("nodtype.safetensors", "{\"w\": {\"shape\": [4], \"data_offsets\": [0, 16]}}", d, 16);
    assert_open_file_fails("nodtype.safetensors", "'w'", "dtype");

    write_st("negshape.safetensors",
             "{\"w\": {\"dtype\": \"F32\", \"shape\": [-4], \"data_offsets\": [0, 16]}}", d, 16);
    assert_open_file_fails("negshape.safetensors", "'w'", "shape[0]");

    write_st("dims.safetensors",
             "{\"w\": {\"dtype\": \"F32\", \"shape\": [1,1,1,1,1,1,1,1,4],"
             " \"data_offsets\": [0, 16]}}",
             d, 16);
    assert_open_file_fails("dims.safetensors", "'w'", "9 dimensions");

    write_st("overflow.safetensors",
             "{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296],"
             " \"data_offsets\": [0, 16]}}",
             d, 16);
    assert_open_file_fails("overflow.safetensors", "'w'", "overflow");

    write_st("offsets.safetensors",
             "{\"w\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16.0]}}", d, 16);
    assert_open_file_fails("offsets.safetensors", "'w'", "data_offsets");

    write_st("meta.safetensors",
             "{\"__metadata__\": {\"format\": 1},"
             " \"w\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}",
             d, 16);
    assert_open_file_fails("meta.safetensors", "__metadata__", NULL);

    write_st("nul.safetensors", "{\"w\\u0000x\": {}}", d, 0);
    assert_open_file_fails("nul.safetensors", "invalid header JSON", NULL);

    assert_open_file_fails("does-not-exist.safetensors", "cannot open", NULL);
    remove_tmp_dir();
}
END_TEST

/* A failed open_file leaves the tensors of earlier files alone. */
START_TEST(failed_file_leaves_model_unchanged) {
    make_tmp_dir();
    write_two_shards();
    safetensors_model m = {0};
    kv_error err;
    ck_assert_int_eq(safetensors_open_file(&m, tmp_path("model-00001-of-00002.safetensors"), &err),
                     0);
    /* the same file again: every name is a duplicate */
    ck_assert_int_eq(safetensors_open_file(&m, tmp_path("model-00001-of-00002.safetensors"), &err),
                     -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "appears twice"));
    ck_assert_int_eq(m.n_files, 1);
    ck_assert_int_eq(m.n_tensors, 2);
    ck_assert_int_eq(safetensors_open_file(&m, tmp_path("model-00002-of-00002.safetensors"), &err),
                     0);
    ck_assert_int_eq(m.n_files, 2);
    ck_assert_int_eq(m.n_tensors, 3);
    safetensors_close(&m);
    remove_tmp_dir();
}
END_TEST

/* The stories260K checkpoint from testdata: 47 F32 tensors of a 5-layer Llama, tied embeddings. */
START_TEST(stories260k_tensors) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/models/stories260K", getenv("KVSERVE_TESTDATA"));
    safetensors_model m;
    kv_error err;
    ck_assert_msg(safetensors_open(&m, dir, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(m.n_files, 1);
    ck_assert_int_eq(m.n_tensors, 47);
    ck_assert_ptr_null(safetensors_find(&m, "lm_head.weight"));
    static const struct {
        const char *name;
        int n_dims;
        int64_t d0, d1;
    } want[] = {
        {"model.embed_tokens.weight", 2, 512, 64},
        {"model.norm.weight", 1, 64, 0},
        {"model.layers.0.input_layernorm.weight", 1, 64, 0},
        {"model.layers.4.self_attn.q_proj.weight", 2, 64, 64},
        {"model.layers.4.self_attn.k_proj.weight", 2, 32, 64},
        {"model.layers.2.self_attn.v_proj.weight", 2, 32, 64},
        {"model.layers.1.self_attn.o_proj.weight", 2, 64, 64},
        {"model.layers.3.mlp.gate_proj.weight", 2, 172, 64},
        {"model.layers.3.mlp.up_proj.weight", 2, 172, 64},
        {"model.layers.0.mlp.down_proj.weight", 2, 64, 172},
        {"model.layers.4.post_attention_layernorm.weight", 1, 64, 0},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const safetensors_tensor *t = safetensors_find(&m, want[i].name);
        ck_assert_msg(t != NULL, "missing %s", want[i].name);
        ck_assert_int_eq(t->dtype, KV_DTYPE_F32);
        ck_assert_int_eq(t->n_dims, want[i].n_dims);
        ck_assert_int_eq(t->shape[0], want[i].d0);
        if (want[i].n_dims == 2) ck_assert_int_eq(t->shape[1], want[i].d1);
    }
    /* trained weights: finite, and not all zero */
    const safetensors_tensor *emb = safetensors_find(&m, "model.embed_tokens.weight");
    float *f = malloc(emb->n_bytes);
    memcpy(f, emb->data, emb->n_bytes);
    double sum_sq = 0;
    for (size_t i = 0; i < emb->n_elems; i++) {
        ck_assert(isfinite(f[i]));
        sum_sq += (double)f[i] * f[i];
    }
    ck_assert(sum_sq > 0);
    free(f);
    safetensors_close(&m);
}
END_TEST

int main(void) {
    const char *td = getenv("KVSERVE_TESTDATA");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/models/stories260K/model.safetensors", td ? td : "");
    bool have_testdata = td && access(dir, R_OK) == 0;
    if (!have_testdata) printf("SKIP: stories260k_tensors (no %s)\n", dir);

    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, valid_f32_file);
    tcase_add_test(tc, valid_f16_bf16_scalar_and_empty);
    tcase_add_test(tc, valid_sharded);
    tcase_add_test(tc, sharded_errors);
    tcase_add_test(tc, malformed_files);
    tcase_add_test(tc, failed_file_leaves_model_unchanged);
    if (have_testdata) tcase_add_test(tc, stories260k_tensors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

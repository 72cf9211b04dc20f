/* model_load: reads config.json, picks the family that implements its architecture, loads it, and
 * fills the shape and the fingerprint every family shares. Adding a family is a row of the table
 * below and its own file (its llama_family: tensor names and step). */
#include "model/model.h"

#include <dirent.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>

#include "model/llama.h"

typedef int (*model_open_fn)(model *out, const char *dir, backend *be,
                             const model_load_options *opt, kv_error *err);

static const struct {
    hf_arch arch;
    model_open_fn open;
    const llama_family *family; /* the decoder's tensor names and step (model/llama.h) */
} model_families[] = {
    {HF_ARCH_LLAMA, llama_model_open, &llama_default_family},
    {HF_ARCH_MISTRAL, llama_model_open, &llama_default_family}, /* sliding_window: layer data */
    {HF_ARCH_QWEN2, llama_model_open, &llama_default_family},
    {HF_ARCH_SMOLLM3, llama_model_open, &llama_default_family}, /* no_rope_layers: layer data */
    {HF_ARCH_QWEN3, llama_model_open, &qwen3_family},
    {HF_ARCH_GEMMA2, llama_model_open, &gemma_family},
    {HF_ARCH_GEMMA3, llama_model_open, &gemma_family},
    {HF_ARCH_PHI3, llama_model_open, &phi3_family},
    {HF_ARCH_GRANITE, llama_model_open, &granite_family},
};

const llama_family *llama_family_of(hf_arch arch) {
    for (size_t i = 0; i < sizeof model_families / sizeof *model_families; i++)
        if (model_families[i].arch == arch) return model_families[i].family;
    return NULL;
}

static int name_cmp(const void *x, const void *y) {
    return strcmp(*(char *const *)x, *(char *const *)y);
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* SHA-256 of a safetensors file's header (the u64 length and the JSON: every tensor's name, dtype,
 * shape and offsets) into md, with the file's size. A file that cannot be read or has an
 * implausible header enters as its size alone (model loading reports the error). */
static void fingerprint_safetensors(EVP_MD_CTX *md, const char *path) {
    long long size = -1;
    FILE *f = fopen(path, "rb");
    uint8_t len8[8] = {0};
    if (f && fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    EVP_DigestUpdate(md, &size, sizeof size);
    if (!f) return;
    if (fseek(f, 0, SEEK_SET) == 0 && fread(len8, 1, 8, f) == 8) {
        uint64_t n = 0;
        for (int i = 0; i < 8; i++) n |= (uint64_t)len8[i] << (8 * i);
        EVP_DigestUpdate(md, len8, 8);
        if (size >= 8 && n <= (uint64_t)size - 8 && n <= (100u << 20)) {
            char buf[65536];
            for (size_t k; n > 0 && (k = fread(buf, 1, n < sizeof buf ? n : sizeof buf, f)) > 0;)
                EVP_DigestUpdate(md, buf, k), n -= k;
        }
    }
    fclose(f);
}

/* The model's identity, as hex SHA-256 of: the shape string (architecture, sizes, KV dtype,
 * backend), the load format, config.json's bytes, and the name, size and header (tensor names,
 * dtypes, shapes, offsets) of every safetensors file. Not the weights themselves (hashing 16 GB
 * would cost seconds at every start) and not mtimes: a copy of the model on another machine, or
 * after a restore, has the same identity, so its KV blocks are shared through the disk and remote
 * tiers. (Weights rewritten in place with the same header keep the identity: give such a model
 * another cache_salt, or clear the tiers.) */
static void model_fingerprint(const char *dir, const char *shape, bool dummy, char *out,
                              size_t out_size) {
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    KV_CHECK(md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1);
    EVP_DigestUpdate(md, shape, strlen(shape) + 1);
    EVP_DigestUpdate(md, dummy ? "dummy" : "safetensors", dummy ? 6 : 12);

    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "rb");
    if (f) {
        char buf[8192];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0) EVP_DigestUpdate(md, buf, n);
        fclose(f);
    }
    char **names = NULL;
    int n_names = 0;
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));)
        if (ends_with(e->d_name, ".safetensors")) {
            names = kv_realloc(names, (size_t)(n_names + 1) * sizeof *names);
            names[n_names++] = kv_strdup(e->d_name);
        }
    if (d) closedir(d);
    if (n_names) qsort(names, (size_t)n_names, sizeof *names, name_cmp);
    for (int i = 0; i < n_names; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        EVP_DigestUpdate(md, names[i], strlen(names[i]) + 1);
        if (!dummy) fingerprint_safetensors(md, path);
        free(names[i]);
    }
    free(names);
    unsigned char digest[32];
    KV_CHECK(EVP_DigestFinal_ex(md, digest, NULL) == 1);
    EVP_MD_CTX_free(md);
    KV_CHECK(out_size >= 2 * sizeof digest + 1);
    for (size_t i = 0; i < sizeof digest; i++) snprintf(out + 2 * i, 3, "%02x", digest[i]);
}

model *model_load(const char *dir, backend *be, const model_load_options *opt, kv_error *err) {
    KV_CHECK(opt->max_tokens >= 1);
    hf_config cfg;
    if (hf_config_load(&cfg, dir, err)) return NULL;
    model_open_fn open = NULL;
    for (size_t i = 0; i < sizeof model_families / sizeof *model_families; i++)
        if (model_families[i].arch == cfg.arch) open = model_families[i].open;
    if (!open) {
        kv_error_set(err, "%s/config.json: architecture %s has no implementation", dir,
                     cfg.arch_name);
        return NULL;
    }
    model *m = kv_calloc(1, sizeof *m);
    if (open(m, dir, be, opt, err)) {
        free(m);
        return NULL;
    }
    m->be = be;
    m->cfg = cfg;
    m->n_layers = cfg.n_layers;
    m->n_kv_heads = cfg.n_kv_heads;
    m->head_dim = cfg.head_dim;
    m->vocab = cfg.vocab_size;
    m->max_tokens = opt->max_tokens;
    m->max_position = cfg.max_position_embeddings;
    m->n_eos = cfg.n_eos;
    for (int i = 0; i < cfg.n_eos; i++) m->eos_ids[i] = cfg.eos_token_ids[i];
    char shape[224];
    snprintf(shape, sizeof shape, "%s L%d d%d h%d kv%d hd%d v%d %s %s%s", cfg.arch_name,
             cfg.n_layers, cfg.hidden_size, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
             cfg.vocab_size, kv_dtype_name(be->kv_dtype), be->name,
             opt->quantize_fp8 ? " fp8-weights" : "");
    model_fingerprint(dir, shape, opt->format == MODEL_LOAD_DUMMY, m->fingerprint,
                      sizeof m->fingerprint);
    return m;
}

void model_free(model *m) {
    if (!m) return;
    if (m->ops->free) m->ops->free(m);
    free(m);
}

backend_kv_layout model_kv_layout(const model *m, int block_size) {
    backend_kv_layout l = {.n_layers = m->n_layers,
                           .n_kv_heads = m->n_kv_heads,
                           .head_dim = m->head_dim,
                           .block_size = block_size,
                           .dtype = m->be->kv_dtype,
                           .kv_scales = m->kv_scales};
    backend_kv_layout_finish(&l);
    return l;
}

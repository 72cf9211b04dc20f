/* Memory-mapped safetensors files: header validation with the rules of the reference reader
 * (huggingface/safetensors), the tensor table, and shard sets named by
 * model.safetensors.index.json. Tensor bytes are never copied: they stay in the mappings. */
#include "model/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define INDEX_NAME "model.safetensors.index.json"

/* Dtypes the format defines that kvserve cannot use, so that the message can say "I64 is not
 * supported" rather than "unknown dtype". */
static const char *const unsupported_dtypes[] = {
    "BOOL", "U8",  "I8",  "I16",     "U16",     "I32",     "U32",     "I64",
    "U64",  "F64", "C64", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4",
};

static int parse_dtype(const char *s, kv_dtype *out) {
    if (strcmp(s, "F32") == 0)
        *out = KV_DTYPE_F32;
    else if (strcmp(s, "F16") == 0)
        *out = KV_DTYPE_F16;
    else if (strcmp(s, "BF16") == 0)
        *out = KV_DTYPE_BF16;
    else if (strcmp(s, "F8_E4M3") == 0)
        *out = KV_DTYPE_F8_E4M3;
    else {
        for (size_t i = 0; i < sizeof unsupported_dtypes / sizeof unsupported_dtypes[0]; i++)
            if (strcmp(s, unsupported_dtypes[i]) == 0) return -2;
        return -1;
    }
    return 0;
}

/* A non-negative JSON integer that fits in uint64. */
static bool json_to_u64(const json_t *v, uint64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

/* Fills t from one header entry (dtype, shape, data_offsets); begin/end are the offsets. */
static int parse_entry(safetensors_tensor *t, const char *name, const json_t *info, size_t data_len,
                       uint64_t *begin, uint64_t *end, const char *path, kv_error *err) {
    if (!json_is_object(info))
        return kv_error_set(err, "%s: tensor '%s': entry must be an object", path, name);
    const json_t *dtype = json_object_get(info, "dtype");
    const json_t *shape = json_object_get(info, "shape");
    const json_t *offsets = json_object_get(info, "data_offsets");
    if (!json_is_string(dtype))
        return kv_error_set(err, "%s: tensor '%s': dtype missing or not a string", path, name);
    int rc = parse_dtype(json_string_value(dtype), &t->dtype);
    if (rc == -2)
        return kv_error_set(err,
                            "%s: tensor '%s' has dtype %s, which is not supported (F32, F16, "
                            "BF16, F8_E4M3)",
                            path, name, json_string_value(dtype));
    if (rc)
        return kv_error_set(err, "%s: tensor '%s' has unknown dtype '%.32s'", path, name,
                            json_string_value(dtype));
    if (!json_is_array(shape))
        return kv_error_set(err, "%s: tensor '%s': shape missing or not a list", path, name);
    if (json_array_size(shape) > SAFETENSORS_MAX_DIMS)
        return kv_error_set(err, "%s: tensor '%s' has %zu dimensions, at most %d are supported",
                            path, name, json_array_size(shape), SAFETENSORS_MAX_DIMS);
    t->n_dims = (int)json_array_size(shape);
    uint64_t n_elems = 1;
    for (int d = 0; d < t->n_dims; d++) {
        uint64_t dim;
        if (!json_to_u64(json_array_get(shape, (size_t)d), &dim))
            return kv_error_set(err, "%s: tensor '%s': shape[%d] is not a non-negative integer",
                                path, name, d);
        if (dim != 0 && n_elems > SIZE_MAX / 8 / dim)
            return kv_error_set(err, "%s: tensor '%s': shape overflows", path, name);
        n_elems *= dim;
        t->shape[d] = (int64_t)dim;
    }
    t->n_elems = (size_t)n_elems;
    t->n_bytes = t->n_elems * kv_dtype_size(t->dtype);
    if (!json_is_array(offsets) || json_array_size(offsets) != 2 ||
        !json_to_u64(json_array_get(offsets, 0), begin) ||
        !json_to_u64(json_array_get(offsets, 1), end))
        return kv_error_set(err,
                            "%s: tensor '%s': data_offsets must be a list of two non-negative "
                            "integers",
                            path, name);
    if (*end < *begin || *end > data_len)
        return kv_error_set(err,
                            "%s: tensor '%s': data_offsets [%llu, %llu] out of bounds of the "
                            "%zu-byte data section",
                            path, name, (unsigned long long)*begin, (unsigned long long)*end,
                            data_len);
    if (*end - *begin != t->n_bytes)
        return kv_error_set(err,
                            "%s: tensor '%s': data_offsets span %llu bytes but shape x %s needs "
                            "%zu",
                            path, name, (unsigned long long)(*end - *begin),
                            kv_dtype_name(t->dtype), t->n_bytes);
    return 0;
}

/* __metadata__ is a map of strings to strings in the reference reader. */
static int check_metadata(const json_t *meta, const char *path, kv_error *err) {
    const char *key;
    const json_t *v;
    if (!json_is_object(meta)) return kv_error_set(err, "%s: __metadata__ must be an object", path);
    json_object_foreach((json_t *)meta, key, v) {
        if (!json_is_string(v))
            return kv_error_set(err, "%s: __metadata__['%s'] must be a string", path, key);
    }
    return 0;
}

typedef struct span {
    uint64_t begin, end;
    int tensor;
} span;

static int span_cmp(const void *a, const void *b) {
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* The reference reader demands that tensors tile the data section exactly: sorted by offset,
 * each begins where the previous ended, the first at 0 and the last at the end. */
static int check_tiling(const safetensors_model *m, span *spans, int n, size_t data_len,
                        const char *path, kv_error *err) {
    qsort(spans, (size_t)n, sizeof *spans, span_cmp);
    uint64_t at = 0;
    for (int i = 0; i < n; i++) {
        const char *name = m->tensors[spans[i].tensor].name;
        if (spans[i].begin < at)
            return kv_error_set(err, "%s: tensors '%s' and '%s' overlap (bytes %llu..%llu)", path,
                                m->tensors[spans[i - 1].tensor].name, name,
                                (unsigned long long)spans[i].begin, (unsigned long long)at);
        if (spans[i].begin > at)
            return kv_error_set(err,
                                "%s: bytes %llu..%llu of the data section belong to no tensor "
                                "(before '%s')",
                                path, (unsigned long long)at, (unsigned long long)spans[i].begin,
                                name);
        at = spans[i].end;
    }
    if (at != data_len)
        return kv_error_set(err,
                            "%s: the data section has %zu bytes but its tensors end at byte %llu",
                            path, data_len, (unsigned long long)at);
    return 0;
}

static int name_cmp(const void *a, const void *b) {
    return strcmp((*(const safetensors_tensor *const *)a)->name,
                  (*(const safetensors_tensor *const *)b)->name);
}

/* Names must be unique across every file of the model. */
static int check_unique_names(const safetensors_model *m, const char *path, kv_error *err) {
    if (m->n_tensors < 2) return 0;
    const safetensors_tensor **sorted = kv_malloc((size_t)m->n_tensors * sizeof *sorted);
    for (int i = 0; i < m->n_tensors; i++) sorted[i] = &m->tensors[i];
    qsort(sorted, (size_t)m->n_tensors, sizeof *sorted, name_cmp);
    int rc = 0;
    for (int i = 1; i < m->n_tensors && rc == 0; i++) {
        if (strcmp(sorted[i - 1]->name, sorted[i]->name) == 0) {
            const safetensors_tensor *a = sorted[i - 1], *b = sorted[i];
            rc = kv_error_set(err, "%s: tensor '%s' appears twice (in %s and %s)", path, a->name,
                              a->file < m->n_files ? m->files[a->file].path : path,
                              b->file < m->n_files ? m->files[b->file].path : path);
        }
    }
    free(sorted);
    return rc;
}

static void drop_tensors_from(safetensors_model *m, int first) {
    for (int i = first; i < m->n_tensors; i++) free(m->tensors[i].name);
    m->n_tensors = first;
}

int safetensors_parse_header(safetensors_model *m, const char *json, size_t json_len,
                             const uint8_t *data, size_t data_len, int file, const char *path,
                             kv_error *err) {
    if (json_len == 0 || json[0] != '{')
        return kv_error_set(err, "%s: header does not start with '{'", path);
    json_error_t jerr;
    json_t *root = json_loadb(json, json_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return kv_error_set(err, "%s: invalid header JSON at column %d: %s", path, jerr.column,
                            jerr.text);
    int first = m->n_tensors, rc = 0;
    size_t n_entries = json_object_size(root);
    span *spans = kv_malloc(n_entries * sizeof *spans);
    int n_spans = 0;
    m->tensors = kv_realloc(m->tensors, ((size_t)first + n_entries) * sizeof *m->tensors);
    const char *name;
    json_t *info;
    json_object_foreach(root, name, info) {
        if (strcmp(name, "__metadata__") == 0) {
            if ((rc = check_metadata(info, path, err))) break;
            continue;
        }
        safetensors_tensor t = {0};
        uint64_t begin, end;
        if ((rc = parse_entry(&t, name, info, data_len, &begin, &end, path, err))) break;
        t.name = kv_strdup(name);
        t.data = data ? data + begin : NULL;
        t.file = file;
        spans[n_spans++] = (span){begin, end, m->n_tensors};
        m->tensors[m->n_tensors++] = t;
    }
    json_decref(root);
    if (rc == 0) rc = check_tiling(m, spans, n_spans, data_len, path, err);
    if (rc == 0) rc = check_unique_names(m, path, err);
    free(spans);
    if (rc) drop_tensors_from(m, first);
    return rc;
}

int safetensors_parse_image(safetensors_model *m, const uint8_t *buf, size_t size, int file,
                            const char *path, kv_error *err) {
    if (size < 8)
        return kv_error_set(err, "%s: %zu bytes is too short for a safetensors file", path, size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | buf[i];
    if (n > SAFETENSORS_MAX_HEADER)
        return kv_error_set(err, "%s: header length %llu exceeds the %u-byte limit", path,
                            (unsigned long long)n, SAFETENSORS_MAX_HEADER);
    if (n > size - 8)
        return kv_error_set(err, "%s: header length %llu runs past the end of the %zu-byte file",
                            path, (unsigned long long)n, size);
    return safetensors_parse_header(m, (const char *)buf + 8, (size_t)n, buf + 8 + n,
                                    size - 8 - (size_t)n, file, path, err);
}

int safetensors_open_file(safetensors_model *m, const char *path, kv_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return kv_error_set(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return kv_error_set(err, "%s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    if (size < 8) {
        close(fd);
        return kv_error_set(err, "%s: %zu bytes is too short for a safetensors file", path, size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return kv_error_set(err, "%s: mmap failed: %s", path, strerror(errno));

    m->files = kv_realloc(m->files, ((size_t)m->n_files + 1) * sizeof *m->files);
    safetensors_file *f = &m->files[m->n_files];
    *f = (safetensors_file){kv_strdup(path), map, size};
    m->n_files++;
    if (safetensors_parse_image(m, map, size, m->n_files - 1, f->path, err)) {
        m->n_files--;
        munmap(map, size);
        free(f->path);
        return -1;
    }
    return 0;
}

void safetensors_close(safetensors_model *m) {
    drop_tensors_from(m, 0);
    free(m->tensors);
    for (int i = 0; i < m->n_files; i++) {
        munmap(m->files[i].map, m->files[i].size);
        free(m->files[i].path);
    }
    free(m->files);
    memset(m, 0, sizeof *m);
}

const safetensors_tensor *safetensors_find(const safetensors_model *m, const char *name) {
    for (int i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0) return &m->tensors[i];
    return NULL;
}

/* Shard names come from the index file: they must stay inside the model directory. */
static bool shard_name_ok(const char *s) {
    if (s[0] == '\0' || s[0] == '/') return false;
    for (const char *p = s; *p;) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.') return false;
        p += n + (slash ? 1 : 0);
    }
    return true;
}

static int file_index(const safetensors_model *m, const char *path) {
    for (int i = 0; i < m->n_files; i++)
        if (strcmp(m->files[i].path, path) == 0) return i;
    return -1;
}

/* Opens every shard the weight map names, then checks that each named tensor is in its shard. */
static int open_index(safetensors_model *m, const char *dir, const char *index_path,
                      kv_error *err) {
    json_error_t jerr;
    json_t *root = json_load_file(index_path, 0, &jerr);
    if (!root)
        return kv_error_set(err, "%s: invalid JSON at line %d column %d: %s", index_path, jerr.line,
                            jerr.column, jerr.text);
    const json_t *map = json_is_object(root) ? json_object_get(root, "weight_map") : NULL;
    int rc = 0;
    if (!json_is_object(map)) {
        rc = kv_error_set(err, "%s: weight_map missing or not an object", index_path);
        goto done;
    }
    char path[4096];
    const char *name;
    const json_t *shard;
    json_object_foreach((json_t *)map, name, shard) {
        if (!json_is_string(shard) || !shard_name_ok(json_string_value(shard))) {
            rc = kv_error_set(err,
                              "%s: weight_map['%s'] must name a file inside the model directory",
                              index_path, name);
            goto done;
        }
        if (snprintf(path, sizeof path, "%s/%s", dir, json_string_value(shard)) >=
            (int)sizeof path) {
            rc = kv_error_set(err, "%s: shard path too long", index_path);
            goto done;
        }
        if (file_index(m, path) < 0 && safetensors_open_file(m, path, err)) {
            if (err) { /* err may be NULL, as for every kv_error */
                size_t n = strlen(err->msg);
                snprintf(err->msg + n, sizeof err->msg - n, " (shard named by %s)", INDEX_NAME);
            }
            rc = -1;
            goto done;
        }
    }
    /* every shard is open: each listed tensor must be in the shard the index names */
    json_object_foreach((json_t *)map, name, shard) {
        snprintf(path, sizeof path, "%s/%s", dir, json_string_value(shard));
        const safetensors_tensor *t = safetensors_find(m, name);
        if (!t) {
            rc = kv_error_set(err, "%s: tensor '%s' is not in %s", index_path, name,
                              json_string_value(shard));
            goto done;
        }
        if (strcmp(m->files[t->file].path, path) != 0) {
            rc = kv_error_set(err, "%s: tensor '%s' is listed in %s but found in %s", index_path,
                              name, json_string_value(shard), m->files[t->file].path);
            goto done;
        }
    }
done:
    json_decref(root);
    return rc;
}

int safetensors_open(safetensors_model *m, const char *dir, kv_error *err) {
    memset(m, 0, sizeof *m);
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, INDEX_NAME) >= (int)sizeof path)
        return kv_error_set(err, "%s: path too long", dir);
    int rc;
    if (access(path, F_OK) == 0) {
        rc = open_index(m, dir, path, err);
    } else {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        if (access(path, F_OK) != 0)
            return kv_error_set(err, "%s: no model.safetensors or %s", dir, INDEX_NAME);
        rc = safetensors_open_file(m, path, err);
    }
    if (rc) safetensors_close(m);
    return rc;
}

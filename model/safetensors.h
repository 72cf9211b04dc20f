/* Memory-mapped safetensors: one model.safetensors or shards named by
 * model.safetensors.index.json. Validates like the reference reader: header <= 100 MB, JSON
 * shape, dtype known, offsets in bounds, equal to shape x dtype size, no overlap. Owns the
 * mappings and the tensor table; tensor data points into the mappings. */
#ifndef KVSERVE_SAFETENSORS_H
#define KVSERVE_SAFETENSORS_H

#include "model/common.h"

#define SAFETENSORS_MAX_DIMS 8

typedef struct safetensors_tensor {
    char *name;
    kv_dtype dtype;
    int n_dims;
    int64_t shape[SAFETENSORS_MAX_DIMS];
    size_t n_elems;
    size_t n_bytes;
    const void *data; /* inside the file mapping */
    int file;         /* index into safetensors_model.files */
} safetensors_tensor;

typedef struct safetensors_file {
    char *path;
    void *map;
    size_t size;
} safetensors_file;

typedef struct safetensors_model {
    safetensors_file *files;
    int n_files;
    safetensors_tensor *tensors;
    int n_tensors;
} safetensors_model;

/* Opens dir/model.safetensors or the shards listed in dir/model.safetensors.index.json. */
int safetensors_open(safetensors_model *m, const char *dir, kv_error *err);
/* Opens one file. */
int safetensors_open_file(safetensors_model *m, const char *path, kv_error *err);
void safetensors_close(safetensors_model *m);
const safetensors_tensor *safetensors_find(const safetensors_model *m, const char *name);

/* Parses and validates a header (the bytes after the 8-byte length) against a data section of
 * data_len bytes. Appends tensors to m (file index `file`, data relative to `data`). The fuzz
 * target drives this. */
int safetensors_parse_header(safetensors_model *m, const char *json, size_t json_len,
                             const uint8_t *data, size_t data_len, int file, const char *path,
                             kv_error *err);

#endif

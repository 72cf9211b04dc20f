/* Memory-mapped safetensors: one model.safetensors or shards named by
 * model.safetensors.index.json. Validates like the reference reader: header <= 100 MB, JSON
 * shape, dtype known, offsets in bounds, equal to shape x dtype size, no overlap. Owns the
 * mappings and the tensor table; tensor data points into the mappings. */
#ifndef KVSERVE_SAFETENSORS_H
#define KVSERVE_SAFETENSORS_H

#include "model/common.h"

#define SAFETENSORS_MAX_DIMS   8
#define SAFETENSORS_MAX_HEADER 100000000u /* bytes, as the reference reader */

typedef struct safetensors_tensor {
    char *name;
    kv_dtype dtype;
    int n_dims;
    int64_t shape[SAFETENSORS_MAX_DIMS];
    size_t n_elems;
    size_t n_bytes;
    const void *data; /* inside the file mapping; aligned to the dtype size only when the header
                       * length is a multiple of 8, as the safetensors library writes it */
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

/* Opens dir/model.safetensors or the shards listed in dir/model.safetensors.index.json (each
 * tensor the index lists must be in the shard it names). Initializes m; on error m is left
 * empty and needs no close. */
int safetensors_open(safetensors_model *m, const char *dir, kv_error *err);
/* Maps one file and appends it and its tensors to m (zeroed, or holding earlier files). On
 * error m is unchanged. Tensor names must be unique across all files of m. */
int safetensors_open_file(safetensors_model *m, const char *path, kv_error *err);
/* Unmaps and frees everything; m is zeroed and may be reused. Safe on a zeroed m. */
void safetensors_close(safetensors_model *m);
/* NULL when absent. */
const safetensors_tensor *safetensors_find(const safetensors_model *m, const char *name);

/* Validates a whole file image (8-byte little-endian header length, header, data) and appends
 * its tensors (data pointing into buf). The fuzz target drives this. */
int safetensors_parse_image(safetensors_model *m, const uint8_t *buf, size_t size, int file,
                            const char *path, kv_error *err);

/* Parses and validates a header (the bytes after the 8-byte length) against a data section of
 * data_len bytes. Appends tensors to m (file index `file`, data relative to `data`); on error
 * m is unchanged. Errors name `path` and the tensor. */
int safetensors_parse_header(safetensors_model *m, const char *json, size_t json_len,
                             const uint8_t *data, size_t data_len, int file, const char *path,
                             kv_error *err);

#endif

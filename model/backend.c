/* Backend selection and the KV layout helpers shared by every backend. */
#include "model/backend.h"

#include "model/cpu/cpu_backend.h"
#ifdef KVSERVE_CUDA
#include "model/cuda/cuda_backend.h"
#endif

void backend_kv_layout_finish(backend_kv_layout *l) {
    l->block_bytes = (size_t)l->n_layers * 2 * (size_t)l->n_kv_heads * (size_t)l->block_size *
                     (size_t)l->head_dim * kv_dtype_size(l->dtype);
}

size_t backend_kv_offset(const backend_kv_layout *l, int layer, int kv, int head, int slot) {
    size_t idx = (((size_t)layer * 2 + (size_t)kv) * (size_t)l->n_kv_heads + (size_t)head) *
                     (size_t)l->block_size +
                 (size_t)slot;
    return idx * (size_t)l->head_dim * kv_dtype_size(l->dtype);
}

backend *backend_create(const char *name, int n_threads, kv_error *err) {
    if (strcmp(name, "cpu") == 0) return cpu_backend_create(n_threads);
    if (strcmp(name, "cuda") == 0) {
#ifdef KVSERVE_CUDA
        return cuda_backend_create(err);
#else
        kv_error_set(err, "this kvserve was built without CUDA (rebuild with -Dcuda=enabled)");
        return NULL;
#endif
    }
    kv_error_set(err, "unknown device '%s' (expected cuda or cpu)", name);
    return NULL;
}

void backend_destroy(backend *be) {
    if (be) be->ops->destroy(be);
}

int backend_set_kv_cache_dtype(backend *be, const char *name, kv_error *err) {
    if (strcmp(name, "auto") == 0) {
        be->kv_dtype = be->act_dtype; /* every backend's default */
        return 0;
    }
    if (strcmp(name, "fp8") == 0 || strcmp(name, "fp8_e4m3") == 0) {
        be->kv_dtype = KV_DTYPE_F8_E4M3;
        return 0;
    }
    return kv_error_set(err, "kv_cache_dtype '%s' is not supported (expected auto, fp8, fp8_e4m3)",
                        name);
}

bool backend_cuda_check(kv_error *why) {
#ifdef KVSERVE_CUDA
    return cuda_backend_usable(why);
#else
    kv_error_set(why, "this kvserve was built without CUDA");
    return false;
#endif
}

bool backend_cuda_available(void) {
    return backend_cuda_check(NULL);
}

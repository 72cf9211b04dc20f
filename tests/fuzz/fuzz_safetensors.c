/* libFuzzer target: a whole safetensors file image through safetensors_parse_image (length
 * prefix, header JSON, offset validation). Every accepted tensor's bytes are read so that ASan
 * catches a range the validator let through out of bounds. */
#include <stdint.h>

#include "model/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    safetensors_model m = {0};
    kv_error err = {{0}};
    if (safetensors_parse_image(&m, data, size, 0, "fuzz.safetensors", &err) == 0) {
        unsigned sum = 0;
        for (int i = 0; i < m.n_tensors; i++) {
            const safetensors_tensor *t = &m.tensors[i];
            KV_CHECK(t->n_bytes == t->n_elems * kv_dtype_size(t->dtype));
            KV_CHECK(safetensors_find(&m, t->name) == t);
            if (t->n_bytes == 0) continue;
            const uint8_t *p = t->data;
            KV_CHECK(p >= data && p + t->n_bytes <= data + size);
            sum += p[0] + p[t->n_bytes - 1];
        }
        (void)sum;
    } else {
        KV_CHECK(err.msg[0] != '\0' && m.n_tensors == 0);
    }
    safetensors_close(&m);
    return 0;
}

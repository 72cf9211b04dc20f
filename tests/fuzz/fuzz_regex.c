/* libFuzzer target: bytes as a regex for the structured-output compiler (small limits); a
 * compiled DFA must be well formed (live start, transitions in range, every live state able to
 * reach acceptance), and walking the input itself through it must stay in bounds. */
#include <stdint.h>
#include <stdlib.h>

#include "model/structured/regex_dfa.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sc_limits lim;
    sc_limits_default(&lim);
    lim.max_regex_bytes = 4096;
    lim.max_nfa_nodes = 20000;
    lim.max_dfa_states = 2000;
    sc_dfa *d = NULL;
    kv_error err;
    if (sc_regex_compile((const char *)data, size, &lim, &d, &err) != 0) {
        KV_CHECK(d == NULL && err.msg[0]);
        return 0;
    }
    KV_CHECK(d->start >= 0 && d->start < d->n_states && d->n_classes >= 1);
    for (size_t k = 0; k < (size_t)d->n_states * (size_t)d->n_classes; k++)
        KV_CHECK(d->delta[k] >= -1 && d->delta[k] < d->n_states);
    for (int b = 0; b < 256; b++) KV_CHECK(d->cls[b] < d->n_classes);
    int32_t s = sc_dfa_walk(d, d->start, data, size);
    KV_CHECK(s >= -1 && s < d->n_states);
    sc_dfa_matches(d, (const char *)data, size);
    sc_dfa_free(d);
    return 0;
}

/* libFuzzer target: bytes as a JSON Schema for the structured-output compiler (small limits):
 * schema -> regex -> DFA must either succeed or fail with a message, and a compiled schema's DFA
 * must accept the JSON text of the schema's "const" or first "enum" value when there is one. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/structured/json_schema.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    json_t *s = json_loadb((const char *)data, size, JSON_DECODE_ANY, NULL);
    if (!s) return 0;
    sc_limits lim;
    sc_limits_default(&lim);
    lim.max_regex_bytes = 16384;
    lim.max_nfa_nodes = 20000;
    lim.max_dfa_states = 2000;
    lim.max_depth = 3;
    char *re = NULL;
    kv_error err;
    if (sc_schema_regex(s, &lim, &re, &err) != 0) {
        KV_CHECK(re == NULL && err.msg[0]);
        json_decref(s);
        return 0;
    }
    sc_dfa *d = NULL;
    if (sc_regex_compile(re, strlen(re), &lim, &d, &err) == 0) {
        json_t *c =
            json_is_object(s) && json_object_size(s) == 1 ? json_object_get(s, "const") : NULL;
        if (c) {
            char *text = json_dumps(c, JSON_COMPACT | JSON_ENCODE_ANY);
            if (text) KV_CHECK(sc_dfa_matches(d, text, strlen(text)));
            free(text);
        }
        sc_dfa_free(d);
    } else {
        KV_CHECK(d == NULL && err.msg[0]);
    }
    free(re);
    json_decref(s);
    return 0;
}

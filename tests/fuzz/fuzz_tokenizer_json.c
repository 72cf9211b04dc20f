/* libFuzzer target: arbitrary bytes as tokenizer.json through tokenizer_load_json; when they
 * load, a fixed mixed text must encode, decode and stream without error. A 0x00 byte splits the
 * input into tokenizer.json and tokenizer_config.json. */
#include <stdio.h>
#include <stdlib.h>

#include "model/tokenizer/tokenizer.h"

static const char TEXT[] = "Hello World! it's 12345 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\xa6\x99 <s>"
                           "  tabs\tand\r\nnewlines \xc3\xa9\xcc\x81 <|endoftext|>";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *json = (const char *)data, *cfg = NULL;
    size_t json_len = size, cfg_len = 0;
    const char *nul = memchr(data, 0, size);
    if (nul) {
        json_len = (size_t)(nul - json);
        cfg = nul + 1;
        cfg_len = size - json_len - 1;
    }
    tokenizer *t;
    kv_error err = {{0}};
    if (tokenizer_load_json(&t, json, json_len, cfg, cfg_len, &err) != 0) {
        KV_CHECK(err.msg[0] != '\0');
        return 0;
    }
    for (int special = 0; special < 2; special++) {
        int32_t *ids;
        int n;
        KV_CHECK(tokenizer_encode(t, TEXT, sizeof TEXT - 1, special, &ids, &n, &err) == 0);
        for (int i = 0; i < n; i++) KV_CHECK(ids[i] >= 0 && ids[i] < tokenizer_vocab_size(t));
        char *text;
        size_t len;
        KV_CHECK(tokenizer_decode(t, ids, n, special, &text, &len, &err) == 0);
        free(text);
        /* an arbitrary decoder chain need not be prefix-stable; the stream may say so */
        tokenizer_stream *s = tokenizer_stream_new(t, special);
        for (int i = 0; i < n; i++) {
            if (tokenizer_stream_push(s, ids[i], &text, &len, &err) != 0) break;
            free(text);
        }
        if (tokenizer_stream_finish(s, &text, &len, &err) == 0) free(text);
        tokenizer_stream_free(s);
        free(ids);
    }
    tokenizer_free(t);
    return 0;
}

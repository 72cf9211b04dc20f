/* libFuzzer target: bytes as generated text (the first byte picks the chunk size), split by each
 * reasoning parser whole and streamed in chunks: every offset stays in bounds, the streamed pieces
 * are bytes of the text in order, and a stream that has ended holds nothing back. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/common.h"
#include "server/chat/reasoning_parser.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    size_t step = (size_t)(data[0] % 17);
    const char *text = (const char *)data + 1;
    size_t n = size - 1;
    const reasoning_parser_kind kinds[] = {REASONING_PARSER_NONE, REASONING_PARSER_DEEPSEEK_R1,
                                           REASONING_PARSER_QWEN3};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        size_t r_off, r_len, c_off;
        bool has = reasoning_parser_split(kinds[k], text, n, &r_off, &r_len, &c_off);
        KV_CHECK(r_off <= n && r_len <= n - r_off && c_off <= n);
        if (!has) KV_CHECK(r_len == 0 && c_off == 0);
        /* streamed: pending holds what was fed and not consumed */
        char *pending = kv_malloc(n + 1);
        size_t have = 0, fed = 0, reasoning_bytes = 0, content_bytes = 0;
        reasoning_stream st = {0};
        do {
            size_t chunk = step && n - fed > step ? step : n - fed;
            memcpy(pending + have, text + fed, chunk);
            have += chunk;
            fed += chunk;
            bool done = fed == n;
            if (!reasoning_stream_content(&st)) {
                size_t ro, rl, used;
                reasoning_stream_step(kinds[k], &st, pending, have, done, &ro, &rl, &used);
                KV_CHECK(ro <= have && rl <= have - ro && ro + rl <= used && used <= have);
                reasoning_bytes += rl;
                memmove(pending, pending + used, have - used);
                have -= used;
            }
            if (reasoning_stream_content(&st)) { /* the rest is content as it comes */
                content_bytes += have;
                have = 0;
            }
            if (done) KV_CHECK(have == 0); /* an ended stream holds nothing back */
        } while (fed < n);
        KV_CHECK(reasoning_bytes + content_bytes <= n);
        free(pending);
    }
    return 0;
}

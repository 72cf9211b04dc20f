/* libFuzzer target: bytes as generated text, parsed by every tool parser; a result must be calls
 * with string names and arguments, or nothing at all; the streaming hold-back stays in bounds;
 * streamed through tool_stream in chunks (the first byte picks their size), content never grows
 * past the text and call deltas come in order with their name first. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/common.h"
#include "server/chat/tool_parser.h"
#include "server/chat/tool_stream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const tool_parser_kind kinds[] = {TOOL_PARSER_HERMES, TOOL_PARSER_LLAMA3_JSON,
                                      TOOL_PARSER_MISTRAL};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        tool_parse_result r;
        int n = tool_parser_parse(kinds[k], (const char *)data, size, "fuzz", &r);
        KV_CHECK(n >= 0 && (size_t)n == json_array_size(r.calls));
        KV_CHECK(r.content_len <= size);
        for (int i = 0; i < n; i++) {
            json_t *fn = json_object_get(json_array_get(r.calls, (size_t)i), "function");
            KV_CHECK(json_is_string(json_object_get(fn, "name")));
            KV_CHECK(json_is_string(json_object_get(fn, "arguments")));
        }
        tool_parse_result_free(&r);
        KV_CHECK(tool_parser_stream_safe(kinds[k], (const char *)data, size, true) <= size);
        KV_CHECK(tool_parser_stream_safe(kinds[k], (const char *)data, size, false) <= size);
        size_t step = size ? data[0] % 13 : 0, fed = 0, content = 0;
        int n_calls = 0;
        tool_stream ts;
        tool_stream_init(&ts, kinds[k], "fuzz");
        do {
            size_t chunk = step && size - fed > step ? step : size - fed;
            tool_stream_out o;
            tool_stream_feed(&ts, (const char *)data + fed, chunk, fed + chunk == size, &o);
            fed += chunk;
            content += o.content_len;
            KV_CHECK(!o.content || strlen(o.content) <= o.content_len);
            size_t i;
            json_t *e;
            json_array_foreach(o.calls, i, e) {
                int idx = (int)json_integer_value(json_object_get(e, "index"));
                json_t *fn = json_object_get(e, "function");
                KV_CHECK(json_is_string(json_object_get(fn, "arguments")));
                if (idx == n_calls) { /* a new call: id and name first */
                    KV_CHECK(json_is_string(json_object_get(e, "id")));
                    KV_CHECK(json_is_string(json_object_get(fn, "name")));
                    n_calls++;
                } else {
                    KV_CHECK(idx == n_calls - 1 && !json_object_get(fn, "name"));
                }
            }
            tool_stream_out_free(&o);
        } while (fed < size);
        KV_CHECK(content <= size && tool_stream_called(&ts) == (n_calls > 0));
        tool_stream_free(&ts);
    }
    tool_parser_detect((const char *)data, size);
    return 0;
}

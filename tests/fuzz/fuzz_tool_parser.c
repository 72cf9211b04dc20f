/* libFuzzer target: bytes as generated text, parsed by every tool parser; a result must be calls
 * with string names and arguments, or nothing at all; the streaming hold-back stays in bounds. */
#include <stdint.h>
#include <stdlib.h>

#include "model/common.h"
#include "server/chat/tool_parser.h"

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
    }
    tool_parser_detect((const char *)data, size);
    return 0;
}

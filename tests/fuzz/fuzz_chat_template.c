/* libFuzzer target: bytes as a chat template, parsed and (when it parses) rendered over a fixed
 * conversation with small limits; every failure must be an error message, never a crash. */
#include <stdint.h>
#include <stdlib.h>

#include "server/chat/chat_template.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kv_error err = {{0}};
    chat_template *t = chat_template_parse((const char *)data, size, &err);
    if (!t) {
        KV_CHECK(err.msg[0] != '\0');
        return 0;
    }
    json_t *vars = json_loads(
        "{\"messages\": [{\"role\": \"system\", \"content\": \"be brief\"}, {\"role\": \"user\", "
        "\"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"\", \"tool_calls\": "
        "[{\"type\": \"function\", \"function\": {\"name\": \"f\", \"arguments\": {\"x\": "
        "1200.0}}}]}], \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\"}}], "
        "\"add_generation_prompt\": true, \"bos_token\": \"<s>\", \"eos_token\": \"</s>\"}",
        0, NULL);
    KV_CHECK(vars);
    chat_template_limits lim = {1 << 20, 10000, 16, 1721995200};
    char *out = NULL;
    size_t n = 0;
    if (chat_template_render(t, vars, &lim, &out, &n, &err) == 0) {
        KV_CHECK(out && n <= lim.max_output_bytes && strlen(out) <= n);
        free(out);
    } else {
        KV_CHECK(out == NULL);
    }
    json_decref(vars);
    chat_template_free(t);
    return 0;
}

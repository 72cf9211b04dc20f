/* libFuzzer target: a /v1/chat/completions body through openai_chat_parse, the ChatML template
 * render (openai_chat_prompt, byte tokenizer) and openai_chat_to_completion, and the same bytes
 * as a /tokenize body with messages. Whatever the input, the result is a request within its
 * limits or an error with a status and a message. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/openai_chat.h"
#include "tests/unit/server_support.h"

/* Qwen2.5-style ChatML: messages, tools, tool_calls with tojson, add_generation_prompt. */
static const char chatml[] =
    "{%- if tools %}<|im_start|>system\n{%- for t in tools %}{{ t | tojson }}{%- endfor %}"
    "<|im_end|>\n{%- endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{%- if m.tool_calls %}{%- for c in m.tool_calls %}<tool_call>{{ c.function.arguments | "
    "tojson }}</tool_call>{%- endfor %}{%- endif %}<|im_end|>\n{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static tokenizer *tok; /* built once: the fuzzer calls this millions of times */
    static chat_source cs;
    if (!tok) {
        tok = byte_tokenizer_new();
        kv_error err;
        cs.tmpl = chat_template_parse(chatml, strlen(chatml), &err);
        KV_CHECK(cs.tmpl);
        cs.bos_token = kv_strdup("<s>");
        cs.eos_token = kv_strdup("</s>");
    }
    openai_model_info info = {.served_model_name = "m",
                              .tok = tok,
                              .max_model_len = 4096,
                              .vocab_size = tokenizer_vocab_size(tok)};
    for (int tokenize_only = 0; tokenize_only < 2; tokenize_only++) {
        openai_chat_request creq;
        openai_error e;
        if (openai_chat_parse(&info, &cs, (const char *)data, size, tokenize_only, &creq, &e)) {
            KV_CHECK(e.status >= 400 && e.status < 600 && e.message[0] && e.type);
            free(openai_error_body(&e));
            continue;
        }
        KV_CHECK(json_is_array(json_object_get(creq.vars, "messages")));
        int32_t *ids = NULL;
        int n_ids = 0;
        if (openai_chat_prompt(&info, &cs, &creq, &ids, &n_ids, &e) == 0) {
            KV_CHECK(n_ids >= 0);
            openai_completion_request req;
            if (!tokenize_only &&
                openai_chat_to_completion(&info, &creq, ids, n_ids, &req, &e) == 0) {
                KV_CHECK(req.n_prompts == 1 && req.prompts[0].n_ids == n_ids);
                KV_CHECK(req.prompts[0].n_ids + req.prompts[0].max_tokens <= info.max_model_len);
                openai_completion_request_free(&req);
            } else if (!tokenize_only) {
                KV_CHECK(e.status >= 400 && e.status < 600 && e.message[0]);
            }
        } else {
            KV_CHECK(e.status >= 400 && e.status < 600 && e.message[0]);
        }
        free(ids);
        openai_chat_request_free(&creq);
    }
    return 0;
}

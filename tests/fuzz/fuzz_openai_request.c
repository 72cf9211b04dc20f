/* libFuzzer target: a /v1/completions body through openai_parse_completion (the byte tokenizer
 * handles string prompts), and the same bytes as /tokenize and /detokenize bodies. Whatever the
 * input, the result is either a parsed request within its limits (the engine's
 * sampler_params_validate included) or an error with a status. */
#include <stdint.h>
#include <stdlib.h>

#include "server/openai.h"
#include "tests/unit/server_support.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static tokenizer *tok; /* built once: the fuzzer calls this millions of times */
    if (!tok) tok = byte_tokenizer_new();
    openai_model_info info = {.served_model_name = "m",
                              .tok = tok,
                              .max_model_len = 4096,
                              .vocab_size = tokenizer_vocab_size(tok)};
    openai_completion_request req;
    openai_error e;
    if (openai_parse_completion(&info, (const char *)data, size, &req, &e) == 0) {
        KV_CHECK(req.n_prompts >= 1 && req.n >= 1 && req.n_prompts * req.n <= 256);
        for (int i = 0; i < req.n_prompts; i++) {
            KV_CHECK(req.prompts[i].n_ids >= 1 && req.prompts[i].n_ids < info.max_model_len);
            KV_CHECK(req.prompts[i].max_tokens >= 1);
            KV_CHECK(req.prompts[i].n_ids + req.prompts[i].max_tokens <= info.max_model_len);
            for (int k = 0; k < req.prompts[i].n_ids; k++)
                KV_CHECK(req.prompts[i].ids[k] >= 0 && req.prompts[i].ids[k] < info.vocab_size);
        }
        KV_CHECK(req.logprobs >= -1 && req.logprobs <= SAMPLER_MAX_LOGPROBS);
        KV_CHECK(req.params.top_p > 0 && req.params.top_p <= 1 && req.params.temperature >= 0);
        /* one range table: what the HTTP layer accepts, the engine's submit check accepts */
        kv_error kerr;
        KV_CHECK(sampler_params_validate(&req.params, info.vocab_size, &kerr) == 0);
        for (int i = 0; i < req.n_stop; i++) KV_CHECK(req.stop[i][0] != '\0');
        openai_completion_request_free(&req);
    } else {
        KV_CHECK(e.status >= 400 && e.status < 600 && e.message[0] && e.type);
        free(openai_error_body(&e));
    }
    char *out = NULL;
    if (openai_tokenize(&info, (const char *)data, size, &out, &e) == 0) free(out);
    out = NULL;
    if (openai_detokenize(&info, (const char *)data, size, &out, &e) == 0) free(out);
    return 0;
}

/* libFuzzer target: arbitrary bytes through tokenizer_encode, tokenizer_decode and the stream.
 * Tokenizers, loaded once: a built-in one exercising many component types (NFKC, Lowercase,
 * Replace, Strip; Split regex, Digits, Punctuation, Metaspace; byte_fallback; added tokens with
 * lstrip/rstrip/single_word/normalized; Replace/ByteFallback/Fuse/Strip decoders) and, when
 * KVSERVE_TESTDATA has them, the real llama3 and llama2 tokenizers.
 * The first input byte picks the tokenizer; the rest is the text. Invariants: valid UTF-8
 * encodes, invalid UTF-8 is an error naming UTF-8, ids decode, streaming equals decoding. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <utf8proc.h>

#include "model/tokenizer/tokenizer.h"

static char *builtin_json(void) {
    json_t *vocab = json_object();
    int id = 0;
    json_object_set_new(vocab, "<unk>", json_integer(id++));
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        json_object_set_new(vocab, name, json_integer(id++));
    }
    const char *pieces[] = {"\xe2\x96\x81",
                            "a",
                            "b",
                            "c",
                            "d",
                            "e",
                            "h",
                            "l",
                            "o",
                            "t",
                            "1",
                            "2",
                            "\xe2\x96\x81t",
                            "he",
                            "\xe2\x96\x81the",
                            "ll",
                            "llo",
                            "hello",
                            "ab",
                            "abc",
                            "12"};
    const char *merges[] = {
        "\xe2\x96\x81 t", "h e", "\xe2\x96\x81t he", "l l", "ll o", "he llo", "a b", "ab c", "1 2"};
    for (size_t i = 0; i < sizeof pieces / sizeof *pieces; i++)
        json_object_set_new(vocab, pieces[i], json_integer(id++));
    json_t *jm = json_array();
    for (size_t i = 0; i < sizeof merges / sizeof *merges; i++)
        json_array_append_new(jm, json_string(merges[i]));
    json_t *model =
        json_pack("{s:s, s:o, s:o, s:s, s:b, s:b}", "type", "BPE", "vocab", vocab, "merges", jm,
                  "unk_token", "<unk>", "byte_fallback", 1, "fuse_unk", 1);
    json_error_t e;
    json_t *rest = json_loads(
        "{\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": ["
        "  {\"type\": \"NFKC\"}, {\"type\": \"Lowercase\"},"
        "  {\"type\": \"Replace\", \"pattern\": {\"Regex\": \"\\\\s{3,}\"}, \"content\": \"  \"},"
        "  {\"type\": \"Strip\", \"strip_left\": true, \"strip_right\": false}]},"
        " \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": ["
        "  {\"type\": \"Split\", \"pattern\": {\"Regex\": "
        "\"(?i:'s|'t)|\\\\p{N}{1,3}|\\\\s+(?!\\\\S)\"},"
        "   \"behavior\": \"Isolated\", \"invert\": false},"
        "  {\"type\": \"Digits\", \"individual_digits\": false},"
        "  {\"type\": \"Punctuation\", \"behavior\": \"MergedWithPrevious\"},"
        "  {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": \"first\","
        "   \"split\": true}]},"
        " \"post_processor\": {\"type\": \"TemplateProcessing\","
        "  \"single\": [{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}},"
        "             {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}},"
        "             {\"SpecialToken\": {\"id\": \"</s>\", \"type_id\": 0}}],"
        "  \"special_tokens\": {\"<s>\": {\"id\": \"<s>\", \"ids\": [400]},"
        "                     \"</s>\": {\"id\": \"</s>\", \"ids\": [401]}}},"
        " \"decoder\": {\"type\": \"Sequence\", \"decoders\": ["
        "  {\"type\": \"Replace\", \"pattern\": {\"String\": \"\\u2581\"}, \"content\": \" \"},"
        "  {\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"},"
        "  {\"type\": \"Strip\", \"content\": \" \", \"start\": 1, \"stop\": 0}]},"
        " \"added_tokens\": ["
        "  {\"id\": 400, \"content\": \"<s>\", \"special\": true, \"normalized\": false},"
        "  {\"id\": 401, \"content\": \"</s>\", \"special\": true, \"normalized\": false},"
        "  {\"id\": 402, \"content\": \"<mask>\", \"special\": false, \"lstrip\": true,"
        "   \"rstrip\": true, \"single_word\": true, \"normalized\": false},"
        "  {\"id\": 403, \"content\": \"Yes\", \"special\": false, \"normalized\": true}]}",
        0, &e);
    if (!rest) {
        fprintf(stderr, "fuzz_tokenizer: built-in JSON: %s\n", e.text);
        abort();
    }
    json_object_set_new(rest, "model", model);
    char *s = json_dumps(rest, 0);
    json_decref(rest);
    return s;
}

typedef struct fuzz_state {
    tokenizer *toks[3];
    int n;
} fuzz_state;

static fuzz_state *state(void) {
    static fuzz_state st;
    static bool ready;
    if (ready) return &st;
    ready = true;
    kv_error err = {{0}};
    char *json = builtin_json();
    if (tokenizer_load_json(&st.toks[st.n], json, strlen(json), NULL, 0, &err) != 0) {
        fprintf(stderr, "fuzz_tokenizer: built-in tokenizer: %s\n", err.msg);
        abort();
    }
    st.n++;
    free(json);
    const char *td = getenv("KVSERVE_TESTDATA");
    const char *names[] = {"llama3", "llama2"};
    for (int i = 0; td && td[0] && i < 2; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/tokenizers/%s", td, names[i]);
        if (tokenizer_load(&st.toks[st.n], path, &err) == 0) st.n++;
    }
    return &st;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_state *st = state();
    if (size == 0) return 0;
    const tokenizer *t = st->toks[data[0] % st->n];
    bool special = data[0] & 0x80;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    int32_t *ids;
    int n;
    kv_error err = {{0}};
    if (tokenizer_encode(t, text, len, special, &ids, &n, &err) != 0) {
        KV_CHECK(strstr(err.msg, "UTF-8") != NULL);
        /* arbitrary ids: out of range is an error, never a crash */
        int k = (int)(len / 4);
        int32_t *raw = kv_malloc(((size_t)k + 1) * sizeof(int32_t));
        for (int i = 0; i < k; i++) {
            uint32_t v;
            memcpy(&v, text + 4 * i, 4);
            raw[i] = (int32_t)(v % (uint32_t)(tokenizer_vocab_size(t) + 16));
        }
        char *out;
        size_t out_len;
        if (tokenizer_decode(t, raw, k, data[0] & 0x40, &out, &out_len, &err) == 0) free(out);
        free(raw);
        return 0;
    }
    for (int i = 0; i < n; i++) KV_CHECK(ids[i] >= 0 && ids[i] < tokenizer_vocab_size(t));
    for (int skip = 0; skip < 2; skip++) {
        char *full;
        size_t full_len;
        KV_CHECK(tokenizer_decode(t, ids, n, skip, &full, &full_len, &err) == 0);
        tokenizer_stream *s = tokenizer_stream_new(t, skip);
        char *acc = kv_malloc(full_len + 1);
        size_t acc_len = 0;
        for (int i = 0; i <= n; i++) {
            char *piece;
            size_t plen;
            int rc = i < n ? tokenizer_stream_push(s, ids[i], &piece, &plen, &err)
                           : tokenizer_stream_finish(s, &piece, &plen, &err);
            KV_CHECK(rc == 0);
            /* never a broken UTF-8 sequence */
            KV_CHECK(utf8proc_decompose((const utf8proc_uint8_t *)piece, (utf8proc_ssize_t)plen,
                                        NULL, 0, 0) >= 0);
            KV_CHECK(acc_len + plen <= full_len);
            memcpy(acc + acc_len, piece, plen);
            acc_len += plen;
            free(piece);
        }
        KV_CHECK(acc_len == full_len && memcmp(acc, full, full_len) == 0);
        tokenizer_stream_free(s);
        free(acc);
        free(full);
    }
    free(ids);
    return 0;
}

/* Tokenizer throughput: encode a few MB of generated mixed text (English words, numbers,
 * punctuation, whitespace runs, code-like lines, accented Latin, Cyrillic, CJK, emoji) with the
 * llama3 tokenizer, and time a 100k-token prompt, decoding and streaming.
 * Run: build/tests/bench/bench_tokenizer [tokenizer dir] [MB]  (default: llama3 from testdata). */
#include <stdio.h>
#include <stdlib.h>

#include "model/tokenizer/tokenizer.h"

/* xorshift64*: deterministic text across runs */
static uint64_t next_rand(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static const char *const WORDS[] = {
    "the",     "of",     "and",      "to",          "in",      "is",      "that",    "for",
    "it",      "with",   "as",       "was",         "on",      "cache",   "memory",  "request",
    "token",   "server", "transfer", "block",       "compute", "model",   "Hello",   "World",
    "KV",      "GPU",    "DRAM",     "don't",       "it's",    "WE'RE",   "they'll", "naïve",
    "café",    "über",   "Führer",   "привет",      "мир",     "日本語",  "中文",    "テスト",
    "한국어",  "🦙",   "🚀",        "👩‍💻", "(x)",     "foo_bar", "a+b=c",   "->",
    "...",     "!!",     "#include", "{",           "}",       "0x1F",    "3.14159", "2024",
    "1234567", "\t",     "\n",       "\n\n",        "  ",      "   ",     "\r\n",
};

static char *make_text(size_t target, uint64_t seed) {
    char *buf = kv_malloc(target + 64);
    size_t n = 0;
    size_t n_words = sizeof WORDS / sizeof *WORDS;
    while (n < target) {
        const char *w = WORDS[next_rand(&seed) % n_words];
        size_t k = strlen(w);
        memcpy(buf + n, w, k);
        n += k;
        uint64_t r = next_rand(&seed) % 10;
        buf[n++] = r == 0 ? ',' : r == 1 ? '.' : ' ';
        if (r == 1) buf[n++] = ' ';
    }
    buf[n] = 0;
    return buf;
}

int main(int argc, char **argv) {
    char path[4096];
    const char *td = getenv("KVSERVE_TESTDATA");
    if (argc > 1)
        snprintf(path, sizeof path, "%s", argv[1]);
    else
        snprintf(path, sizeof path, "%s/tokenizers/llama3",
                 td && td[0] ? td : "../shared/testdata");
    double mb = argc > 2 ? atof(argv[2]) : 4.0;
    tokenizer *tok;
    kv_error err = {{0}};
    double t0 = kv_now();
    if (tokenizer_load(&tok, path, &err) != 0) {
        printf("SKIP: %s\n", err.msg);
        return 77;
    }
    double t_load = kv_now() - t0;
    char *text = make_text((size_t)(mb * 1024 * 1024), 42);
    size_t len = strlen(text);

    int32_t *ids;
    int n;
    t0 = kv_now();
    if (tokenizer_encode(tok, text, len, false, &ids, &n, &err) != 0) {
        fprintf(stderr, "encode: %s\n", err.msg);
        return 1;
    }
    double t_enc = kv_now() - t0;

    char *back;
    size_t back_len;
    t0 = kv_now();
    if (tokenizer_decode(tok, ids, n, false, &back, &back_len, &err) != 0) {
        fprintf(stderr, "decode: %s\n", err.msg);
        return 1;
    }
    double t_dec = kv_now() - t0;
    bool round_trip = back_len == len && memcmp(back, text, len) == 0;

    /* a 100k-token prompt: the prefix of the text that encodes to about that many tokens */
    size_t prompt_len = n > 100000 ? (size_t)((double)len * 100000.0 / n) : len;
    while (prompt_len < len && ((uint8_t)text[prompt_len] & 0xc0) == 0x80) prompt_len++;
    int32_t *pids;
    int pn;
    t0 = kv_now();
    tokenizer_encode(tok, text, prompt_len, true, &pids, &pn, &err);
    double t_prompt = kv_now() - t0;

    /* streaming the first 100k tokens one at a time */
    int n_stream = n < 100000 ? n : 100000;
    tokenizer_stream *s = tokenizer_stream_new(tok, false);
    t0 = kv_now();
    for (int i = 0; i < n_stream; i++) {
        char *piece;
        size_t plen;
        tokenizer_stream_push(s, ids[i], &piece, &plen, &err);
        free(piece);
    }
    double t_stream = kv_now() - t0;
    tokenizer_stream_free(s);

    printf("tokenizer bench: %s, vocab %d, load %.0f ms\n", path, tokenizer_vocab_size(tok),
           t_load * 1e3);
    printf("| what | size | time | rate |\n|---|---|---|---|\n");
    printf("| encode | %.2f MB -> %d tokens | %.3f s | %.2f MB/s, %.0f tokens/s |\n",
           len / 1048576.0, n, t_enc, len / 1048576.0 / t_enc, n / t_enc);
    printf("| encode 100k-token prompt | %.2f MB -> %d tokens | %.1f ms | |\n",
           prompt_len / 1048576.0, pn, t_prompt * 1e3);
    printf("| decode | %d tokens | %.3f s | %.0f tokens/s |\n", n, t_dec, n / t_dec);
    printf("| stream | %d tokens | %.3f s | %.0f tokens/s |\n", n_stream, t_stream,
           n_stream / t_stream);
    printf("round trip decode(encode(text)) == text: %s\n", round_trip ? "yes" : "NO");
    free(pids);
    free(back);
    free(ids);
    free(text);
    tokenizer_free(tok);
    return round_trip ? 0 : 1;
}

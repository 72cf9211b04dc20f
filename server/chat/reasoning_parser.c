/* Reasoning splitting: see reasoning_parser.h. */
#include "server/chat/reasoning_parser.h"

#include <string.h>

static const char START[] = "<think>";
static const char END[] = "</think>";
#define START_LEN (sizeof START - 1)
#define END_LEN   (sizeof END - 1)

static const char *find(const char *s, size_t n, const char *pat, size_t m) {
    for (size_t i = 0; i + m <= n; i++)
        if (memcmp(s + i, pat, m) == 0) return s + i;
    return NULL;
}

static bool starts_with(const char *s, size_t n, const char *pat, size_t m) {
    return n >= m && memcmp(s, pat, m) == 0;
}

bool reasoning_parser_split(reasoning_parser_kind kind, const char *text, size_t n, size_t *r_off,
                            size_t *r_len, size_t *c_off) {
    *r_off = *r_len = *c_off = 0;
    if (kind == REASONING_PARSER_NONE || !text) return false;
    bool opened = starts_with(text, n, START, START_LEN);
    if (kind == REASONING_PARSER_QWEN3 && !opened) return false;
    size_t from = opened ? START_LEN : 0;
    const char *end = find(text + from, n - from, END, END_LEN);
    if (!end) {
        if (kind == REASONING_PARSER_QWEN3) return false; /* no end tag: all content */
        *r_off = from;                                    /* deepseek_r1: all reasoning */
        *r_len = n - from;
        *c_off = n;
        return true;
    }
    *r_off = from;
    *r_len = (size_t)(end - text) - from;
    *c_off = (size_t)(end - text) + END_LEN;
    return true;
}

/* The length of the longest suffix of s[0..n) that is a proper prefix of pat. */
static size_t partial_suffix(const char *s, size_t n, const char *pat, size_t m) {
    for (size_t k = m - 1 < n ? m - 1 : n; k > 0; k--)
        if (memcmp(s + n - k, pat, k) == 0) return k;
    return 0;
}

void reasoning_stream_step(reasoning_parser_kind kind, reasoning_stream *st, const char *text,
                           size_t n, bool done, size_t *r_off, size_t *r_len, size_t *consumed) {
    *r_off = *r_len = *consumed = 0;
    if (kind == REASONING_PARSER_NONE) st->phase = 2;
    if (st->phase == 0) {
        if (starts_with(text, n, START, START_LEN)) {
            st->phase = 1;
            *consumed = START_LEN;
        } else if (!done && n < START_LEN && (n == 0 || memcmp(text, START, n) == 0)) {
            return; /* may be the start tag: wait */
        } else {
            st->phase = kind == REASONING_PARSER_DEEPSEEK_R1 ? 1 : 2;
        }
    }
    if (st->phase != 1) return;
    size_t from = *consumed;
    *r_off = from;
    const char *end = find(text + from, n - from, END, END_LEN);
    if (end) {
        *r_len = (size_t)(end - text) - from;
        *consumed = (size_t)(end - text) + END_LEN;
        st->phase = 2;
        return;
    }
    *r_len = n - from - (done ? 0 : partial_suffix(text + from, n - from, END, END_LEN));
    *consumed = from + *r_len;
}

bool reasoning_stream_content(const reasoning_stream *st) {
    return st->phase == 2;
}

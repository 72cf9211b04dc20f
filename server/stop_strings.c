/* Stop-string matching over streamed text. Each push searches the held-back text plus the new text,
 * so a stop string split across tokens is found; the earliest match wins (the longest stop string
 * when two start at the same byte). */
#include "server/stop_strings.h"

#include <stdlib.h>

void stop_matcher_init(stop_matcher *m, const char *const *stops, int n_stops, bool include_stop) {
    *m = (stop_matcher){.n_stops = n_stops, .include_stop = include_stop, .matched = -1};
    m->stops = kv_calloc((size_t)(n_stops > 0 ? n_stops : 1), sizeof *m->stops);
    m->stop_lens = kv_calloc((size_t)(n_stops > 0 ? n_stops : 1), sizeof *m->stop_lens);
    for (int i = 0; i < n_stops; i++) {
        m->stop_lens[i] = strlen(stops[i]);
        KV_CHECK(m->stop_lens[i] > 0);
        m->stops[i] = kv_strdup(stops[i]);
    }
}

void stop_matcher_free(stop_matcher *m) {
    for (int i = 0; i < m->n_stops; i++) free(m->stops[i]);
    free(m->stops);
    free(m->stop_lens);
    free(m->held);
    *m = (stop_matcher){.matched = -1};
}

static char *copy_text(const char *s, size_t n, size_t *out_len) {
    char *out = kv_malloc(n + 1);
    memcpy(out, s, n);
    out[n] = '\0';
    *out_len = n;
    return out;
}

/* Longest suffix of s[0..n) that is a proper prefix of some stop string. */
static size_t partial_suffix(const stop_matcher *m, const char *s, size_t n) {
    size_t best = 0;
    for (int i = 0; i < m->n_stops; i++) {
        size_t k = m->stop_lens[i] - 1 < n ? m->stop_lens[i] - 1 : n;
        for (; k > best; k--)
            if (memcmp(s + n - k, m->stops[i], k) == 0) {
                best = k;
                break;
            }
    }
    return best;
}

bool stop_matcher_push(stop_matcher *m, const char *text, size_t len, bool check, char **out,
                       size_t *out_len) {
    if (m->matched >= 0) {
        *out = copy_text("", 0, out_len);
        return true;
    }
    if (m->n_held + len + 1 > m->cap_held) {
        m->cap_held = (m->n_held + len + 1) * 2;
        m->held = kv_realloc(m->held, m->cap_held);
    }
    memcpy(m->held + m->n_held, text, len);
    size_t n = m->n_held + len;
    const char *s = m->held;

    if (check) {
        size_t best_pos = n;
        int best = -1;
        for (int i = 0; i < m->n_stops; i++) {
            const char *hit = memmem(s, n, m->stops[i], m->stop_lens[i]);
            if (!hit) continue;
            size_t pos = (size_t)(hit - s);
            if (pos < best_pos || (pos == best_pos && m->stop_lens[i] > m->stop_lens[best])) {
                best_pos = pos;
                best = i;
            }
        }
        if (best >= 0) {
            m->matched = best;
            *out = copy_text(s, best_pos + (m->include_stop ? m->stop_lens[best] : 0), out_len);
            m->n_held = 0;
            return true;
        }
    }
    size_t keep = partial_suffix(m, s, n);
    *out = copy_text(s, n - keep, out_len);
    memmove(m->held, s + n - keep, keep);
    m->n_held = keep;
    return false;
}

void stop_matcher_flush(stop_matcher *m, char **out, size_t *out_len) {
    *out = copy_text(m->held ? m->held : "", m->n_held, out_len);
    m->n_held = 0;
}

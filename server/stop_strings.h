/* Stop strings on detokenized text: finds the first stop string in the output and holds back text
 * that could still turn out to be the start of one, so a streamed response never shows a stop
 * string (or a part of it). Owns copies of the stop strings and the held-back text. Works on bytes;
 * with UTF-8 input and UTF-8 stop strings a cut never splits a character. */
#ifndef KVSERVE_STOP_STRINGS_H
#define KVSERVE_STOP_STRINGS_H

#include "model/common.h"

typedef struct stop_matcher {
    char **stops; /* the stop strings, non-empty */
    size_t *stop_lens;
    int n_stops;
    bool include_stop; /* the matched stop string is part of the output */
    char *held;        /* text not yet released: a possible start of a stop string */
    size_t n_held, cap_held;
    int matched; /* index of the stop string found, or -1 */
} stop_matcher;

/* The matcher copies stops[0..n_stops) (every string non-empty). */
void stop_matcher_init(stop_matcher *m, const char *const *stops, int n_stops, bool include_stop);
void stop_matcher_free(stop_matcher *m);

/* Adds len bytes of new text. Appends the text that is now final to *out (a malloc'd,
 * NUL-terminated string the caller frees; "" when nothing is final yet) and returns true when a
 * stop string was found: the output then ends before it (or after it with include_stop) and the
 * matcher releases nothing more. check: false while stop strings must not match yet (min_tokens not
 * reached), the text then passes through but is still held back as a possible start. */
bool stop_matcher_push(stop_matcher *m, const char *text, size_t len, bool check, char **out,
                       size_t *out_len);
/* Releases whatever is held back (the output ended another way). */
void stop_matcher_flush(stop_matcher *m, char **out, size_t *out_len);
/* The stop string that matched, or NULL. */
static inline const char *stop_matcher_matched(const stop_matcher *m) {
    return m->matched >= 0 ? m->stops[m->matched] : NULL;
}

#endif

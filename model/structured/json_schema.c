/* JSON Schema -> regex text. Whitespace between tokens is bounded (at most two of space, newline
 * or tab), numbers have at most 15 integer and 15 fraction digits, so no branch lets a model loop
 * forever on filler. Properties come in the schema's order; optional ones may be left out. */
#include "model/structured/json_schema.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WS "[ \\n\\t]{0,2}"
/* one character inside a JSON string, escapes included */
#define STRCHAR   "(?:[^\"\\\\\\x00-\\x1f]|\\\\[\"\\\\/bfnrt]|\\\\u[0-9a-fA-F]{4})"
#define STRING    "\"" STRCHAR "*\""
#define NUMBER    "-?(?:0|[1-9][0-9]{0,14})(?:\\.[0-9]{1,15})?(?:[eE][+-]?[0-9]{1,3})?"
#define INTEGER   "-?(?:0|[1-9][0-9]{0,14})"
#define NEVER     "(?!)" /* the empty language (regex_dfa knows this one form of lookaround) */
#define MAX_BOUND 999999999999999LL

typedef struct sbuf {
    char *d;
    size_t n, cap, max;
    bool over;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->over) return;
    if (b->n + n + 1 > b->max) {
        b->over = true;
        return;
    }
    if (b->n + n + 1 > b->cap) {
        while (b->n + n + 1 > b->cap) b->cap = b->cap ? 2 * b->cap : 256;
        b->d = kv_realloc(b->d, b->cap);
    }
    memcpy(b->d + b->n, s, n);
    b->n += n;
    b->d[b->n] = 0;
}
static void sb_s(sbuf *b, const char *s) {
    sb_put(b, s, strlen(s));
}
static void sb_f(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_f(sbuf *b, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) sb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* s as a regex literal: metacharacters escaped, bytes >= 0x80 as they are (UTF-8 literals). */
static void sb_literal(sbuf *b, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (strchr("\\^$.|?*+()[]{}/-", c) && c) {
            char e[3] = {'\\', (char)c, 0};
            sb_s(b, e);
        } else if (c < 0x20 || c == 0x7f) {
            sb_f(b, "\\x%02x", c);
        } else {
            sb_put(b, (const char *)&c, 1);
        }
    }
}

/* A JSON value as its compact text, as a regex literal. */
static void sb_json_literal(sbuf *b, json_t *v) {
    char *t = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    if (t) sb_literal(b, t, strlen(t));
    free(t);
}

/* ---- generic JSON ---- */

/* Values of no given schema nest at most this deep: the regex of generic JSON grows 4x per
 * level (a separated list needs its element twice). */
#define ANY_DEPTH 3

static void gen_any(sbuf *b, int depth) {
    if (depth > ANY_DEPTH) depth = ANY_DEPTH;
    sb_s(b, "(?:" STRING "|" NUMBER "|true|false|null");
    if (depth > 0) {
        sb_s(b, "|\\{" WS "(?:" STRING WS ":" WS);
        gen_any(b, depth - 1);
        sb_s(b, "(?:" WS "," WS STRING WS ":" WS);
        gen_any(b, depth - 1);
        sb_s(b, ")*)?" WS "\\}|\\[" WS "(?:");
        gen_any(b, depth - 1);
        sb_s(b, "(?:" WS "," WS);
        gen_any(b, depth - 1);
        sb_s(b, ")*)?" WS "\\]");
    }
    sb_s(b, ")");
}

char *sc_json_object_regex(const sc_limits *lim) {
    sc_limits def;
    if (!lim) sc_limits_default(&def), lim = &def;
    sbuf b = {.max = (size_t)1 << 30};
    int d = lim->max_depth > 1 ? lim->max_depth - 1 : 0;
    if (d > 2) d = 2; /* three levels of containers in all */
    sb_s(&b, "\\{" WS "(?:" STRING WS ":" WS);
    gen_any(&b, d);
    sb_s(&b, "(?:" WS "," WS STRING WS ":" WS);
    gen_any(&b, d);
    sb_s(&b, ")*)?" WS "\\}");
    return b.d;
}

char *sc_choice_regex(const char *const *choices, int n) {
    sbuf b = {.max = (size_t)1 << 30};
    sb_s(&b, "(?:");
    for (int i = 0; i < n; i++) {
        if (i) sb_s(&b, "|");
        sb_literal(&b, choices[i], strlen(choices[i]));
    }
    sb_s(&b, ")");
    return b.d;
}

/* ---- integers in a range ---- */

/* Numbers of exactly the digits of a..b (same length, a <= b), as an alternation. */
static void range_same_len(sbuf *b, const char *a, const char *z, size_t n) {
    if (n == 0) return;
    if (a[0] == z[0]) {
        sb_put(b, a, 1);
        range_same_len(b, a + 1, z + 1, n - 1);
        return;
    }
    bool a_zeros = strspn(a + 1, "0") == n - 1, z_nines = strspn(z + 1, "9") == n - 1;
    char lo = a_zeros ? a[0] : (char)(a[0] + 1), hi = z_nines ? z[0] : (char)(z[0] - 1);
    sb_s(b, "(?:");
    bool first = true;
    if (!a_zeros) {
        char nines[32];
        memset(nines, '9', n - 1);
        sb_put(b, a, 1);
        range_same_len(b, a + 1, nines, n - 1);
        first = false;
    }
    if (lo <= hi) {
        if (!first) sb_s(b, "|");
        sb_f(b, "[%c-%c]", lo, hi);
        if (n > 1) sb_f(b, "[0-9]{%zu}", n - 1);
        first = false;
    }
    if (!z_nines) {
        char zeros[32];
        memset(zeros, '0', n - 1);
        if (!first) sb_s(b, "|");
        sb_put(b, z, 1);
        range_same_len(b, zeros, z + 1, n - 1);
    }
    sb_s(b, ")");
}

/* Non-negative integers in [lo, hi] without leading zeros. */
static void range_pos(sbuf *b, long long lo, long long hi) {
    sb_s(b, "(?:");
    bool first = true;
    for (int len = 1; len <= 15; len++) {
        long long p_lo = len == 1 ? 0 : 1, p_hi = 9;
        for (int k = 1; k < len; k++) p_lo *= 10, p_hi = p_hi * 10 + 9;
        long long x = lo > p_lo ? lo : p_lo, y = hi < p_hi ? hi : p_hi;
        if (x > y) continue;
        char xs[32], ys[32];
        snprintf(xs, sizeof xs, "%lld", x);
        snprintf(ys, sizeof ys, "%lld", y);
        if (!first) sb_s(b, "|");
        range_same_len(b, xs, ys, strlen(xs));
        first = false;
    }
    sb_s(b, ")");
}

static void range_int(sbuf *b, long long lo, long long hi) {
    sb_s(b, "(?:");
    if (lo < 0) {
        long long nh = hi < -1 ? hi : -1;
        sb_s(b, "-");
        range_pos(b, -nh, -lo);
        if (hi >= 0) sb_s(b, "|");
    }
    if (hi >= 0) range_pos(b, lo > 0 ? lo : 0, hi);
    sb_s(b, ")");
}

/* ---- schemas ---- */

typedef struct sc_ctx {
    json_t *root;
    const sc_limits *lim;
    kv_error *err;
    char path[256];
    int ref_depth;
} sc_ctx;

static int sc_fail(sc_ctx *c, const char *what, const char *name) {
    return kv_error_set(c->err, "%s '%s' at %s", what, name, c->path[0] ? c->path : "#");
}

static const char *const annotations[] = {
    "title",    "description", "examples",   "default", "$schema",     "$id",    "$comment",
    "readOnly", "writeOnly",   "deprecated", "$defs",   "definitions", "strict", "name"};
static const char *const keywords[] = {"type",
                                       "properties",
                                       "required",
                                       "additionalProperties",
                                       "items",
                                       "minItems",
                                       "maxItems",
                                       "enum",
                                       "const",
                                       "minLength",
                                       "maxLength",
                                       "pattern",
                                       "format",
                                       "minimum",
                                       "maximum",
                                       "anyOf",
                                       "oneOf",
                                       "allOf",
                                       "$ref",
                                       "exclusiveMinimum",
                                       "exclusiveMaximum"};

static bool in_list(const char *k, const char *const *list, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!strcmp(k, list[i])) return true;
    return false;
}

static int gen(sc_ctx *c, sbuf *b, json_t *s, int depth);

/* Appends to the path for messages; returns the old length to restore. */
static size_t path_push(sc_ctx *c, const char *part) {
    size_t n = strlen(c->path);
    snprintf(c->path + n, sizeof c->path - n, "%s%s", n ? "/" : "#/", part);
    return n;
}

static int gen_child(sc_ctx *c, sbuf *b, json_t *s, int depth, const char *part) {
    size_t n = path_push(c, part);
    int rc = gen(c, b, s, depth);
    c->path[n] = 0;
    return rc;
}

static int get_count(sc_ctx *c, json_t *s, const char *key, long long dflt, long long *out) {
    json_t *v = json_object_get(s, key);
    *out = dflt;
    if (!v) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 10000)
        return sc_fail(c, "must be an integer in [0, 10000]:", key);
    *out = json_integer_value(v);
    return 0;
}

static int gen_string(sc_ctx *c, sbuf *b, json_t *s) {
    json_t *fmt = json_object_get(s, "format"), *pat = json_object_get(s, "pattern");
    long long lo, hi;
    if (get_count(c, s, "minLength", 0, &lo) || get_count(c, s, "maxLength", -1, &hi)) return -1;
    if (hi >= 0 && hi < lo) return sc_fail(c, "maxLength below minLength:", "maxLength");
    bool lengths = json_object_get(s, "minLength") || json_object_get(s, "maxLength");
    if ((fmt && pat) || ((fmt || pat) && lengths))
        return sc_fail(c,
                       "unsupported combination of string keywords:", fmt ? "format" : "pattern");
    if (fmt) {
        const char *f = json_string_value(fmt);
        const char *date = "[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|"
                           "11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))";
        const char *time = "(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{1,6})?(?:Z|[+-]"
                           "(?:[01][0-9]|2[0-3]):[0-5][0-9])";
        sb_s(b, "\"");
        if (!f) return sc_fail(c, "must be a string:", "format");
        if (!strcmp(f, "date")) {
            sb_s(b, date);
        } else if (!strcmp(f, "time")) {
            sb_s(b, time);
        } else if (!strcmp(f, "date-time")) {
            sb_s(b, date), sb_s(b, "T"), sb_s(b, time);
        } else if (!strcmp(f, "uuid")) {
            sb_s(b, "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}");
        } else if (!strcmp(f, "ipv4")) {
            sb_s(b, "(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}(?:25[0-5]|2[0-4]"
                    "[0-9]|1[0-9][0-9]|[1-9]?[0-9])");
        } else {
            return sc_fail(c, "unsupported string format", f);
        }
        sb_s(b, "\"");
        return 0;
    }
    if (pat) {
        if (!json_is_string(pat)) return sc_fail(c, "must be a string:", "pattern");
        /* the pattern must hold for the JSON text of the string: plain patterns (no quotes or
         * backslashes matched) mean the same either way */
        sb_s(b, "\"(?:");
        sb_put(b, json_string_value(pat), json_string_length(pat));
        sb_s(b, ")\"");
        return 0;
    }
    sb_s(b, "\"" STRCHAR);
    if (hi < 0)
        sb_f(b, "{%lld,}", lo);
    else
        sb_f(b, "{%lld,%lld}", lo, hi);
    sb_s(b, "\"");
    return 0;
}

/* An integer-valued bound within +-MAX_BOUND: 1 when present, 0 when absent, -1 on error. */
static int get_bound(sc_ctx *c, json_t *s, const char *key, bool integral, double *out) {
    json_t *v = json_object_get(s, key);
    if (!v) return 0;
    if (!json_is_number(v)) return sc_fail(c, "must be a number:", key);
    double x = json_number_value(v);
    if (!(fabs(x) <= (double)MAX_BOUND)) return sc_fail(c, "bound too large:", key);
    if (integral && x != floor(x))
        return sc_fail(c, "non-integer bounds on numbers are unsupported:", key);
    *out = x;
    return 1;
}

static int gen_number(sc_ctx *c, sbuf *b, json_t *s, bool integer) {
    double lo = -(double)MAX_BOUND, hi = (double)MAX_BOUND, x;
    int k1, k2, k3, k4;
    if ((k1 = get_bound(c, s, "minimum", !integer, &lo)) < 0 ||
        (k2 = get_bound(c, s, "maximum", !integer, &hi)) < 0)
        return -1;
    if ((k3 = get_bound(c, s, "exclusiveMinimum", false, &x)) < 0) return -1;
    if (k3 && !integer) return sc_fail(c, "unsupported on numbers:", "exclusiveMinimum");
    if (k3) lo = fmax(lo, floor(x) + 1);
    if ((k4 = get_bound(c, s, "exclusiveMaximum", false, &x)) < 0) return -1;
    if (k4 && !integer) return sc_fail(c, "unsupported on numbers:", "exclusiveMaximum");
    if (k4) hi = fmin(hi, ceil(x) - 1);
    if (integer) lo = ceil(lo), hi = floor(hi);
    if (lo > hi) return sc_fail(c, "empty range:", "minimum");
    bool bounded = k1 || k2 || k3 || k4;
    if (!bounded) {
        sb_s(b, integer ? INTEGER : NUMBER);
        return 0;
    }
    long long l = (long long)lo, h = (long long)hi;
    if (integer) {
        range_int(b, l, h);
        return 0;
    }
    /* v = ip.frac in [l, h]: ip in [l, h-1] with any fraction, or ip = h with zeros (v >= 0);
     * mirrored for v < 0 */
    sb_s(b, "(?:");
    bool first = true;
    if (h >= 0) {
        long long a = l > 0 ? l : 0;
        if (a <= h - 1) {
            range_pos(b, a, h - 1);
            sb_s(b, "(?:\\.[0-9]{1,15})?");
            first = false;
        }
        if (!first) sb_s(b, "|");
        sb_f(b, "%lld(?:\\.0{1,15})?", h);
        first = false;
    }
    if (l < 0) {
        long long a = h < 0 ? -h : 0; /* -v in [a, -l] */
        if (!first) sb_s(b, "|");
        sb_s(b, "-(?:");
        if (a <= -l - 1) {
            range_pos(b, a, -l - 1);
            sb_s(b, "(?:\\.[0-9]{1,15})?|");
        }
        sb_f(b, "%lld(?:\\.0{1,15})?)", -l);
    }
    sb_s(b, ")");
    return 0;
}

static int gen_array(sc_ctx *c, sbuf *b, json_t *s, int depth) {
    long long lo, hi;
    if (get_count(c, s, "minItems", 0, &lo) || get_count(c, s, "maxItems", -1, &hi)) return -1;
    if (hi >= 0 && hi < lo) return sc_fail(c, "maxItems below minItems:", "maxItems");
    if (depth <= 0) { /* too deep: only an empty array is left, if allowed */
        sb_s(b, lo == 0 ? "\\[" WS "\\]" : NEVER);
        return 0;
    }
    json_t *items = json_object_get(s, "items");
    if (items && !json_is_object(items) && !json_is_boolean(items))
        return sc_fail(c, "unsupported form (tuple items) of", "items");
    sbuf item = {.max = b->max};
    int rc = 0;
    if (items)
        rc = gen_child(c, &item, items, depth - 1, "items");
    else
        gen_any(&item, depth - 1);
    if (rc == 0 && item.over) b->over = true;
    if (rc || b->over) {
        free(item.d);
        return rc;
    }
    sb_s(b, "\\[" WS);
    if (hi != 0) {
        sb_s(b, "(?:");
        sb_s(b, item.d);
        sb_s(b, "(?:" WS "," WS);
        sb_s(b, item.d);
        if (hi < 0)
            sb_f(b, "){%lld,}", lo > 0 ? lo - 1 : 0);
        else
            sb_f(b, "){%lld,%lld}", lo > 0 ? lo - 1 : 0, hi - 1);
        sb_s(b, lo == 0 ? ")?" : ")");
    }
    sb_s(b, WS "\\]");
    free(item.d);
    return 0;
}

typedef struct prop {
    char *kv; /* "key" WS : WS value */
    bool required;
} prop;

static int gen_object(sc_ctx *c, sbuf *b, json_t *s, int depth) {
    json_t *props = json_object_get(s, "properties"), *req = json_object_get(s, "required");
    json_t *addl = json_object_get(s, "additionalProperties");
    if (props && !json_is_object(props)) return sc_fail(c, "must be an object:", "properties");
    if (req && !json_is_array(req)) return sc_fail(c, "must be an array:", "required");
    if (addl && !json_is_boolean(addl) && !json_is_object(addl))
        return sc_fail(c, "must be a boolean or a schema:", "additionalProperties");
    size_t n_req = json_array_size(req), i;
    for (i = 0; i < n_req; i++)
        if (!json_is_string(json_array_get(req, i)))
            return sc_fail(c, "must be an array of strings:", "required");
    bool has_props = props && json_object_size(props) > 0;
    if (!has_props && n_req == 0 && !json_is_false(addl)) {
        /* a map: any keys, values of additionalProperties (or anything) */
        if (depth <= 0) {
            sb_s(b, "\\{" WS "\\}");
            return 0;
        }
        sbuf v = {.max = b->max};
        int rc = 0;
        if (json_is_object(addl))
            rc = gen_child(c, &v, addl, depth - 1, "additionalProperties");
        else
            gen_any(&v, depth - 1);
        if (rc == 0 && !v.over) {
            sb_s(b, "\\{" WS "(?:" STRING WS ":" WS);
            sb_s(b, v.d);
            sb_s(b, "(?:" WS "," WS STRING WS ":" WS);
            sb_s(b, v.d);
            sb_s(b, ")*)?" WS "\\}");
        }
        if (v.over) b->over = true;
        free(v.d);
        return rc;
    }
    if (depth <= 0) {
        sb_s(b, n_req == 0 ? "\\{" WS "\\}" : NEVER);
        return 0;
    }
    /* the listed properties, in order, then required names not listed (any value) */
    size_t n = json_object_size(props) + n_req;
    if (n > 256) return sc_fail(c, "more than 256 entries in", "properties");
    prop *ps = kv_calloc(n ? n : 1, sizeof *ps);
    int n_ps = 0, rc = 0;
    const char *key;
    json_t *sub;
    size_t n_path = path_push(c, "properties");
    json_object_foreach(props, key, sub) {
        sbuf kv = {.max = b->max};
        json_t *kj = json_string(key);
        sb_json_literal(&kv, kj);
        json_decref(kj);
        sb_s(&kv, WS ":" WS);
        if ((rc = gen_child(c, &kv, sub, depth - 1, key)) != 0 || kv.over) {
            if (kv.over) b->over = true;
            free(kv.d);
            break;
        }
        bool required = false;
        for (i = 0; i < n_req; i++)
            required |= !strcmp(json_string_value(json_array_get(req, i)), key);
        ps[n_ps++] = (prop){kv.d, required};
    }
    c->path[n_path] = 0;
    for (i = 0; rc == 0 && !b->over && i < n_req; i++) {
        const char *r = json_string_value(json_array_get(req, i));
        if (props && json_object_get(props, r)) continue;
        if (json_is_false(addl)) {
            rc = sc_fail(c,
                         "required property not in properties with additionalProperties false:", r);
            break;
        }
        sbuf kv = {.max = b->max};
        json_t *kj = json_string(r);
        sb_json_literal(&kv, kj);
        json_decref(kj);
        sb_s(&kv, WS ":" WS);
        gen_any(&kv, depth - 1);
        ps[n_ps++] = (prop){kv.d, true};
    }
    if (rc == 0 && !b->over) {
        /* F_i = nothing emitted yet from i; R_i = something emitted: each next one with a comma */
        sb_s(b, "\\{" WS);
        int open = 0;
        for (int k = 0; k < n_ps; k++) {
            if (ps[k].required) {
                sb_s(b, ps[k].kv);
                for (int j = k + 1; j < n_ps; j++) {
                    sb_s(b, ps[j].required ? "" : "(?:");
                    sb_s(b, WS "," WS);
                    sb_s(b, ps[j].kv);
                    sb_s(b, ps[j].required ? "" : ")?");
                }
                break;
            }
            sb_s(b, "(?:");
            sb_s(b, ps[k].kv);
            for (int j = k + 1; j < n_ps; j++) {
                sb_s(b, ps[j].required ? "" : "(?:");
                sb_s(b, WS "," WS);
                sb_s(b, ps[j].kv);
                sb_s(b, ps[j].required ? "" : ")?");
            }
            sb_s(b, "|");
            open++;
            if (k == n_ps - 1) sb_s(b, ""); /* all optional: the empty object */
        }
        for (int k = 0; k < open; k++) sb_s(b, ")");
        sb_s(b, WS "\\}");
    }
    for (int k = 0; k < n_ps; k++) free(ps[k].kv);
    free(ps);
    return rc;
}

/* "#", "#/$defs/x", "#/definitions/x" (JSON pointer with ~0 ~1 escapes). */
static json_t *resolve_ref(sc_ctx *c, const char *ref) {
    if (strncmp(ref, "#", 1) != 0) return NULL;
    json_t *cur = c->root;
    const char *p = ref + 1;
    while (*p == '/' && cur) {
        p++;
        char part[256];
        size_t n = 0;
        while (*p && *p != '/' && n < sizeof part - 1) {
            if (p[0] == '~' && p[1] == '0')
                part[n++] = '~', p += 2;
            else if (p[0] == '~' && p[1] == '1')
                part[n++] = '/', p += 2;
            else
                part[n++] = *p++;
        }
        part[n] = 0;
        cur = json_is_object(cur) ? json_object_get(cur, part) : NULL;
    }
    return *p ? NULL : cur;
}

static int gen_alternatives(sc_ctx *c, sbuf *b, json_t *list, int depth, const char *kw) {
    if (!json_is_array(list) || json_array_size(list) == 0)
        return sc_fail(c, "must be a non-empty array:", kw);
    size_t n_path = path_push(c, kw), i;
    json_t *sub;
    int rc = 0;
    sb_s(b, "(?:");
    json_array_foreach(list, i, sub) {
        char idx[24];
        snprintf(idx, sizeof idx, "%zu", i);
        if (i) sb_s(b, "|");
        if ((rc = gen_child(c, b, sub, depth, idx)) != 0) break;
    }
    sb_s(b, ")");
    c->path[n_path] = 0;
    return rc;
}

static int gen_type(sc_ctx *c, sbuf *b, json_t *s, const char *t, int depth) {
    if (!strcmp(t, "object")) return gen_object(c, b, s, depth);
    if (!strcmp(t, "array")) return gen_array(c, b, s, depth);
    if (!strcmp(t, "string")) return gen_string(c, b, s);
    if (!strcmp(t, "integer")) return gen_number(c, b, s, true);
    if (!strcmp(t, "number")) return gen_number(c, b, s, false);
    if (!strcmp(t, "boolean")) return sb_s(b, "(?:true|false)"), 0;
    if (!strcmp(t, "null")) return sb_s(b, "null"), 0;
    return sc_fail(c, "unsupported type", t);
}

static int gen(sc_ctx *c, sbuf *b, json_t *s, int depth) {
    if (json_is_true(s)) return gen_any(b, depth), 0;
    if (json_is_false(s)) return sb_s(b, NEVER), 0;
    if (!json_is_object(s)) return sc_fail(c, "a schema must be an object or a boolean:", "schema");
    const char *key;
    json_t *v;
    json_object_foreach(s, key, v) {
        if (in_list(key, annotations, sizeof annotations / sizeof *annotations)) continue;
        if (!in_list(key, keywords, sizeof keywords / sizeof *keywords))
            return sc_fail(c, "unsupported JSON Schema keyword", key);
    }
    json_t *ref = json_object_get(s, "$ref");
    if (ref) {
        if (json_object_size(s) > 1) {
            json_object_foreach(
                s, key,
                v) if (strcmp(key, "$ref") &&
                       !in_list(key, annotations,
                                sizeof annotations /
                                    sizeof *annotations)) return sc_fail(c,
                                                                         "keywords beside $ref are "
                                                                         "unsupported:",
                                                                         key);
        }
        json_t *target = json_is_string(ref) ? resolve_ref(c, json_string_value(ref)) : NULL;
        if (!target)
            return sc_fail(c, "unresolvable $ref",
                           json_string_value(ref) ? json_string_value(ref) : "?");
        if (c->ref_depth >= c->lim->max_depth) return sb_s(b, NEVER), 0; /* recursion cut */
        c->ref_depth++;
        int rc = gen(c, b, target, depth);
        c->ref_depth--;
        return rc;
    }
    if ((v = json_object_get(s, "const"))) return sb_json_literal(b, v), 0;
    if ((v = json_object_get(s, "enum"))) {
        if (!json_is_array(v) || json_array_size(v) == 0)
            return sc_fail(c, "must be a non-empty array:", "enum");
        size_t i;
        json_t *e;
        sb_s(b, "(?:");
        json_array_foreach(v, i, e) {
            if (i) sb_s(b, "|");
            sb_json_literal(b, e);
        }
        sb_s(b, ")");
        return 0;
    }
    if ((v = json_object_get(s, "anyOf"))) return gen_alternatives(c, b, v, depth, "anyOf");
    if ((v = json_object_get(s, "oneOf"))) return gen_alternatives(c, b, v, depth, "oneOf");
    if ((v = json_object_get(s, "allOf"))) {
        if (!json_is_array(v) || json_array_size(v) != 1)
            return sc_fail(c, "only a one-schema form is supported of", "allOf");
        return gen_child(c, b, json_array_get(v, 0), depth, "allOf/0");
    }
    json_t *type = json_object_get(s, "type");
    if (json_is_string(type)) return gen_type(c, b, s, json_string_value(type), depth);
    if (json_is_array(type)) {
        if (json_array_size(type) == 0) return sc_fail(c, "must not be empty:", "type");
        size_t i;
        json_t *t;
        sb_s(b, "(?:");
        json_array_foreach(type, i, t) {
            if (!json_is_string(t)) return sc_fail(c, "must be strings:", "type");
            if (i) sb_s(b, "|");
            if (gen_type(c, b, s, json_string_value(t), depth)) return -1;
        }
        sb_s(b, ")");
        return 0;
    }
    if (type) return sc_fail(c, "must be a string or an array:", "type");
    if (json_object_get(s, "properties") || json_object_get(s, "required") ||
        json_object_get(s, "additionalProperties"))
        return gen_object(c, b, s, depth);
    if (json_object_get(s, "items")) return gen_array(c, b, s, depth);
    gen_any(b, depth);
    return 0;
}

int sc_schema_regex(json_t *schema, const sc_limits *lim, char **out, kv_error *err) {
    sc_limits def;
    if (!lim) sc_limits_default(&def), lim = &def;
    *out = NULL;
    sc_ctx c = {.root = schema, .lim = lim, .err = err};
    sbuf b = {.max = lim->max_regex_bytes};
    int rc = gen(&c, &b, schema, lim->max_depth);
    if (rc == 0 && b.over)
        rc = kv_error_set(err, "schema too large: its regex is over %zu bytes (max_regex_bytes)",
                          lim->max_regex_bytes);
    if (rc) {
        free(b.d);
        return -1;
    }
    *out = b.d ? b.d : kv_strdup("");
    return 0;
}

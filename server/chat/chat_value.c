/* Chat template values: jansson values printed and compared the way Python does (str, repr,
 * json.dumps with ensure_ascii=False), Python truthiness. NULL stands for Jinja's undefined. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "server/chat/chat_internal.h"

void ct_buf_add(ct_buf *b, const char *s, size_t n) {
    if (b->over) return;
    if (b->limit && b->n + n > b->limit) {
        b->over = true;
        return;
    }
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = kv_realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

void ct_buf_adds(ct_buf *b, const char *s) {
    ct_buf_add(b, s, strlen(s));
}

json_t *ct_string(const char *s, size_t n) {
    json_t *v = json_stringn_nocheck(s, n);
    KV_CHECK(v);
    return v;
}

bool ct_truthy(json_t *v) {
    if (!v) return false;
    switch (json_typeof(v)) {
    case JSON_NULL:
    case JSON_FALSE:
        return false;
    case JSON_TRUE:
        return true;
    case JSON_INTEGER:
        return json_integer_value(v) != 0;
    case JSON_REAL:
        return json_real_value(v) != 0.0;
    case JSON_STRING:
        return json_string_length(v) != 0;
    case JSON_ARRAY:
        return json_array_size(v) != 0;
    case JSON_OBJECT:
        return json_object_size(v) != 0;
    }
    return false;
}

/* Python's float repr: the shortest digits that read back, fixed notation for exponents in
 * [-4, 16), else d.ddde+XX. */
void ct_float_repr(char *out, size_t cap, double d) {
    if (isnan(d)) {
        snprintf(out, cap, "NaN");
        return;
    }
    if (isinf(d)) {
        snprintf(out, cap, d > 0 ? "Infinity" : "-Infinity");
        return;
    }
    char tmp[40];
    int prec;
    for (prec = 0; prec < 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec, d);
        if (strtod(tmp, NULL) == d) break;
    }
    /* tmp: [-]d[.ddd]e[+-]XX */
    char digits[24];
    int nd = 0;
    bool neg = tmp[0] == '-';
    const char *s = tmp + neg;
    for (; *s && *s != 'e'; s++)
        if (*s != '.') digits[nd++] = *s;
    int exp = atoi(s + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    char *o = out;
    size_t left = cap;
#define PUT(...)                                                                                   \
    do {                                                                                           \
        int w = snprintf(o, left, __VA_ARGS__);                                                    \
        if (w > 0 && (size_t)w < left) {                                                           \
            o += w;                                                                                \
            left -= (size_t)w;                                                                     \
        }                                                                                          \
    } while (0)
    if (neg) PUT("-");
    if (exp >= 16 || exp < -4) {
        PUT("%c", digits[0]);
        if (nd > 1) PUT(".%s", digits + 1);
        PUT("e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    } else if (exp < 0) {
        PUT("0.");
        for (int i = 0; i < -exp - 1; i++) PUT("0");
        PUT("%s", digits);
    } else {
        for (int i = 0; i <= exp; i++) PUT("%c", i < nd ? digits[i] : '0');
        PUT(".");
        if (nd > exp + 1)
            PUT("%s", digits + exp + 1);
        else
            PUT("0");
    }
#undef PUT
}

static void add_repr_string(ct_buf *b, const char *s, size_t n) {
    bool has_sq = memchr(s, '\'', n) != NULL, has_dq = memchr(s, '"', n) != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    ct_buf_add(b, &q, 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        if (c == '\\' || c == (unsigned char)q) {
            esc[0] = '\\';
            esc[1] = (char)c;
            ct_buf_add(b, esc, 2);
        } else if (c == '\n')
            ct_buf_adds(b, "\\n");
        else if (c == '\r')
            ct_buf_adds(b, "\\r");
        else if (c == '\t')
            ct_buf_adds(b, "\\t");
        else if (c < 0x20 || c == 0x7f) {
            snprintf(esc, sizeof esc, "\\x%02x", c);
            ct_buf_adds(b, esc);
        } else
            ct_buf_add(b, (const char *)&c, 1);
    }
    ct_buf_add(b, &q, 1);
}

static size_t ptr_slot(const ct_ptrset *s, const json_t *v) {
    size_t h = ((uintptr_t)v >> 4) * 0x9e3779b97f4a7c15ull;
    size_t i = h & (s->cap - 1);
    while (s->v[i] && s->v[i] != v) i = (i + 1) & (s->cap - 1);
    return i;
}

#define CT_MAX_TUPLES (1u << 20) /* past this many live tuples, new ones print as lists */

void ct_ptrset_add(ct_ptrset *s, json_t *v) {
    if (!v) return;
    if ((s->n + 1) * 2 > s->cap) {
        /* rebuild without the values only the set still holds (they are gone for the template),
         * growing only if the live ones need it: memory follows the live tuples */
        size_t live = 0;
        for (size_t i = 0; i < s->cap; i++)
            if (s->v[i] && s->v[i]->refcount > 1) live++;
        if (live >= CT_MAX_TUPLES) return;
        ct_ptrset old = *s;
        s->cap = old.cap ? ((live + 1) * 2 > old.cap / 2 ? old.cap * 2 : old.cap) : 64;
        s->v = kv_calloc(s->cap, sizeof *s->v);
        s->n = 0;
        for (size_t i = 0; i < old.cap; i++) {
            if (!old.v[i]) continue;
            if (old.v[i]->refcount > 1) {
                s->v[ptr_slot(s, old.v[i])] = old.v[i];
                s->n++;
            } else {
                json_decref(old.v[i]);
            }
        }
        free(old.v);
    }
    size_t i = ptr_slot(s, v);
    if (s->v[i]) return;
    s->v[i] = json_incref(v);
    s->n++;
}

bool ct_ptrset_has(const ct_ptrset *s, const json_t *v) {
    return s && s->cap && v && s->v[ptr_slot(s, v)] == v;
}

void ct_ptrset_free(ct_ptrset *s) {
    for (size_t i = 0; i < s->cap; i++) json_decref(s->v[i]);
    free(s->v);
    *s = (ct_ptrset){0};
}

void ct_repr(ct_buf *b, json_t *v) {
    if (v && json_is_string(v)) {
        add_repr_string(b, json_string_value(v), json_string_length(v));
        return;
    }
    if (v && json_is_array(v)) {
        bool tuple = ct_ptrset_has(b->tuples, v);
        ct_buf_adds(b, tuple ? "(" : "[");
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i) ct_buf_adds(b, ", ");
            ct_repr(b, json_array_get(v, i));
        }
        ct_buf_adds(b, tuple ? (json_array_size(v) == 1 ? ",)" : ")") : "]");
        return;
    }
    if (v && json_is_object(v)) {
        ct_buf_adds(b, "{");
        const char *k;
        json_t *x;
        bool first = true;
        json_object_foreach(v, k, x) {
            if (!first) ct_buf_adds(b, ", ");
            first = false;
            if (k[0] == CT_INT_KEY[0])
                ct_buf_adds(b, k + 1);
            else
                add_repr_string(b, k, strlen(k));
            ct_buf_adds(b, ": ");
            ct_repr(b, x);
        }
        ct_buf_adds(b, "}");
        return;
    }
    ct_str(b, v);
}

void ct_str(ct_buf *b, json_t *v) {
    char tmp[64];
    if (!v) return;
    switch (json_typeof(v)) {
    case JSON_NULL:
        ct_buf_adds(b, "None");
        break;
    case JSON_TRUE:
        ct_buf_adds(b, "True");
        break;
    case JSON_FALSE:
        ct_buf_adds(b, "False");
        break;
    case JSON_INTEGER:
        snprintf(tmp, sizeof tmp, "%lld", (long long)json_integer_value(v));
        ct_buf_adds(b, tmp);
        break;
    case JSON_REAL:
        ct_float_repr(tmp, sizeof tmp, json_real_value(v));
        if (!strcmp(tmp, "NaN"))
            strcpy(tmp, "nan");
        else if (!strcmp(tmp, "Infinity"))
            strcpy(tmp, "inf");
        else if (!strcmp(tmp, "-Infinity"))
            strcpy(tmp, "-inf");
        ct_buf_adds(b, tmp);
        break;
    case JSON_STRING:
        ct_buf_add(b, json_string_value(v), json_string_length(v));
        break;
    default:
        ct_repr(b, v);
        break;
    }
}

static void add_json_string(ct_buf *b, const char *s, size_t n) {
    ct_buf_adds(b, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        switch (c) {
        case '"':
            ct_buf_adds(b, "\\\"");
            break;
        case '\\':
            ct_buf_adds(b, "\\\\");
            break;
        case '\n':
            ct_buf_adds(b, "\\n");
            break;
        case '\r':
            ct_buf_adds(b, "\\r");
            break;
        case '\t':
            ct_buf_adds(b, "\\t");
            break;
        case '\b':
            ct_buf_adds(b, "\\b");
            break;
        case '\f':
            ct_buf_adds(b, "\\f");
            break;
        default:
            if (c < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", c);
                ct_buf_adds(b, esc);
            } else {
                ct_buf_add(b, (const char *)&c, 1);
            }
        }
    }
    ct_buf_adds(b, "\"");
}

static int cmp_keys(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void tojson_at(ct_buf *b, json_t *v, const char *indent, const char *isep, const char *ksep,
                      bool sort_keys, int level) {
    if (!v || json_is_null(v)) {
        ct_buf_adds(b, "null");
        return;
    }
    if (b->over || level > 1000) return;
    if (json_is_true(v) || json_is_false(v)) {
        ct_buf_adds(b, json_is_true(v) ? "true" : "false");
        return;
    }
    if (json_is_string(v)) {
        add_json_string(b, json_string_value(v), json_string_length(v));
        return;
    }
    if (json_is_number(v)) {
        ct_str(b, v);
        if (json_is_real(v) && !isfinite(json_real_value(v))) {
            /* json.dumps writes NaN / Infinity */
        }
        return;
    }
    bool arr = json_is_array(v);
    size_t n = arr ? json_array_size(v) : json_object_size(v);
    if (n == 0) {
        ct_buf_adds(b, arr ? "[]" : "{}");
        return;
    }
    const char **keys = NULL;
    if (!arr) {
        keys = kv_malloc(n * sizeof *keys);
        size_t i = 0;
        const char *k;
        json_t *x;
        json_object_foreach(v, k, x) keys[i++] = k;
        if (sort_keys) qsort(keys, n, sizeof *keys, cmp_keys);
    }
    ct_buf_adds(b, arr ? "[" : "{");
    for (size_t i = 0; i < n; i++) {
        if (i) ct_buf_adds(b, isep);
        if (indent) {
            ct_buf_adds(b, "\n");
            for (int l = 0; l <= level; l++) ct_buf_adds(b, indent);
        }
        if (arr) {
            tojson_at(b, json_array_get(v, i), indent, isep, ksep, sort_keys, level + 1);
        } else {
            const char *k = keys[i][0] == CT_INT_KEY[0] ? keys[i] + 1 : keys[i];
            add_json_string(b, k, strlen(k));
            ct_buf_adds(b, ksep);
            tojson_at(b, json_object_get(v, keys[i]), indent, isep, ksep, sort_keys, level + 1);
        }
    }
    if (indent) {
        ct_buf_adds(b, "\n");
        for (int l = 0; l < level; l++) ct_buf_adds(b, indent);
    }
    ct_buf_adds(b, arr ? "]" : "}");
    free(keys);
}

void ct_tojson(ct_buf *b, json_t *v, const char *indent, const char *item_sep, const char *key_sep,
               bool sort_keys) {
    if (!item_sep) item_sep = indent ? "," : ", ";
    if (!key_sep) key_sep = ": ";
    tojson_at(b, v, indent, item_sep, key_sep, sort_keys, 0);
}

bool ct_equal(json_t *a, json_t *b) {
    if (!a || !b) return a == b;
    if (json_is_number(a) && json_is_number(b)) return json_number_value(a) == json_number_value(b);
    if ((json_is_boolean(a) && json_is_number(b)) || (json_is_number(a) && json_is_boolean(b)))
        return (json_is_number(a) ? json_number_value(a) : json_is_true(a)) ==
               (json_is_number(b) ? json_number_value(b) : json_is_true(b));
    if (json_is_array(a) && json_is_array(b)) {
        if (json_array_size(a) != json_array_size(b)) return false;
        for (size_t i = 0; i < json_array_size(a); i++)
            if (!ct_equal(json_array_get(a, i), json_array_get(b, i))) return false;
        return true;
    }
    return json_equal(a, b);
}

int ct_compare(json_t *a, json_t *b, bool *ok) {
    *ok = true;
    if (a && b && (json_is_number(a) || json_is_boolean(a)) &&
        (json_is_number(b) || json_is_boolean(b))) {
        double x = json_is_number(a) ? json_number_value(a) : json_is_true(a);
        double y = json_is_number(b) ? json_number_value(b) : json_is_true(b);
        return x < y ? -1 : x > y;
    }
    if (a && b && json_is_string(a) && json_is_string(b)) {
        size_t na = json_string_length(a), nb = json_string_length(b);
        int c = memcmp(json_string_value(a), json_string_value(b), na < nb ? na : nb);
        if (c) return c < 0 ? -1 : 1;
        return na < nb ? -1 : na > nb;
    }
    if (a && b && json_is_array(a) && json_is_array(b)) { /* lexicographic, as Python's lists */
        size_t na = json_array_size(a), nb = json_array_size(b);
        for (size_t i = 0; i < na && i < nb; i++) {
            int c = ct_compare(json_array_get(a, i), json_array_get(b, i), ok);
            if (!*ok || c) return c;
        }
        return na < nb ? -1 : na > nb;
    }
    *ok = false;
    return 0;
}

/* Dict literals may have int keys ({0: x}): such a key is stored as CT_INT_KEY + its digits. */
json_t *ct_key_value(const char *k) {
    if (k[0] == CT_INT_KEY[0] && k[1]) return json_integer(strtoll(k + 1, NULL, 10));
    return json_string(k);
}

void ct_int_key(char *out, size_t cap, long long i) {
    snprintf(out, cap, "%s%lld", CT_INT_KEY, i);
}

json_t *ct_iter_list(json_t *v) {
    if (!v) return json_array();
    if (json_is_array(v)) return json_incref(v);
    json_t *out = json_array();
    if (json_is_object(v)) {
        const char *k;
        json_t *x;
        json_object_foreach(v, k, x) json_array_append_new(out, ct_key_value(k));
        return out;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t n = json_string_length(v);
        for (size_t i = 0; i < n;) {
            size_t k = 1;
            while (i + k < n && ((unsigned char)s[i + k] & 0xc0) == 0x80) k++;
            json_array_append_new(out, ct_string(s + i, k));
            i += k;
        }
        return out;
    }
    json_decref(out);
    return NULL;
}

/* Chat template built-ins: filters, tests, string/dict methods and the globals transformers gives
 * (raise_exception, strftime_now, namespace) plus range and dict. Pure functions of their inputs
 * except strftime_now, which reads the local clock. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "server/chat/chat_internal.h"

static json_t *str_of(json_t *v) {
    if (v && json_is_string(v)) return json_incref(v);
    ct_buf b = {0};
    ct_str(&b, v);
    json_t *r = ct_string(b.p ? b.p : "", b.n);
    free(b.p);
    return r;
}

static json_t *buf_string(ct_buf *b) {
    json_t *r = ct_string(b->p ? b->p : "", b->n);
    free(b->p);
    return r;
}

/* Python's str.isspace() for the code point at s[i] (UTF-8); its byte length in *k, 0 if not. */
static size_t py_space_len(const char *s, size_t i, size_t n) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x80) return (c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f)) ? 1 : 0;
    uint32_t cp;
    size_t k;
    if ((c & 0xe0) == 0xc0 && i + 1 < n) {
        cp = ((uint32_t)(c & 0x1f) << 6) | ((unsigned char)s[i + 1] & 0x3f);
        k = 2;
    } else if ((c & 0xf0) == 0xe0 && i + 2 < n) {
        cp = ((uint32_t)(c & 0x0f) << 12) | ((uint32_t)((unsigned char)s[i + 1] & 0x3f) << 6) |
             ((unsigned char)s[i + 2] & 0x3f);
        k = 3;
    } else {
        return 0;
    }
    bool sp = cp == 0x85 || cp == 0xa0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) ||
              cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000;
    return sp ? k : 0;
}

/* The length of the space code point ending at s[e-1], 0 if none. */
static size_t py_space_len_before(const char *s, size_t b, size_t e) {
    for (size_t k = 1; k <= 3 && k <= e - b; k++)
        if (py_space_len(s, e - k, e) == k) return k;
    return 0;
}

static json_t *strip(json_t *v, const char *chars, bool left, bool right) {
    const char *s = json_string_value(v);
    size_t b = 0, e = json_string_length(v), k;
    if (chars) {
        if (left)
            while (b < e && strchr(chars, s[b]) && s[b]) b++;
        if (right)
            while (e > b && strchr(chars, s[e - 1]) && s[e - 1]) e--;
        return ct_string(s + b, e - b);
    }
    if (left)
        while (b < e && (k = py_space_len(s, b, e)) > 0) b += k;
    if (right)
        while (e > b && (k = py_space_len_before(s, b, e)) > 0) e -= k;
    return ct_string(s + b, e - b);
}

static json_t *replace(json_t *v, json_t *from, json_t *to, long long count) {
    const char *s = json_string_value(v), *f = json_string_value(from), *t = json_string_value(to);
    size_t n = json_string_length(v), nf = json_string_length(from), nt = json_string_length(to);
    ct_buf b = {0};
    size_t i = 0;
    long long done = 0;
    while (i <= n) {
        if ((count < 0 || done < count) && i + nf <= n && !memcmp(s + i, f, nf)) {
            ct_buf_add(&b, t, nt);
            done++;
            if (nf == 0) {
                if (i < n) ct_buf_add(&b, s + i, 1);
                i++;
            } else {
                i += nf;
            }
        } else {
            if (i < n) ct_buf_add(&b, s + i, 1);
            i++;
        }
    }
    return buf_string(&b);
}

static json_t *split(json_t *v, json_t *sep, long long maxsplit) {
    const char *s = json_string_value(v);
    size_t n = json_string_length(v), i = 0;
    json_t *out = json_array();
    if (!sep || json_is_null(sep)) {
        while (i < n) {
            while (i < n && isspace((unsigned char)s[i])) i++;
            if (i >= n) break;
            size_t b = i;
            if (maxsplit >= 0 && (long long)json_array_size(out) >= maxsplit) {
                size_t e = n;
                while (e > b && isspace((unsigned char)s[e - 1])) e--;
                json_array_append_new(out, ct_string(s + b, e - b));
                break;
            }
            while (i < n && !isspace((unsigned char)s[i])) i++;
            json_array_append_new(out, ct_string(s + b, i - b));
        }
        return out;
    }
    const char *p = json_string_value(sep);
    size_t np = json_string_length(sep);
    size_t b = 0;
    for (i = 0; np && i + np <= n;) {
        if (!memcmp(s + i, p, np) && (maxsplit < 0 || (long long)json_array_size(out) < maxsplit)) {
            json_array_append_new(out, ct_string(s + b, i - b));
            i += np;
            b = i;
        } else {
            i++;
        }
    }
    json_array_append_new(out, ct_string(s + b, n - b));
    return out;
}

static bool affix(json_t *v, json_t *a, bool start) {
    if (a && json_is_array(a)) {
        for (size_t i = 0; i < json_array_size(a); i++)
            if (affix(v, json_array_get(a, i), start)) return true;
        return false;
    }
    if (!a || !json_is_string(a)) return false;
    size_t n = json_string_length(v), k = json_string_length(a);
    if (k > n) return false;
    return !memcmp(json_string_value(v) + (start ? 0 : n - k), json_string_value(a), k);
}

json_t *ct_case_map(json_t *v, int mode) {
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    char *o = kv_malloc(n + 1);
    bool prev_alpha = false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        int r = ch;
        if (mode == 0)
            r = tolower(ch);
        else if (mode == 1)
            r = toupper(ch);
        else if (mode == 2)
            r = prev_alpha ? tolower(ch) : toupper(ch);
        else
            r = i == 0 ? toupper(ch) : tolower(ch);
        prev_alpha = isalpha(ch) || (ch >= 0x80);
        o[i] = (char)r;
    }
    json_t *out = ct_string(o, n);
    free(o);
    return out;
}

json_t *ct_call_method(ct_ctx *c, const ct_node *n, json_t *obj, const char *name, json_t **args,
                       int n_args, bool *found) {
    *found = true;
    json_t *a0 = n_args > 0 ? args[0] : NULL, *a1 = n_args > 1 ? args[1] : NULL;
    if (!obj) {
        if (!strcmp(name, "raise_exception")) {
            ct_buf b = {0};
            ct_str(&b, a0);
            ct_fail(c, 0, "%s", b.p ? b.p : "");
            free(b.p);
            return NULL;
        }
        if (!strcmp(name, "strftime_now")) {
            if (!a0 || !json_is_string(a0))
                return ct_fail(c, n->line, "strftime_now needs a format");
            time_t now = c->lim.now ? (time_t)c->lim.now : time(NULL);
            struct tm tm;
            localtime_r(&now, &tm);
            char buf[256];
            size_t k = strftime(buf, sizeof buf, json_string_value(a0), &tm);
            return ct_string(buf, k);
        }
        if (!strcmp(name, "namespace") || !strcmp(name, "dict")) {
            json_t *ns = a0 && json_is_object(a0) ? json_deep_copy(a0) : json_object();
            for (int i = 0; i < n->kw.n; i++) {
                json_t *v = ct_eval(c, n->kw.v[i]);
                json_t *copy = v ? json_deep_copy(v) : json_null(); /* no cycles through ns */
                json_decref(v);
                copy = ct_check_nested(c, n->line, copy);
                if (copy) json_object_set_new(ns, n->kw_names[i], copy);
            }
            return ns;
        }
        if (!strcmp(name, "range")) {
            long long lo = 0, hi = 0, step = 1;
            for (int i = 0; i < n_args; i++)
                if (!args[i] || !json_is_integer(args[i]))
                    return ct_fail(c, n->line, "range needs integers");
            if (n_args == 1)
                hi = json_integer_value(a0);
            else if (n_args >= 2) {
                lo = json_integer_value(a0);
                hi = json_integer_value(a1);
                if (n_args > 2) step = json_integer_value(args[2]);
            }
            if (step == 0) return ct_fail(c, n->line, "range step cannot be zero");
            json_t *r = json_array();
            for (long long i = lo; step > 0 ? i < hi : i > hi; i += step) {
                if ((long long)json_array_size(r) >= c->lim.max_iterations) {
                    json_decref(r);
                    return ct_fail(c, n->line, "range too long");
                }
                json_array_append_new(r, json_integer(i));
            }
            return r;
        }
        *found = false;
        return NULL;
    }
    if (json_is_string(obj)) {
        const char *chars = a0 && json_is_string(a0) ? json_string_value(a0) : NULL;
        if (!strcmp(name, "strip")) return strip(obj, chars, true, true);
        if (!strcmp(name, "lstrip")) return strip(obj, chars, true, false);
        if (!strcmp(name, "rstrip")) return strip(obj, chars, false, true);
        if (!strcmp(name, "lower")) return ct_case_map(obj, 0);
        if (!strcmp(name, "upper")) return ct_case_map(obj, 1);
        if (!strcmp(name, "title")) return ct_case_map(obj, 2);
        if (!strcmp(name, "capitalize")) return ct_case_map(obj, 3);
        if (!strcmp(name, "startswith")) return json_boolean(affix(obj, a0, true));
        if (!strcmp(name, "endswith")) return json_boolean(affix(obj, a0, false));
        if (!strcmp(name, "split"))
            return split(obj, a0, a1 && json_is_integer(a1) ? json_integer_value(a1) : -1);
        if (!strcmp(name, "replace")) {
            if (!a0 || !a1 || !json_is_string(a0) || !json_is_string(a1))
                return ct_fail(c, n->line, "replace needs two strings");
            return replace(obj, a0, a1,
                           n_args > 2 && json_is_integer(args[2]) ? json_integer_value(args[2])
                                                                  : -1);
        }
        if (!strcmp(name, "find") || !strcmp(name, "count")) {
            if (!a0 || !json_is_string(a0)) return ct_fail(c, n->line, "%s needs a string", name);
            const char *s = json_string_value(obj), *p = strstr(s, json_string_value(a0));
            if (name[0] == 'f') return json_integer(p ? (long long)(p - s) : -1);
            long long k = 0;
            size_t np = json_string_length(a0);
            for (; p && np; p = strstr(p + np, json_string_value(a0))) k++;
            return json_integer(k);
        }
        if (!strcmp(name, "join")) {
            json_t *items = ct_iter_list(a0);
            ct_buf b = {0};
            for (size_t i = 0; items && i < json_array_size(items); i++) {
                if (i) ct_str(&b, obj);
                ct_str(&b, json_array_get(items, i));
            }
            json_decref(items);
            return buf_string(&b);
        }
    }
    if (json_is_object(obj) && !strcmp(name, "cycle") && json_object_get(obj, CT_LOOP_KEY)) {
        if (n_args < 1) return ct_fail(c, n->line, "loop.cycle needs at least one value");
        long long i = json_integer_value(json_object_get(obj, "index0"));
        return json_incref(args[i % n_args]);
    }
    if (json_is_object(obj)) {
        if (!strcmp(name, "items") || !strcmp(name, "keys") || !strcmp(name, "values")) {
            json_t *r = json_array();
            const char *k;
            json_t *v;
            json_object_foreach(obj, k, v) {
                if (name[0] == 'k')
                    json_array_append_new(r, ct_key_value(k));
                else if (name[0] == 'v')
                    json_array_append(r, v);
                else {
                    json_t *pair = json_pack("[oO]", ct_key_value(k), v);
                    ct_ptrset_add(&c->tuples, pair); /* Python's items() gives tuples */
                    json_array_append_new(r, pair);
                }
            }
            return r;
        }
        if (!strcmp(name, "get")) {
            json_t *v =
                a0 && json_is_string(a0) ? json_object_get(obj, json_string_value(a0)) : NULL;
            return json_incref(v ? v : a1 ? a1 : json_null());
        }
    }
    *found = false;
    return NULL;
}

static const char *const known_filters[] = {
    "tojson", "default", "d",     "safe",       "length",  "count",   "string",     "list",
    "items",  "first",   "last",  "join",       "select",  "reject",  "selectattr", "rejectattr",
    "map",    "int",     "float", "abs",        "unique",  "reverse", "dictsort",   "trim",
    "lower",  "upper",   "title", "capitalize", "replace", "indent",  "sort",       "sum",
    "min",    "max",     "round", NULL};
static const char *const known_tests[] = {
    "defined",     "undefined", "none",    "string", "mapping", "iterable", "sequence", "number",
    "integer",     "float",     "boolean", "true",   "false",   "callable", "equalto",  "eq",
    "==",          "sameas",    "ne",      "!=",     "lower",   "upper",    "odd",      "even",
    "divisibleby", "in",        "gt",      "lt",     "ge",      "le",       NULL};

static bool known(const char *const *names, const char *name) {
    for (int i = 0; names[i]; i++)
        if (!strcmp(names[i], name)) return true;
    return false;
}

bool ct_filter_known(const char *name) {
    return known(known_filters, name);
}
bool ct_test_known(const char *name) {
    return known(known_tests, name);
}

/* The value of attribute path "a.b" of x (borrowed), or NULL. */
json_t *ct_attr_path(json_t *x, const char *path) {
    char part[128];
    while (x && *path) {
        size_t k = strcspn(path, ".");
        if (k >= sizeof part) return NULL;
        memcpy(part, path, k);
        part[k] = 0;
        char *end;
        long idx = strtol(part, &end, 10);
        if (json_is_object(x))
            x = json_object_get(x, part);
        else if (json_is_array(x) && !*end && k)
            x = json_array_get(x, (size_t)idx);
        else
            return NULL;
        path += k + (path[k] == '.');
    }
    return x;
}

bool ct_test(ct_ctx *c, const ct_node *n, const char *name, json_t *v, json_t **args, int n_args) {
    json_t *a0 = n_args > 0 ? args[0] : NULL;
    if (!strcmp(name, "defined")) return v != NULL;
    if (!strcmp(name, "undefined")) return v == NULL;
    if (!strcmp(name, "none")) return v && json_is_null(v);
    if (!strcmp(name, "string")) return v && json_is_string(v);
    if (!strcmp(name, "mapping")) return v && json_is_object(v);
    if (!strcmp(name, "iterable"))
        return v && (json_is_array(v) || json_is_object(v) || json_is_string(v));
    if (!strcmp(name, "sequence"))
        return v && (json_is_array(v) || json_is_object(v) || json_is_string(v));
    if (!strcmp(name, "number")) return v && json_is_number(v);
    if (!strcmp(name, "integer")) return v && json_is_integer(v);
    if (!strcmp(name, "float")) return v && json_is_real(v);
    if (!strcmp(name, "boolean")) return v && json_is_boolean(v);
    if (!strcmp(name, "true")) return v && json_is_true(v);
    if (!strcmp(name, "false")) return v && json_is_false(v);
    if (!strcmp(name, "callable")) return false;
    if (!strcmp(name, "equalto") || !strcmp(name, "eq") || !strcmp(name, "==") ||
        !strcmp(name, "sameas"))
        return ct_equal(v, a0);
    if (!strcmp(name, "ne") || !strcmp(name, "!=")) return !ct_equal(v, a0);
    if (!strcmp(name, "lower") || !strcmp(name, "upper")) {
        if (!v || !json_is_string(v)) return false;
        json_t *m = ct_case_map(v, name[0] == 'u');
        bool r = json_equal(m, v);
        json_decref(m);
        return r;
    }
    if (!strcmp(name, "odd") || !strcmp(name, "even") || !strcmp(name, "divisibleby")) {
        if (!v || !json_is_integer(v)) return false;
        long long x = json_integer_value(v);
        if (name[0] == 'o') return x % 2 != 0;
        if (name[0] == 'e') return x % 2 == 0;
        if (!a0 || !json_is_integer(a0) || !json_integer_value(a0)) return false;
        return x % json_integer_value(a0) == 0;
    }
    if (!strcmp(name, "in")) {
        if (!a0) return false;
        if (json_is_string(a0) && v && json_is_string(v))
            return strstr(json_string_value(a0), json_string_value(v));
        if (json_is_object(a0))
            return v && json_is_string(v) && json_object_get(a0, json_string_value(v));
        for (size_t i = 0; json_is_array(a0) && i < json_array_size(a0); i++)
            if (ct_equal(v, json_array_get(a0, i))) return true;
        return false;
    }
    if (!strcmp(name, "gt") || !strcmp(name, "lt") || !strcmp(name, "ge") || !strcmp(name, "le")) {
        bool ok;
        int r = ct_compare(v, a0, &ok);
        if (!ok) return false;
        return name[0] == 'g' ? (name[1] == 't' ? r > 0 : r >= 0)
                              : (name[1] == 't' ? r < 0 : r <= 0);
    }
    ct_fail(c, n->line, "unknown test '%s'", name);
    return false;
}

/* select / reject / selectattr / rejectattr */
static json_t *select_items(ct_ctx *c, const ct_node *n, json_t *v, json_t **args, int n_args,
                            bool keep, bool by_attr) {
    json_t *items = ct_truthy(v) ? ct_iter_list(v) : json_array(); /* Jinja: falsy → empty */
    if (!items) return ct_fail(c, n->line, "value is not iterable");
    json_t *out = json_array();
    int first = by_attr ? 1 : 0;
    const char *attr = by_attr && n_args > 0 && args[0] && json_is_string(args[0])
                           ? json_string_value(args[0])
                           : NULL;
    if (by_attr && !attr) {
        json_decref(items);
        json_decref(out);
        return ct_fail(c, n->line, "%s needs an attribute name", n->name);
    }
    const char *test = n_args > first && args[first] && json_is_string(args[first])
                           ? json_string_value(args[first])
                           : NULL;
    for (size_t i = 0; i < json_array_size(items) && !c->failed; i++) {
        json_t *x = json_array_get(items, i);
        json_t *subject = by_attr ? ct_attr_path(x, attr) : x;
        bool t = test ? ct_test(c, n, test, subject, args + first + 1, n_args - first - 1)
                      : ct_truthy(subject);
        if (t == keep) json_array_append(out, x);
    }
    json_decref(items);
    return out;
}

json_t *ct_filter(ct_ctx *c, const ct_node *n, const char *name, json_t *v, json_t **args,
                  int n_args) {
    json_t *a0 = n_args > 0 ? args[0] : NULL, *a1 = n_args > 1 ? args[1] : NULL, *seq;
    if (ct_filter_seq(c, n, name, v, args, n_args, &seq)) return seq;
    if (!strcmp(name, "tojson")) {
        json_t *ind = a0 ? json_incref(a0) : ct_kwarg(c, n, "indent");
        json_t *seps = ct_kwarg(c, n, "separators");
        json_t *sk = ct_kwarg(c, n, "sort_keys");
        char indent[64] = "", *ip = NULL;
        if (ind && json_is_integer(ind)) {
            long long k = json_integer_value(ind);
            if (k < 0) k = 0;
            if (k > 32) k = 32;
            memset(indent, ' ', (size_t)k);
            indent[k] = 0;
            ip = indent;
        } else if (ind && json_is_string(ind)) {
            snprintf(indent, sizeof indent, "%s", json_string_value(ind));
            ip = indent;
        }
        const char *isep = NULL, *ksep = NULL;
        if (seps && json_is_array(seps) && json_array_size(seps) == 2) {
            isep = json_string_value(json_array_get(seps, 0));
            ksep = json_string_value(json_array_get(seps, 1));
        }
        ct_buf b = {.limit = c->lim.max_output_bytes};
        ct_tojson(&b, v, ip, isep, ksep, ct_truthy(sk));
        json_decref(ind);
        json_decref(seps);
        json_decref(sk);
        if (b.over) {
            free(b.p);
            return ct_fail(c, n->line, "output larger than %zu bytes", c->lim.max_output_bytes);
        }
        return buf_string(&b);
    }
    if (!strcmp(name, "default") || !strcmp(name, "d")) {
        bool boolean = a1 ? ct_truthy(a1) : false;
        json_t *bk = ct_kwarg(c, n, "boolean");
        if (bk) boolean = ct_truthy(bk);
        json_decref(bk);
        if (!v || (boolean && !ct_truthy(v))) return a0 ? json_incref(a0) : ct_string("", 0);
        return json_incref(v);
    }
    if (!strcmp(name, "safe")) { /* Markup: a new string, so that a shared literal stays plain */
        json_t *m = str_of(v), *r = ct_string(json_string_value(m), json_string_length(m));
        json_decref(m);
        ct_ptrset_add(&c->markups, r);
        return r;
    }
    if (!strcmp(name, "length") || !strcmp(name, "count")) {
        if (v && json_is_string(v)) {
            json_t *items = ct_iter_list(v);
            json_t *r = json_integer((long long)json_array_size(items));
            json_decref(items);
            return r;
        }
        if (v && json_is_array(v)) return json_integer((long long)json_array_size(v));
        if (v && json_is_object(v)) return json_integer((long long)json_object_size(v));
        if (!v) return json_integer(0);
        return ct_fail(c, n->line, "object has no length");
    }
    if (!strcmp(name, "string")) return str_of(v);
    if (!strcmp(name, "list")) {
        json_t *r = ct_iter_list(v);
        if (!r) return ct_fail(c, n->line, "value is not iterable");
        if (r == v) {
            json_decref(r);
            r = json_copy(v);
        }
        return r;
    }
    if (!strcmp(name, "items")) {
        if (!v) return json_array();
        if (!json_is_object(v)) return ct_fail(c, n->line, "items needs a mapping");
        bool found;
        return ct_call_method(c, n, v, "items", NULL, 0, &found);
    }
    if (!strcmp(name, "first") || !strcmp(name, "last")) {
        json_t *items = ct_iter_list(v);
        if (!items) return ct_fail(c, n->line, "value is not iterable");
        size_t k = json_array_size(items);
        json_t *r = k ? json_incref(json_array_get(items, name[0] == 'f' ? 0 : k - 1)) : NULL;
        json_decref(items);
        return r;
    }
    if (!strcmp(name, "join")) {
        json_t *items = ct_iter_list(v);
        if (!items) return ct_fail(c, n->line, "value is not iterable");
        json_t *attr = ct_kwarg(c, n, "attribute");
        ct_buf b = {.limit = c->lim.max_output_bytes};
        for (size_t i = 0; i < json_array_size(items); i++) {
            if (i && a0) ct_str(&b, a0);
            json_t *x = json_array_get(items, i);
            ct_str(&b, attr && json_is_string(attr) ? ct_attr_path(x, json_string_value(attr)) : x);
        }
        json_decref(attr);
        json_decref(items);
        return buf_string(&b);
    }
    if (!strcmp(name, "dictsort")) { /* [key, value] pairs by key (case-insensitive) */
        if (!v || !json_is_object(v)) return ct_fail(c, n->line, "dictsort needs a mapping");
        json_t *by_value = ct_kwarg(c, n, "by");
        bool rev = a1 ? ct_truthy(a1) : false;
        json_t *rk = ct_kwarg(c, n, "reverse");
        if (rk) rev = ct_truthy(rk);
        json_decref(rk);
        bool cs = a0 ? ct_truthy(a0) : false;
        bool val =
            by_value && json_is_string(by_value) && !strcmp(json_string_value(by_value), "value");
        json_decref(by_value);
        bool found;
        json_t *pairs = ct_call_method(c, n, v, "items", NULL, 0, &found);
        size_t np = json_array_size(pairs);
        for (size_t i = 1; i < np; i++) /* insertion sort: small dicts, stable */
            for (size_t k = i; k > 0; k--) {
                json_t *x = json_array_get(json_array_get(pairs, k - 1), val);
                json_t *y = json_array_get(json_array_get(pairs, k), val);
                json_t *lx = x, *ly = y;
                if (!cs && json_is_string(x) && json_is_string(y)) {
                    lx = ct_case_map(x, 0);
                    ly = ct_case_map(y, 0);
                } else {
                    json_incref(lx);
                    json_incref(ly);
                }
                bool ok;
                int r = ct_compare(lx, ly, &ok);
                json_decref(lx);
                json_decref(ly);
                if (!ok) {
                    json_decref(pairs);
                    return ct_fail(c, n->line, "dictsort: '<' not supported between these keys");
                }
                if (!(rev ? r < 0 : r > 0)) break;
                json_t *tmp = json_incref(json_array_get(pairs, k - 1));
                json_array_set(pairs, k - 1, json_array_get(pairs, k));
                json_array_set_new(pairs, k, tmp);
            }
        return pairs;
    }
    if (!strcmp(name, "select") || !strcmp(name, "reject"))
        return select_items(c, n, v, args, n_args, name[0] == 's', false);
    if (!strcmp(name, "selectattr") || !strcmp(name, "rejectattr"))
        return select_items(c, n, v, args, n_args, name[0] == 's', true);
    if (!strcmp(name, "map")) {
        json_t *items = ct_truthy(v) ? ct_iter_list(v) : json_array();
        if (!items) return ct_fail(c, n->line, "value is not iterable");
        json_t *attr = ct_kwarg(c, n, "attribute"), *def = ct_kwarg(c, n, "default");
        json_t *out = json_array();
        for (size_t i = 0; i < json_array_size(items) && !c->failed; i++) {
            json_t *x = json_array_get(items, i), *r;
            if (attr && json_is_string(attr)) {
                r = json_incref(ct_attr_path(x, json_string_value(attr)));
                if (!r) r = json_incref(def);
            } else if (a0 && json_is_string(a0)) {
                r = ct_filter(c, n, json_string_value(a0), x, args + 1, n_args - 1);
            } else {
                r = ct_fail(c, n->line, "map needs a filter name or attribute=");
            }
            json_array_append_new(out, r ? r : json_null());
        }
        json_decref(attr);
        json_decref(def);
        json_decref(items);
        return out;
    }
    if (!v || !json_is_string(v)) {
        if (!strcmp(name, "int")) {
            if (v && json_is_integer(v)) return json_incref(v);
            if (v && json_is_real(v)) return json_integer((long long)json_real_value(v));
            if (v && json_is_boolean(v)) return json_integer(json_is_true(v));
            return a0 ? json_incref(a0) : json_integer(0);
        }
        if (!strcmp(name, "float")) {
            if (v && json_is_number(v)) return json_real(json_number_value(v));
            return json_real(0);
        }
        if (!strcmp(name, "abs") && v && json_is_integer(v))
            return json_integer(llabs(json_integer_value(v)));
        if (!strcmp(name, "abs") && v && json_is_real(v))
            return json_real(json_real_value(v) < 0 ? -json_real_value(v) : json_real_value(v));
        if (!strcmp(name, "reverse")) {
            json_t *items = ct_iter_list(v);
            if (!items) return ct_fail(c, n->line, "value is not iterable");
            json_t *out = json_array();
            for (size_t i = 0; i < json_array_size(items); i++) {
                json_array_append(out, json_array_get(items, json_array_size(items) - 1 - i));
            }
            json_decref(items);
            return out;
        }
        /* string filters below take str(v) */
        if (strcmp(name, "trim") && strcmp(name, "lower") && strcmp(name, "upper") &&
            strcmp(name, "capitalize") && strcmp(name, "title") && strcmp(name, "replace") &&
            strcmp(name, "indent"))
            return ct_fail(c, n->line, "unknown filter '%s'", name);
    }
    json_t *s = str_of(v), *r = NULL;
    if (!strcmp(name, "trim"))
        r = strip(s, a0 && json_is_string(a0) ? json_string_value(a0) : NULL, true, true);
    else if (!strcmp(name, "lower"))
        r = ct_case_map(s, 0);
    else if (!strcmp(name, "upper"))
        r = ct_case_map(s, 1);
    else if (!strcmp(name, "title"))
        r = ct_case_map(s, 2);
    else if (!strcmp(name, "capitalize"))
        r = ct_case_map(s, 3);
    else if (!strcmp(name, "reverse")) {
        json_t *items = ct_iter_list(s);
        ct_buf b = {0};
        for (size_t i = json_array_size(items); i > 0; i--)
            ct_str(&b, json_array_get(items, i - 1));
        json_decref(items);
        r = buf_string(&b);
    } else if (!strcmp(name, "int") || !strcmp(name, "float")) {
        char *end;
        const char *t = json_string_value(s);
        if (name[0] == 'i') {
            long long x = strtoll(t, &end, 10);
            r = (*t && !*end) ? json_integer(x) : a0 ? json_incref(a0) : json_integer(0);
        } else {
            double x = strtod(t, &end);
            r = json_real((*t && !*end) ? x : 0.0);
        }
    } else if (!strcmp(name, "replace")) {
        if (!a0 || !a1 || !json_is_string(a0) || !json_is_string(a1))
            r = ct_fail(c, n->line, "replace needs two strings");
        else
            r = replace(s, a0, a1,
                        n_args > 2 && json_is_integer(args[2]) ? json_integer_value(args[2]) : -1);
    } else if (!strcmp(name, "indent")) {
        long long w = a0 && json_is_integer(a0) ? json_integer_value(a0) : 4;
        json_t *fk = ct_kwarg(c, n, "first"), *bk = ct_kwarg(c, n, "blank");
        bool first = ct_truthy(fk) || (a1 && ct_truthy(a1)), blank = ct_truthy(bk);
        json_decref(fk);
        json_decref(bk);
        char pad[65];
        if (w < 0) w = 0;
        if (w > 64) w = 64;
        memset(pad, ' ', (size_t)w);
        pad[w] = 0;
        if (a0 && json_is_string(a0)) snprintf(pad, sizeof pad, "%s", json_string_value(a0));
        json_t *lines = split(s, json_string("\n"), -1);
        ct_buf b = {0};
        for (size_t i = 0; i < json_array_size(lines); i++) {
            json_t *ln = json_array_get(lines, i);
            if (i) ct_buf_adds(&b, "\n");
            if ((i > 0 || first) && (blank || json_string_length(ln))) ct_buf_adds(&b, pad);
            ct_str(&b, ln);
        }
        json_decref(lines);
        r = buf_string(&b);
    } else {
        r = ct_fail(c, n->line, "unknown filter '%s'", name);
    }
    json_decref(s);
    return r;
}

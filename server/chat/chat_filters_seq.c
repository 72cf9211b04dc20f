/* Chat template filters over sequences, as Jinja's: sort, unique, min, max (case-insensitive
 * unless case_sensitive=true, by attribute= paths), sum (attribute=, start=) and round (precision,
 * method common|ceil|floor, Python's round-half-even on the exact value). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "server/chat/chat_internal.h"

/* The sort key of x: attribute path(s) (comma-separated: a list of keys), strings lowered unless
 * case-sensitive. New reference; NULL for a missing attribute. */
static json_t *sort_key(json_t *x, const char *attr, bool cs) {
    json_t *k;
    if (attr && strchr(attr, ',')) {
        k = json_array();
        char part[256];
        for (const char *p = attr; *p;) {
            size_t len = strcspn(p, ",");
            snprintf(part, sizeof part, "%.*s", (int)(len < 255 ? len : 255), p);
            json_t *one = sort_key(x, part, cs);
            json_array_append_new(k, one ? one : json_null());
            p += len + (p[len] == ',');
        }
        return k;
    }
    json_t *v = attr ? ct_attr_path(x, attr) : x;
    if (!v) return NULL;
    if (!cs && json_is_string(v)) return ct_case_map(v, 0);
    return json_incref(v);
}

typedef struct keyed {
    json_t *key, *item;
} keyed;

/* Stable merge sort of a[0..n) by key; *bad set when two keys do not compare. */
static void merge_sort(keyed *a, keyed *tmp, size_t n, bool rev, bool *bad) {
    if (n < 2) return;
    size_t h = n / 2;
    merge_sort(a, tmp, h, rev, bad);
    merge_sort(a + h, tmp, n - h, rev, bad);
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n) {
        bool ok;
        int r = ct_compare(a[j].key, a[i].key, &ok);
        if (!ok) *bad = true;
        bool take_right = rev ? r > 0 : r < 0;
        tmp[k++] = take_right ? a[j++] : a[i++];
    }
    while (i < h) tmp[k++] = a[i++];
    while (j < n) tmp[k++] = a[j++];
    memcpy(a, tmp, n * sizeof *a);
}

static const char *str_kwarg(ct_ctx *c, const ct_node *n, const char *name, json_t **hold) {
    *hold = ct_kwarg(c, n, name);
    return *hold && json_is_string(*hold) ? json_string_value(*hold) : NULL;
}

static bool bool_kwarg(ct_ctx *c, const ct_node *n, const char *name, json_t *positional) {
    json_t *v = ct_kwarg(c, n, name);
    bool r = v ? ct_truthy(v) : positional ? ct_truthy(positional) : false;
    json_decref(v);
    return r;
}

/* sort(reverse=False, case_sensitive=False, attribute=None), min/max(case_sensitive, attribute),
 * unique(case_sensitive, attribute). */
static json_t *ordered(ct_ctx *c, const ct_node *n, const char *name, json_t *v, json_t **args,
                       int n_args) {
    json_t *items = ct_iter_list(v);
    if (!items) return ct_fail(c, n->line, "%s: value is not iterable", name);
    bool is_sort = !strcmp(name, "sort"), is_unique = !strcmp(name, "unique");
    json_t *hold;
    const char *attr = str_kwarg(c, n, "attribute", &hold);
    if (!attr && is_sort && n_args > 2 && args[2] && json_is_string(args[2]))
        attr = json_string_value(args[2]);
    bool rev = is_sort && bool_kwarg(c, n, "reverse", n_args > 0 ? args[0] : NULL);
    bool cs = bool_kwarg(c, n, "case_sensitive",
                         is_sort ? (n_args > 1 ? args[1] : NULL) : (n_args > 0 ? args[0] : NULL));
    size_t len = json_array_size(items);
    keyed *a = kv_calloc(len ? len : 1, sizeof *a);
    bool missing = false;
    for (size_t i = 0; i < len; i++) {
        a[i].item = json_array_get(items, i);
        a[i].key = sort_key(a[i].item, attr, cs);
        if (!a[i].key) missing = true;
    }
    json_t *out = NULL;
    if (missing && !is_unique) {
        ct_fail(c, n->line, "%s: an item has no attribute '%s'", name, attr ? attr : "");
    } else if (is_unique) {
        out = json_array();
        for (size_t i = 0; i < len; i++) {
            bool dup = false;
            for (size_t k = 0; k < i && !dup; k++) dup = ct_equal(a[i].key, a[k].key);
            if (!dup) json_array_append(out, a[i].item);
        }
    } else if (is_sort) {
        keyed *tmp = kv_calloc(len ? len : 1, sizeof *tmp);
        bool bad = false;
        merge_sort(a, tmp, len, rev, &bad);
        free(tmp);
        if (bad) {
            ct_fail(c, n->line, "sort: '<' not supported between these values");
        } else {
            out = json_array();
            for (size_t i = 0; i < len; i++) json_array_append(out, a[i].item);
        }
    } else if (len) { /* min / max: the first of the smallest / largest */
        size_t best = 0;
        bool ok = true;
        for (size_t i = 1; i < len && ok; i++) {
            int r = ct_compare(a[i].key, a[best].key, &ok);
            if (name[1] == 'i' ? r < 0 : r > 0) best = i;
        }
        if (!ok)
            ct_fail(c, n->line, "%s: values do not compare", name);
        else
            out = json_incref(a[best].item);
    } /* min / max of nothing: undefined */
    for (size_t i = 0; i < len; i++) json_decref(a[i].key);
    free(a);
    json_decref(hold);
    json_decref(items);
    return out;
}

/* sum(attribute=None, start=0): numbers (an int while all are ints) or lists concatenated. */
static json_t *sum(ct_ctx *c, const ct_node *n, json_t *v, json_t **args, int n_args) {
    json_t *items = ct_iter_list(v);
    if (!items) return ct_fail(c, n->line, "sum: value is not iterable");
    json_t *hold, *start = ct_kwarg(c, n, "start");
    const char *attr = str_kwarg(c, n, "attribute", &hold);
    if (!attr && n_args > 0 && args[0] && json_is_string(args[0]))
        attr = json_string_value(args[0]);
    if (!start && n_args > 1) start = json_incref(args[1]);
    json_t *acc = start ? start : json_integer(0);
    for (size_t i = 0; i < json_array_size(items) && !c->failed; i++) {
        json_t *x = json_array_get(items, i);
        if (attr) x = ct_attr_path(x, attr);
        json_t *next = NULL;
        if (x && json_is_array(acc) && json_is_array(x)) {
            next = json_copy(acc);
            json_array_extend(next, x);
        } else if (x && json_is_integer(acc) && (json_is_integer(x) || json_is_boolean(x))) {
            long long y = json_is_integer(x) ? json_integer_value(x) : json_is_true(x);
            next = json_integer(json_integer_value(acc) + y);
        } else if (x && json_is_number(acc) && (json_is_number(x) || json_is_boolean(x))) {
            double y = json_is_number(x) ? json_number_value(x) : json_is_true(x);
            next = json_real(json_number_value(acc) + y);
        } else {
            ct_fail(c, n->line, "sum: unsupported operand types");
        }
        json_decref(acc);
        acc = next;
    }
    json_decref(hold);
    json_decref(items);
    if (c->failed) {
        json_decref(acc);
        return NULL;
    }
    return acc;
}

/* round(precision=0, method='common'): common is Python's round (an int stays an int), ceil and
 * floor give floats. */
static json_t *round_filter(ct_ctx *c, const ct_node *n, json_t *v, json_t **args, int n_args) {
    json_t *pk = ct_kwarg(c, n, "precision"), *hold;
    const char *method = str_kwarg(c, n, "method", &hold);
    if (!method && n_args > 1 && args[1] && json_is_string(args[1]))
        method = json_string_value(args[1]);
    if (!method) method = "common";
    json_t *p = pk ? pk : n_args > 0 ? args[0] : NULL;
    long long prec = p && json_is_integer(p) ? json_integer_value(p) : 0;
    json_decref(pk);
    json_t *r = NULL;
    if (!v || !(json_is_number(v) || json_is_boolean(v))) {
        r = ct_fail(c, n->line, "round needs a number");
    } else if (strcmp(method, "common") && strcmp(method, "ceil") && strcmp(method, "floor")) {
        r = ct_fail(c, n->line, "round: method must be common, ceil or floor");
    } else if (prec < -308 || prec > 308) {
        r = ct_fail(c, n->line, "round: precision out of range");
    } else {
        double x = json_is_number(v) ? json_number_value(v) : json_is_true(v);
        double scale = pow(10.0, (double)prec);
        if (!strcmp(method, "ceil")) {
            r = json_real(ceil(x * scale) / scale);
        } else if (!strcmp(method, "floor")) {
            r = json_real(floor(x * scale) / scale);
        } else if (!json_is_real(v)) {
            r = prec >= 0 ? json_incref(v) : json_integer((long long)(rint(x * scale) / scale));
        } else if (prec >= 0) { /* printf rounds the exact binary value half-to-even, as Python */
            char buf[400];
            snprintf(buf, sizeof buf, "%.*f", (int)(prec > 300 ? 300 : prec), x);
            r = json_real(strtod(buf, NULL));
        } else {
            r = json_real(rint(x * scale) / scale);
        }
    }
    json_decref(hold);
    return r;
}

bool ct_filter_seq(ct_ctx *c, const ct_node *n, const char *name, json_t *v, json_t **args,
                   int n_args, json_t **result) {
    if (!strcmp(name, "sort") || !strcmp(name, "unique") || !strcmp(name, "min") ||
        !strcmp(name, "max"))
        *result = ordered(c, n, name, v, args, n_args);
    else if (!strcmp(name, "sum"))
        *result = sum(c, n, v, args, n_args);
    else if (!strcmp(name, "round"))
        *result = round_filter(c, n, v, args, n_args);
    else
        return false;
    return true;
}

/* Chat template binary operators over values: arithmetic, comparisons, membership, '~' and '+'
 * concatenation (Markup-aware), Python's '%' string formatting. Pure functions of their operands.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "server/chat/chat_internal.h"

/* Python's "fmt" % args for %s %r %d %i %f (with a precision) and %%. */
static json_t *percent_format(ct_ctx *c, const ct_node *n, json_t *fmt, json_t *b) {
    const char *f = json_string_value(fmt);
    size_t len = json_string_length(fmt), k = 0;
    size_t n_args = b && json_is_array(b) ? json_array_size(b) : 1;
    ct_buf out = {.limit = c->lim.max_output_bytes, .tuples = &c->tuples};
    for (size_t i = 0; i < len; i++) {
        if (f[i] != '%') {
            ct_buf_add(&out, f + i, 1);
            continue;
        }
        int prec = -1;
        if (i + 2 < len && f[i + 1] == '.' && f[i + 2] >= '0' && f[i + 2] <= '9') {
            prec = f[i + 2] - '0';
            i += 2;
        }
        char conv = i + 1 < len ? f[++i] : 0;
        if (conv == '%') {
            ct_buf_adds(&out, "%");
            continue;
        }
        if (k >= n_args || !strchr("srdif", conv)) {
            free(out.p);
            return ct_fail(c, n->line, "bad %% format or not enough arguments");
        }
        json_t *x = b && json_is_array(b) ? json_array_get(b, k) : b;
        k++;
        char tmp[64];
        if (conv == 's')
            ct_str(&out, x);
        else if (conv == 'r')
            ct_repr(&out, x);
        else if (x && (json_is_number(x) || json_is_boolean(x))) {
            double v = json_is_number(x) ? json_number_value(x) : json_is_true(x);
            if (conv == 'f')
                snprintf(tmp, sizeof tmp, "%.*f", prec < 0 ? 6 : prec, v);
            else
                snprintf(tmp, sizeof tmp, "%lld", (long long)v);
            ct_buf_adds(&out, tmp);
        } else {
            free(out.p);
            return ct_fail(c, n->line, "%%%c needs a number", conv);
        }
    }
    if (k < n_args && b && json_is_array(b)) {
        free(out.p);
        return ct_fail(c, n->line, "not all arguments converted during string formatting");
    }
    json_t *r = ct_string(out.p ? out.p : "", out.n);
    free(out.p);
    return r;
}

json_t *ct_arith(ct_ctx *c, const ct_node *n, const char *op, json_t *a, json_t *b) {
    if (!strcmp(op, "~")) {
        ct_buf s = {.tuples = &c->tuples};
        ct_str(&s, a);
        ct_str(&s, b);
        json_t *r = ct_string(s.p ? s.p : "", s.n);
        free(s.p);
        return r;
    }
    if (!strcmp(op, "==")) return json_boolean(ct_equal(a, b));
    if (!strcmp(op, "!=")) return json_boolean(!ct_equal(a, b));
    if (!strcmp(op, "in") || !strcmp(op, "notin")) {
        bool neg = op[0] == 'n', r = false;
        if (b && json_is_string(b) && a && json_is_string(a)) {
            r = json_string_length(a) == 0 ||
                strstr(json_string_value(b), json_string_value(a)) != NULL;
        } else if (b && json_is_object(b)) {
            r = a && json_is_string(a) && json_object_get(b, json_string_value(a));
        } else if (b && json_is_array(b)) {
            for (size_t i = 0; i < json_array_size(b) && !r; i++)
                r = ct_equal(a, json_array_get(b, i));
        } else if (b && !json_is_null(b)) {
            return ct_fail(c, n->line, "'in' needs a string, list or mapping on its right");
        } else if (b) {
            return ct_fail(c, n->line, "argument of type 'NoneType' is not iterable");
        }
        return json_boolean(r != neg);
    }
    if (op[0] == '<' || op[0] == '>') {
        bool ok;
        int r = ct_compare(a, b, &ok);
        if (!ok) return ct_fail(c, n->line, "'%s' not supported between these values", op);
        bool res = op[0] == '<' ? (op[1] ? r <= 0 : r < 0) : (op[1] ? r >= 0 : r > 0);
        return json_boolean(res);
    }
    if (!strcmp(op, "+") && a && b && json_is_string(a) && json_is_string(b)) {
        bool ma = ct_ptrset_has(&c->markups, a), mb = ct_ptrset_has(&c->markups, b);
        if (!ma && !mb) return ct_arith(c, n, "~", a, b);
        /* markupsafe: Markup + str escapes the str, and the sum is Markup */
        ct_buf s = {.limit = c->lim.max_output_bytes};
        for (int side = 0; side < 2; side++) {
            json_t *x = side ? b : a;
            const char *p = json_string_value(x);
            size_t len = json_string_length(x);
            if (side ? mb : ma) {
                ct_buf_add(&s, p, len);
                continue;
            }
            for (size_t i = 0; i < len; i++) {
                const char *e = p[i] == '&'    ? "&amp;"
                                : p[i] == '<'  ? "&lt;"
                                : p[i] == '>'  ? "&gt;"
                                : p[i] == '\'' ? "&#39;"
                                : p[i] == '"'  ? "&#34;"
                                               : NULL;
                if (e)
                    ct_buf_adds(&s, e);
                else
                    ct_buf_add(&s, p + i, 1);
            }
        }
        if (s.over) {
            free(s.p);
            return ct_fail(c, n->line, "string too long");
        }
        json_t *r = ct_string(s.p ? s.p : "", s.n);
        free(s.p);
        ct_ptrset_add(&c->markups, r);
        return r;
    }
    if (!strcmp(op, "+") && a && b && json_is_array(a) && json_is_array(b)) {
        json_t *r = json_copy(a);
        json_array_extend(r, b);
        return r;
    }
    if (!strcmp(op, "*") && a && b && json_is_string(a) && json_is_integer(b)) {
        ct_buf s = {.limit = c->lim.max_output_bytes};
        for (long long i = 0; i < json_integer_value(b) && !s.over; i++) ct_str(&s, a);
        if (s.over) {
            free(s.p);
            return ct_fail(c, n->line, "string too long");
        }
        json_t *r = ct_string(s.p ? s.p : "", s.n);
        free(s.p);
        return r;
    }
    if (!strcmp(op, "%") && a && json_is_string(a)) return percent_format(c, n, a, b);
    bool num = a && b && (json_is_number(a) || json_is_boolean(a)) &&
               (json_is_number(b) || json_is_boolean(b));
    if (!num) return ct_fail(c, n->line, "unsupported operand types for '%s'", op);
    bool ints = !json_is_real(a) && !json_is_real(b);
    long long x = json_is_number(a) ? (long long)json_integer_value(a) : json_is_true(a);
    long long y = json_is_number(b) ? (long long)json_integer_value(b) : json_is_true(b);
    double fx = json_is_number(a) ? json_number_value(a) : json_is_true(a);
    double fy = json_is_number(b) ? json_number_value(b) : json_is_true(b);
    switch (op[0]) {
    case '+':
        return ints ? json_integer(x + y) : json_real(fx + fy);
    case '-':
        return ints ? json_integer(x - y) : json_real(fx - fy);
    case '*':
        if (op[1])
            return ints && y >= 0 ? json_integer((long long)llround(pow(fx, fy)))
                                  : json_real(pow(fx, fy));
        return ints ? json_integer(x * y) : json_real(fx * fy);
    case '/':
        if (fy == 0) return ct_fail(c, n->line, "division by zero");
        if (op[1]) {
            if (ints) {
                long long q = x / y;
                if ((x % y != 0) && ((x < 0) != (y < 0))) q--;
                return json_integer(q);
            }
            return json_real(floor(fx / fy));
        }
        return json_real(fx / fy);
    case '%':
        if (fy == 0) return ct_fail(c, n->line, "modulo by zero");
        if (ints) {
            long long r = x % y;
            if (r != 0 && ((r < 0) != (y < 0))) r += y;
            return json_integer(r);
        }
        return json_real(fx - fy * floor(fx / fy));
    }
    return ct_fail(c, n->line, "unknown operator '%s'", op);
}

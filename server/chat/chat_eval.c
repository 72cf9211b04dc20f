/* Chat template evaluator: walks the AST over jansson values. Sandboxed: no I/O, bounded output,
 * loop iterations and macro depth; values are never mutated except namespace() objects. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "server/chat/chat_internal.h"

#define CT_MACRO_KEY "\001macro"

void *ct_fail(ct_ctx *c, int line, const char *fmt, ...) {
    if (c->failed) return NULL;
    c->failed = true;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (line > 0)
        kv_error_set(c->err, "line %d: %s", line, msg);
    else
        kv_error_set(c->err, "%s", msg);
    return NULL;
}

chat_template_limits chat_template_default_limits(void) {
    return (chat_template_limits){16u << 20, 1000000, 64, 0};
}

/* Frames below `barrier` other than frame 0 are invisible (a macro body sees only the globals). */
static int frame_barrier(ct_ctx *c) {
    for (int i = c->n_frames - 1; i > 0; i--)
        if (json_object_get(c->frames[i], "\001barrier")) return i;
    return 1;
}

/* Nesting depth of v, counting up to limit (values a template builds stay shallow enough that
 * printing and freeing them, both recursive, cannot exhaust the stack). */
static int value_depth(json_t *v, int limit) {
    if (!v || limit <= 0 || !(json_is_array(v) || json_is_object(v))) return 0;
    int d = 0;
    if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v) && d < limit; i++) {
            int k = value_depth(json_array_get(v, i), limit - 1);
            if (k > d) d = k;
        }
    } else {
        const char *key;
        json_t *x;
        json_object_foreach(v, key, x) {
            int k = value_depth(x, limit - 1);
            if (k > d) d = k;
            if (d >= limit) break;
        }
    }
    return d + 1;
}

#define CT_MAX_VALUE_DEPTH 512

json_t *ct_check_nested(ct_ctx *c, int line, json_t *v) {
    if (v && value_depth(v, CT_MAX_VALUE_DEPTH) >= CT_MAX_VALUE_DEPTH) {
        json_decref(v);
        return ct_fail(c, line, "value nested more than %d deep", CT_MAX_VALUE_DEPTH);
    }
    return v;
}

static json_t *lookup(ct_ctx *c, const char *name) {
    int barrier = frame_barrier(c);
    for (int i = c->n_frames - 1; i >= barrier; i--) {
        json_t *v = json_object_get(c->frames[i], name);
        if (v) return v;
    }
    return json_object_get(c->frames[0], name);
}

static bool push_frame(ct_ctx *c, int line) {
    if (c->n_frames == (int)(sizeof c->frames / sizeof *c->frames)) {
        ct_fail(c, line, "scopes nested too deeply");
        return false;
    }
    c->frames[c->n_frames++] = json_object();
    return true;
}

static void pop_frame(ct_ctx *c) {
    json_decref(c->frames[--c->n_frames]);
}

static void exec_list(ct_ctx *c, const ct_list *l);
static json_t *call_loop(ct_ctx *c, const ct_node *call, json_t *loop, json_t **args, int n_args);
static json_t *call_caller(ct_ctx *c, const ct_node *call, json_t *caller, json_t **args,
                           int n_args);
#define CT_RECUR_KEY  "\001recursive"
#define CT_CALLER_KEY "\001caller"

static json_t *slice(ct_ctx *c, const ct_node *n, json_t *v) {
    json_t *items =
        json_is_string(v) ? ct_iter_list(v) : (json_is_array(v) ? json_incref(v) : NULL);
    if (!items) return ct_fail(c, n->line, "cannot slice this value");
    long long len = (long long)json_array_size(items), idx[3] = {0, 0, 1};
    bool given[3] = {false, false, false};
    const ct_node *parts[3] = {n->b, n->c, n->d};
    for (int i = 0; i < 3; i++) {
        if (!parts[i]) continue;
        json_t *x = ct_eval(c, parts[i]);
        if (x && json_is_integer(x)) {
            idx[i] = json_integer_value(x);
            given[i] = true;
        } else if (x && !json_is_null(x)) {
            json_decref(x);
            json_decref(items);
            return ct_fail(c, n->line, "slice indices must be integers");
        }
        json_decref(x);
    }
    long long step = idx[2];
    if (step == 0) {
        json_decref(items);
        return ct_fail(c, n->line, "slice step cannot be zero");
    }
    long long start, stop;
    if (step > 0) {
        start = given[0] ? idx[0] : 0;
        stop = given[1] ? idx[1] : len;
        if (start < 0) start = start + len < 0 ? 0 : start + len;
        if (stop < 0) stop = stop + len < 0 ? 0 : stop + len;
        if (start > len) start = len;
        if (stop > len) stop = len;
    } else {
        start = given[0] ? idx[0] : len - 1;
        stop = given[1] ? idx[1] : -len - 1;
        if (start < 0) start += len;
        if (given[1] && stop < 0)
            stop += len;
        else if (!given[1])
            stop = -1;
        if (start >= len) start = len - 1;
        if (stop < -1) stop = -1;
    }
    json_t *out = json_array();
    for (long long i = start; step > 0 ? i < stop : i > stop; i += step)
        json_array_append(out, json_array_get(items, (size_t)i));
    json_decref(items);
    if (json_is_string(v)) {
        ct_buf b = {0};
        for (size_t i = 0; i < json_array_size(out); i++) ct_str(&b, json_array_get(out, i));
        json_decref(out);
        json_t *s = ct_string(b.p ? b.p : "", b.n);
        free(b.p);
        return s;
    }
    return out;
}

static json_t *item(ct_ctx *c, const ct_node *n, json_t *v, json_t *key) {
    (void)c;
    (void)n;
    if (!v || !key) return NULL;
    if (json_is_object(v) && json_is_string(key))
        return json_incref(json_object_get(v, json_string_value(key)));
    if (json_is_object(v) && json_is_integer(key)) { /* a dict literal's int key */
        char k[32];
        ct_int_key(k, sizeof k, (long long)json_integer_value(key));
        return json_incref(json_object_get(v, k));
    }
    if ((json_is_array(v) || json_is_string(v)) && json_is_integer(key)) {
        json_t *items = json_is_array(v) ? json_incref(v) : ct_iter_list(v);
        long long i = json_integer_value(key), len = (long long)json_array_size(items);
        if (i < 0) i += len;
        json_t *r = i >= 0 && i < len ? json_incref(json_array_get(items, (size_t)i)) : NULL;
        json_decref(items);
        return r;
    }
    return NULL;
}

/* Calls macro m; caller (a {% call %} block's, or NULL) is its `caller`. */
static json_t *call_macro(ct_ctx *c, const ct_node *call, const ct_node *m, json_t **args,
                          int n_args, json_t *caller) {
    if (c->depth >= c->lim.max_depth)
        return ct_fail(c, call->line, "macro calls nested too deeply (limit %d)", c->lim.max_depth);
    if (!push_frame(c, call->line)) return NULL;
    json_t *f = c->frames[c->n_frames - 1];
    json_object_set_new(f, "\001barrier", json_true());
    if (caller) json_object_set(f, "caller", caller);
    for (int i = 0; i < m->n_names; i++) {
        json_t *v = i < n_args ? json_incref(args[i]) : ct_kwarg(c, call, m->names[i]);
        if (!v && m->args.v[i]) v = ct_eval(c, m->args.v[i]);
        if (v) json_object_set_new(f, m->names[i], v);
    }
    ct_buf saved = c->out;
    c->out = (ct_buf){.limit = c->lim.max_output_bytes, .tuples = &c->tuples};
    c->depth++;
    exec_list(c, &m->body);
    c->depth--;
    c->brk = 0;
    ct_buf mine = c->out;
    c->out = saved;
    pop_frame(c);
    json_t *r = c->failed ? NULL : ct_string(mine.p ? mine.p : "", mine.n);
    if (mine.over) ct_fail(c, call->line, "output larger than %zu bytes", c->lim.max_output_bytes);
    free(mine.p);
    return r;
}

json_t *ct_kwarg(ct_ctx *c, const ct_node *n, const char *name) {
    for (int i = 0; i < n->kw.n; i++)
        if (!strcmp(n->kw_names[i], name)) return ct_eval(c, n->kw.v[i]);
    return NULL;
}

static int eval_args(ct_ctx *c, const ct_node *n, json_t **args) {
    int k = 0;
    for (int i = 0; i < n->args.n && i < 16; i++) {
        args[k++] = ct_eval(c, n->args.v[i]);
        if (c->failed) break;
    }
    return k;
}

static void free_args(json_t **args, int n) {
    for (int i = 0; i < n; i++) json_decref(args[i]);
}

static json_t *eval_call(ct_ctx *c, const ct_node *n) {
    json_t *args[16];
    const ct_node *f = n->a;
    if (n->args.n > 16) return ct_fail(c, n->line, "too many arguments");
    if (f->kind == CT_ATTR) {
        json_t *obj = ct_eval(c, f->a);
        if (c->failed) return NULL;
        json_t *m = obj && json_is_object(obj) ? json_object_get(obj, f->name) : NULL;
        json_t *r = NULL;
        int na = eval_args(c, n, args);
        if (m && json_is_object(m) && json_object_get(m, CT_MACRO_KEY)) {
            r = call_macro(c, n,
                           c->macro_nodes[json_integer_value(json_object_get(m, CT_MACRO_KEY))],
                           args, na, NULL);
        } else if (!c->failed) {
            bool found = false;
            if (obj) r = ct_call_method(c, n, obj, f->name, args, na, &found);
            if (!found && !c->failed) ct_fail(c, n->line, "'%s' is not callable", f->name);
        }
        free_args(args, na);
        json_decref(obj);
        return r;
    }
    if (f->kind == CT_NAME) {
        json_t *v = lookup(c, f->name);
        int na = eval_args(c, n, args);
        json_t *r = NULL;
        if (c->failed) {
        } else if (v && json_is_object(v) && json_object_get(v, CT_MACRO_KEY)) {
            r = call_macro(c, n,
                           c->macro_nodes[json_integer_value(json_object_get(v, CT_MACRO_KEY))],
                           args, na, NULL);
        } else if (v && json_is_object(v) && json_object_get(v, CT_RECUR_KEY)) {
            r = call_loop(c, n, v, args, na);
        } else if (v && json_is_object(v) && json_object_get(v, CT_CALLER_KEY)) {
            r = call_caller(c, n, v, args, na);
        } else if (!v) {
            bool found = false;
            r = ct_call_method(c, n, NULL, f->name, args, na, &found);
            if (!found && !c->failed) ct_fail(c, n->line, "'%s' is undefined", f->name);
        } else {
            ct_fail(c, n->line, "'%s' is not callable", f->name);
        }
        free_args(args, na);
        return r;
    }
    return ct_fail(c, n->line, "this expression is not callable");
}

static json_t *eval_node(ct_ctx *c, const ct_node *n);

/* Like Jinja: an attribute or item of an undefined value is an error (of None it is undefined). */
static json_t *undefined_base(ct_ctx *c, const ct_node *n) {
    const ct_node *b = n->a;
    if (b->kind == CT_NAME) return ct_fail(c, n->line, "'%s' is undefined", b->name);
    if (b->kind == CT_ATTR) return ct_fail(c, n->line, "no attribute '%s'", b->name);
    return ct_fail(c, n->line, "subscript of an undefined value");
}

/* Never a value once an error is set, so callers need not free one on their error paths. */
json_t *ct_eval(ct_ctx *c, const ct_node *n) {
    if (c->failed) return NULL;
    json_t *r = eval_node(c, n);
    if (c->failed) {
        json_decref(r);
        return NULL;
    }
    return r;
}

static json_t *eval_node(ct_ctx *c, const ct_node *n) {
    switch (n->kind) {
    case CT_LIT:
        return json_incref(n->lit);
    case CT_NAME:
        return json_incref(lookup(c, n->name));
    case CT_LIST:
    case CT_TUPLE: {
        json_t *a = json_array();
        for (int i = 0; i < n->args.n; i++) {
            json_t *x = ct_check_nested(c, n->line, ct_eval(c, n->args.v[i]));
            json_array_append_new(a, x ? x : json_null());
        }
        if (n->kind == CT_TUPLE) ct_ptrset_add(&c->tuples, a);
        return a;
    }
    case CT_DICT: {
        json_t *d = json_object();
        for (int i = 0; i + 1 < n->args.n; i += 2) {
            json_t *k = ct_eval(c, n->args.v[i]);
            json_t *v = ct_check_nested(c, n->line, ct_eval(c, n->args.v[i + 1]));
            if (k && json_is_integer(k)) {
                char key[32];
                ct_int_key(key, sizeof key, (long long)json_integer_value(k));
                json_object_set_new(d, key, v ? v : json_null());
            } else if (k && json_is_string(k))
                json_object_set_new(d, json_string_value(k), v ? v : json_null());
            else {
                json_decref(v);
                if (!c->failed) ct_fail(c, n->line, "dict keys must be strings");
            }
            json_decref(k);
        }
        return d;
    }
    case CT_ATTR: {
        json_t *v = ct_eval(c, n->a);
        if (!v && !c->failed) return undefined_base(c, n);
        json_t *r = v && json_is_object(v) ? json_incref(json_object_get(v, n->name)) : NULL;
        json_decref(v);
        return r;
    }
    case CT_ITEM: {
        json_t *v = ct_eval(c, n->a);
        if (!v && !c->failed) return undefined_base(c, n);
        json_t *k = ct_eval(c, n->b);
        json_t *r = item(c, n, v, k);
        json_decref(v);
        json_decref(k);
        return r;
    }
    case CT_SLICE: {
        json_t *v = ct_eval(c, n->a);
        json_t *r = v ? slice(c, n, v) : NULL;
        json_decref(v);
        return r;
    }
    case CT_CALL:
        return eval_call(c, n);
    case CT_FILTER:
    case CT_TEST: {
        json_t *v = ct_eval(c, n->a), *args[16];
        if (n->args.n > 16) return ct_fail(c, n->line, "too many arguments");
        int na = eval_args(c, n, args);
        json_t *r = NULL;
        if (!c->failed) {
            if (n->kind == CT_FILTER)
                r = ct_filter(c, n, n->name, v, args, na);
            else {
                bool t = ct_test(c, n, n->name, v, args, na);
                r = c->failed ? NULL : json_boolean(t != n->negate);
            }
        }
        free_args(args, na);
        json_decref(v);
        return r;
    }
    case CT_NEG:
    case CT_POS: {
        json_t *v = ct_eval(c, n->a), *r = NULL;
        if (v && json_is_integer(v))
            r = json_integer(n->kind == CT_NEG ? -json_integer_value(v) : json_integer_value(v));
        else if (v && json_is_real(v))
            r = json_real(n->kind == CT_NEG ? -json_real_value(v) : json_real_value(v));
        else if (!c->failed)
            ct_fail(c, n->line, "bad operand type for unary -");
        json_decref(v);
        return r;
    }
    case CT_NOT: {
        json_t *v = ct_eval(c, n->a);
        bool t = ct_truthy(v);
        json_decref(v);
        return c->failed ? NULL : json_boolean(!t);
    }
    case CT_AND:
    case CT_OR: {
        json_t *a = ct_eval(c, n->a);
        if (c->failed) return NULL;
        if (ct_truthy(a) == (n->kind == CT_OR)) return a;
        json_decref(a);
        return ct_eval(c, n->b);
    }
    case CT_BINOP: {
        json_t *a = ct_eval(c, n->a), *b = ct_eval(c, n->b), *r = NULL;
        if (!c->failed) r = ct_arith(c, n, n->name, a, b);
        json_decref(a);
        json_decref(b);
        return r;
    }
    case CT_COND: {
        json_t *t = ct_eval(c, n->a);
        bool yes = ct_truthy(t);
        json_decref(t);
        if (c->failed) return NULL;
        return yes ? ct_eval(c, n->b) : n->c ? ct_eval(c, n->c) : NULL;
    }
    default:
        return ct_fail(c, n->line, "not an expression");
    }
}

/* Binds loop targets: one name takes the item, several unpack it. */
static bool bind_targets(ct_ctx *c, const ct_node *n, json_t *f, json_t *x) {
    if (n->n_names == 1) {
        json_object_set(f, n->names[0], x ? x : json_null());
        return true;
    }
    json_t *items = x ? ct_iter_list(x) : NULL;
    if (!items || (int)json_array_size(items) != n->n_names) {
        json_decref(items);
        ct_fail(c, n->line, "cannot unpack into %d names", n->n_names);
        return false;
    }
    for (int i = 0; i < n->n_names; i++)
        json_object_set(f, n->names[i], json_array_get(items, (size_t)i));
    json_decref(items);
    return true;
}

/* The index of node n (a macro, recursive loop or call block) in the macro table, adding it the
 * first time; -1 with the error set when the table is full. */
static int register_node(ct_ctx *c, const ct_node *n) {
    for (int i = 0; i < c->n_macros; i++)
        if (c->macro_nodes[i] == n) return i;
    if (c->n_macros == (int)(sizeof c->macro_nodes / sizeof *c->macro_nodes)) {
        ct_fail(c, n->line, "too many macros, recursive loops and call blocks");
        return -1;
    }
    c->macro_nodes[c->n_macros] = n;
    return c->n_macros++;
}

/* Runs loop n over iter (the body once per kept item, else the else branch) at depth (1 for the
 * loop itself, +1 per loop(...) call of a recursive loop). */
static void run_for(ct_ctx *c, const ct_node *n, json_t *iter, int depth) {
    json_t *items = iter && json_is_null(iter) ? NULL : ct_iter_list(iter);
    if (!items) {
        if (iter)
            ct_fail(c, n->line, "value is not iterable");
        else
            items = json_array();
        if (c->failed) return;
    }
    if (!push_frame(c, n->line)) {
        json_decref(items);
        return;
    }
    json_t *f = c->frames[c->n_frames - 1];
    if (n->b) { /* for x in y if cond: filter first, loop.* counts what is kept */
        json_t *kept = json_array();
        for (size_t i = 0; i < json_array_size(items) && !c->failed; i++) {
            if (!bind_targets(c, n, f, json_array_get(items, i))) break;
            json_t *t = ct_eval(c, n->b);
            if (ct_truthy(t)) json_array_append(kept, json_array_get(items, i));
            json_decref(t);
        }
        json_decref(items);
        items = kept;
    }
    int recur_id = n->recursive ? register_node(c, n) : -1;
    size_t len = json_array_size(items);
    for (size_t i = 0; i < len && !c->failed; i++) {
        if (++c->iterations > c->lim.max_iterations) {
            ct_fail(c, n->line, "more than %ld loop iterations", c->lim.max_iterations);
            break;
        }
        json_t *x = json_array_get(items, i);
        if (!bind_targets(c, n, f, x)) break;
        json_t *loop = json_object();
        json_object_set_new(loop, "index", json_integer((long long)i + 1));
        json_object_set_new(loop, "index0", json_integer((long long)i));
        json_object_set_new(loop, "revindex", json_integer((long long)(len - i)));
        json_object_set_new(loop, "revindex0", json_integer((long long)(len - i - 1)));
        json_object_set_new(loop, "first", json_boolean(i == 0));
        json_object_set_new(loop, "last", json_boolean(i + 1 == len));
        json_object_set_new(loop, "length", json_integer((long long)len));
        json_object_set_new(loop, "depth", json_integer(depth));
        json_object_set_new(loop, "depth0", json_integer(depth - 1));
        if (i > 0) json_object_set(loop, "previtem", json_array_get(items, i - 1));
        if (i + 1 < len) json_object_set(loop, "nextitem", json_array_get(items, i + 1));
        json_object_set_new(loop, CT_LOOP_KEY, json_true());
        if (recur_id >= 0) {
            json_object_set_new(loop, CT_RECUR_KEY, json_integer(recur_id));
            json_object_set_new(loop, "\001depth", json_integer(depth));
        }
        json_object_set_new(f, "loop", loop);
        exec_list(c, &n->body);
        if (c->brk == 1) {
            c->brk = 0;
            break;
        }
        c->brk = 0;
    }
    pop_frame(c);
    if (len == 0 && !c->failed) exec_list(c, &n->orelse);
    json_decref(items);
}

static void exec_for(ct_ctx *c, const ct_node *n) {
    json_t *iter = ct_eval(c, n->a);
    if (c->failed) return;
    run_for(c, n, iter, 1);
    json_decref(iter);
}

/* Runs fn with the output captured; returns it as a string (NULL on error). */
static json_t *capture(ct_ctx *c, int line, void (*fn)(ct_ctx *, const void *), const void *arg) {
    ct_buf saved = c->out;
    c->out = (ct_buf){.limit = c->lim.max_output_bytes, .tuples = &c->tuples};
    fn(c, arg);
    ct_buf mine = c->out;
    c->out = saved;
    json_t *r = c->failed ? NULL : ct_string(mine.p ? mine.p : "", mine.n);
    if (mine.over) ct_fail(c, line, "output larger than %zu bytes", c->lim.max_output_bytes);
    free(mine.p);
    return r;
}

typedef struct recur_call {
    const ct_node *loop;
    json_t *iter;
    int depth;
} recur_call;

static void run_recur(ct_ctx *c, const void *arg) {
    const recur_call *r = arg;
    run_for(c, r->loop, r->iter, r->depth);
}

/* loop(items) inside a recursive loop: the loop's body over items, one level deeper. */
static json_t *call_loop(ct_ctx *c, const ct_node *call, json_t *loop, json_t **args, int n_args) {
    if (n_args != 1) return ct_fail(c, call->line, "loop() takes one iterable");
    if (c->depth >= c->lim.max_depth)
        return ct_fail(c, call->line, "recursive loop nested too deeply (limit %d)",
                       c->lim.max_depth);
    recur_call r = {c->macro_nodes[json_integer_value(json_object_get(loop, CT_RECUR_KEY))],
                    args[0], (int)json_integer_value(json_object_get(loop, "\001depth")) + 1};
    c->depth++;
    json_t *out = capture(c, call->line, run_recur, &r);
    c->depth--;
    return out;
}

typedef struct caller_call {
    const ct_node *block;
    json_t **args;
    int n_args;
    const ct_node *call;
} caller_call;

static void run_caller(ct_ctx *c, const void *arg) {
    const caller_call *k = arg;
    if (!push_frame(c, k->call->line)) return;
    json_t *f = c->frames[c->n_frames - 1];
    for (int i = 0; i < k->block->n_names; i++) {
        json_t *v =
            i < k->n_args ? json_incref(k->args[i]) : ct_kwarg(c, k->call, k->block->names[i]);
        if (v) json_object_set_new(f, k->block->names[i], v);
    }
    exec_list(c, &k->block->body);
    c->brk = 0;
    pop_frame(c);
}

/* caller(args) inside a macro called by {% call %}: the call block's body, run in the scopes
 * of the call site (the macro's frames above them set aside meanwhile). */
static json_t *call_caller(ct_ctx *c, const ct_node *call, json_t *caller, json_t **args,
                           int n_args) {
    if (c->depth >= c->lim.max_depth)
        return ct_fail(c, call->line, "caller() nested too deeply (limit %d)", c->lim.max_depth);
    int site = (int)json_integer_value(json_object_get(caller, "\001frames"));
    if (site < 1 || site > c->n_frames) return ct_fail(c, call->line, "caller() out of its macro");
    int above = c->n_frames - site;
    json_t **saved = kv_malloc((size_t)(above ? above : 1) * sizeof *saved);
    memcpy(saved, c->frames + site, (size_t)above * sizeof *saved);
    c->n_frames = site;
    caller_call k = {c->macro_nodes[json_integer_value(json_object_get(caller, CT_CALLER_KEY))],
                     args, n_args, call};
    c->depth++;
    json_t *out = capture(c, call->line, run_caller, &k);
    c->depth--;
    while (c->n_frames > site) pop_frame(c);
    memcpy(c->frames + site, saved, (size_t)above * sizeof *saved);
    c->n_frames = site + above;
    free(saved);
    return out;
}

static void exec(ct_ctx *c, const ct_node *n) {
    json_t *f = c->frames[c->n_frames - 1];
    switch (n->kind) {
    case CT_TEXT:
        ct_str(&c->out, n->lit);
        break;
    case CT_OUTPUT: {
        json_t *v = ct_eval(c, n->a);
        ct_str(&c->out, v);
        json_decref(v);
        break;
    }
    case CT_IF: {
        json_t *v = ct_eval(c, n->a);
        bool t = ct_truthy(v);
        json_decref(v);
        if (!c->failed) exec_list(c, t ? &n->body : &n->orelse);
        break;
    }
    case CT_FOR:
        exec_for(c, n);
        break;
    case CT_SET: {
        json_t *v = ct_eval(c, n->a);
        if (c->failed) break;
        if (!v) v = json_null();
        if (n->attr) {
            json_t *ns = lookup(c, n->name);
            if (!ns || !json_is_object(ns)) {
                json_decref(v);
                ct_fail(c, n->line, "cannot set attribute '%s' of '%s' (not a namespace)", n->attr,
                        n->name);
                break;
            }
            /* a copy: `set ns.a = ns` or `[ns]` would make a reference cycle */
            json_t *copy = ct_check_nested(c, n->line, json_deep_copy(v));
            json_decref(v);
            if (copy) json_object_set_new(ns, n->attr, copy);
        } else if (n->n_names) {
            bind_targets(c, n, f, v);
            json_decref(v);
        } else {
            json_object_set_new(f, n->name, v);
        }
        break;
    }
    case CT_SETBLOCK: {
        ct_buf saved = c->out;
        c->out = (ct_buf){.limit = c->lim.max_output_bytes, .tuples = &c->tuples};
        exec_list(c, &n->body);
        ct_buf mine = c->out;
        c->out = saved;
        json_object_set_new(f, n->name, ct_string(mine.p ? mine.p : "", mine.n));
        free(mine.p);
        break;
    }
    case CT_MACRO: {
        int id = register_node(c, n);
        if (id < 0) break;
        json_t *m = json_object();
        json_object_set_new(m, CT_MACRO_KEY, json_integer(id));
        json_object_set_new(f, n->name, m);
        break;
    }
    case CT_CALLBLOCK: {
        const ct_node *call = n->a, *fn = n->a->a;
        json_t *m = ct_eval(c, fn);
        if (c->failed) break;
        if (!m || !json_is_object(m) || !json_object_get(m, CT_MACRO_KEY)) {
            json_decref(m);
            ct_fail(c, n->line, "{%% call %%} needs a macro call");
            break;
        }
        int id = register_node(c, n);
        json_t *args[16];
        int na = id >= 0 && call->args.n <= 16 ? eval_args(c, call, args) : 0;
        if (call->args.n > 16) ct_fail(c, n->line, "too many arguments");
        json_t *r = NULL;
        if (!c->failed) {
            json_t *caller = json_object();
            json_object_set_new(caller, CT_CALLER_KEY, json_integer(id));
            json_object_set_new(caller, "\001frames", json_integer(c->n_frames));
            r = call_macro(c, call,
                           c->macro_nodes[json_integer_value(json_object_get(m, CT_MACRO_KEY))],
                           args, na, caller);
            json_decref(caller);
        }
        free_args(args, na);
        ct_str(&c->out, r);
        json_decref(r);
        json_decref(m);
        break;
    }
    case CT_BREAK:
        c->brk = 1;
        break;
    case CT_CONTINUE:
        c->brk = 2;
        break;
    case CT_SEQ:
        if (n->name) { /* filter block */
            ct_buf saved = c->out;
            c->out = (ct_buf){.limit = c->lim.max_output_bytes, .tuples = &c->tuples};
            exec_list(c, &n->body);
            ct_buf mine = c->out;
            c->out = saved;
            json_t *text = ct_string(mine.p ? mine.p : "", mine.n), *args[16];
            free(mine.p);
            int na = n->args.n <= 16 ? eval_args(c, n, args) : 0;
            json_t *r = c->failed ? NULL : ct_filter(c, n, n->name, text, args, na);
            free_args(args, na);
            ct_str(&c->out, r);
            json_decref(r);
            json_decref(text);
        } else {
            exec_list(c, &n->body);
        }
        break;
    default:
        ct_fail(c, n->line, "not a statement");
        break;
    }
    if (c->out.over && !c->failed)
        ct_fail(c, n->line, "output larger than %zu bytes", c->lim.max_output_bytes);
}

static void exec_list(ct_ctx *c, const ct_list *l) {
    for (int i = 0; i < l->n && !c->failed && !c->brk; i++) exec(c, l->v[i]);
}

int chat_template_render(const chat_template *t, json_t *vars, const chat_template_limits *limits,
                         char **out, size_t *out_len, kv_error *err) {
    ct_ctx c = {.err = err};
    c.lim = limits ? *limits : chat_template_default_limits();
    c.out.limit = c.lim.max_output_bytes;
    c.out.tuples = &c.tuples;
    c.frames[0] = vars && json_is_object(vars) ? json_copy(vars) : json_object();
    c.n_frames = 1;
    exec(&c, t->root);
    while (c.n_frames > 0) pop_frame(&c);
    ct_ptrset_free(&c.tuples);
    ct_ptrset_free(&c.markups);
    if (c.failed) {
        free(c.out.p);
        *out = NULL;
        return -1;
    }
    *out = c.out.p ? c.out.p : kv_strdup("");
    if (out_len) *out_len = c.out.n;
    return 0;
}

/* Chat template parser: tokens → AST (chat_internal.h). Recursive descent with Jinja's operator
 * precedence; nesting is bounded so a hostile template cannot exhaust the stack. */
#include <errno.h>
#include <stdlib.h>

#include "server/chat/chat_internal.h"

#define CT_MAX_NEST 200

typedef struct parser {
    ct_toks toks;
    int pos;
    int nest;
    chat_template *t;
    kv_error *err;
    bool failed;
} parser;

void ct_list_push(ct_list *l, ct_node *n) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 4;
        l->v = kv_realloc(l->v, (size_t)l->cap * sizeof *l->v);
    }
    l->v[l->n++] = n;
}

static ct_node *node(parser *p, ct_kind kind, int line) {
    ct_node *n = kv_calloc(1, sizeof *n);
    n->kind = kind;
    n->line = line;
    n->next_alloc = p->t->all;
    p->t->all = n;
    return n;
}

static ct_tok *peek(parser *p) {
    return &p->toks.v[p->pos];
}
static ct_tok *peek2(parser *p) {
    return &p->toks.v[p->pos + 1 < p->toks.n ? p->pos + 1 : p->pos];
}
static ct_tok *next(parser *p) {
    ct_tok *t = &p->toks.v[p->pos];
    if (t->kind != CT_TOK_EOF) p->pos++;
    return t;
}

static void *fail(parser *p, int line, const char *msg, const char *what) {
    if (!p->failed) {
        kv_error_set(p->err, "line %d: %s%s%s%s", line, msg, what ? " '" : "", what ? what : "",
                     what ? "'" : "");
        p->failed = true;
    }
    return NULL;
}

static bool is_op(ct_tok *t, const char *op) {
    return t->kind == CT_TOK_OP && !strcmp(t->text, op);
}
static bool is_name(ct_tok *t, const char *n) {
    return t->kind == CT_TOK_NAME && !strcmp(t->text, n);
}
static bool accept_op(parser *p, const char *op) {
    if (is_op(peek(p), op)) {
        next(p);
        return true;
    }
    return false;
}
static bool accept_name(parser *p, const char *n) {
    if (is_name(peek(p), n)) {
        next(p);
        return true;
    }
    return false;
}
static bool expect_op(parser *p, const char *op) {
    if (accept_op(p, op)) return true;
    ct_tok *t = peek(p);
    char what[64];
    snprintf(what, sizeof what, "expected '%s', got '%s'", op,
             t->kind == CT_TOK_EOF         ? "end of template"
             : t->kind == CT_TOK_BLOCK_END ? "%}"
             : t->kind == CT_TOK_VAR_END   ? "}}"
                                           : t->text);
    fail(p, t->line, what, NULL);
    return false;
}

static ct_node *parse_expr(parser *p);
static ct_node *parse_or(parser *p);
static ct_node *parse_unary(parser *p, bool with_filter);

/* (args, kw=...) after '(' was consumed; fills n->args / n->kw. */
static void parse_call_args(parser *p, ct_node *n) {
    int n_kw_cap = 0;
    while (!p->failed && !accept_op(p, ")")) {
        if (n->args.n + n->kw.n > 0 && !expect_op(p, ",")) return;
        if (accept_op(p, ")")) return;
        if (peek(p)->kind == CT_TOK_NAME && is_op(peek2(p), "=")) {
            char *k = kv_strdup(next(p)->text);
            next(p);
            ct_node *v = parse_expr(p);
            if (!v) {
                free(k);
                return;
            }
            if (n->kw.n == n_kw_cap) {
                n_kw_cap = n_kw_cap ? n_kw_cap * 2 : 4;
                n->kw_names = kv_realloc(n->kw_names, (size_t)n_kw_cap * sizeof(char *));
            }
            n->kw_names[n->kw.n] = k;
            ct_list_push(&n->kw, v);
        } else {
            ct_node *v = parse_expr(p);
            if (!v) return;
            ct_list_push(&n->args, v);
        }
    }
}

static ct_node *parse_primary(parser *p) {
    ct_tok *t = next(p);
    ct_node *n;
    switch (t->kind) {
    case CT_TOK_NAME:
        if (!strcmp(t->text, "true") || !strcmp(t->text, "True") || !strcmp(t->text, "false") ||
            !strcmp(t->text, "False")) {
            n = node(p, CT_LIT, t->line);
            n->lit = json_boolean(t->text[0] == 't' || t->text[0] == 'T');
            return n;
        }
        if (!strcmp(t->text, "none") || !strcmp(t->text, "None")) {
            n = node(p, CT_LIT, t->line);
            n->lit = json_null();
            return n;
        }
        n = node(p, CT_NAME, t->line);
        n->name = kv_strdup(t->text);
        return n;
    case CT_TOK_STRING: {
        ct_buf b = {0};
        ct_buf_add(&b, t->text, t->len);
        while (peek(p)->kind == CT_TOK_STRING) { /* "a" "b" is "ab" */
            ct_tok *s = next(p);
            ct_buf_add(&b, s->text, s->len);
        }
        n = node(p, CT_LIT, t->line);
        n->lit = ct_string(b.p ? b.p : "", b.n);
        free(b.p);
        return n;
    }
    case CT_TOK_INT: {
        n = node(p, CT_LIT, t->line);
        char digits[64];
        size_t k = 0;
        for (size_t i = 0; i < t->len && k + 1 < sizeof digits; i++)
            if (t->text[i] != '_') digits[k++] = t->text[i];
        digits[k] = 0;
        errno = 0;
        long long v = strtoll(digits, NULL, 10);
        n->lit = errno ? json_real(strtod(digits, NULL)) : json_integer(v);
        return n;
    }
    case CT_TOK_FLOAT:
        n = node(p, CT_LIT, t->line);
        n->lit = json_real(strtod(t->text, NULL));
        return n;
    case CT_TOK_OP:
        if (!strcmp(t->text, "(")) {
            if (accept_op(p, ")")) return node(p, CT_TUPLE, t->line);
            ct_node *e = parse_expr(p);
            if (!e) return NULL;
            if (is_op(peek(p), ",")) {
                ct_node *tup = node(p, CT_TUPLE, t->line);
                ct_list_push(&tup->args, e);
                while (accept_op(p, ",")) {
                    if (is_op(peek(p), ")")) break;
                    ct_node *x = parse_expr(p);
                    if (!x) return NULL;
                    ct_list_push(&tup->args, x);
                }
                e = tup;
            }
            return expect_op(p, ")") ? e : NULL;
        }
        if (!strcmp(t->text, "[")) {
            n = node(p, CT_LIST, t->line);
            while (!accept_op(p, "]")) {
                if (n->args.n && !expect_op(p, ",")) return NULL;
                if (accept_op(p, "]")) break;
                ct_node *x = parse_expr(p);
                if (!x) return NULL;
                ct_list_push(&n->args, x);
            }
            return n;
        }
        if (!strcmp(t->text, "{")) {
            n = node(p, CT_DICT, t->line);
            while (!accept_op(p, "}")) {
                if (n->args.n && !expect_op(p, ",")) return NULL;
                if (accept_op(p, "}")) break;
                ct_node *k = parse_expr(p);
                if (!k || !expect_op(p, ":")) return NULL;
                ct_node *v = parse_expr(p);
                if (!v) return NULL;
                ct_list_push(&n->args, k);
                ct_list_push(&n->args, v);
            }
            return n;
        }
        break;
    default:
        break;
    }
    return fail(p, t->line, "unexpected",
                t->kind == CT_TOK_EOF         ? "end of template"
                : t->kind == CT_TOK_BLOCK_END ? "%}"
                : t->kind == CT_TOK_VAR_END   ? "}}"
                                              : t->text);
}

static ct_node *parse_postfix(parser *p, ct_node *n) {
    while (n && !p->failed) {
        ct_tok *t = peek(p);
        if (is_op(t, ".")) {
            next(p);
            ct_tok *a = next(p);
            if (a->kind != CT_TOK_NAME && a->kind != CT_TOK_INT)
                return fail(p, a->line, "expected an attribute name after '.'", NULL);
            ct_node *x = node(p, a->kind == CT_TOK_INT ? CT_ITEM : CT_ATTR, a->line);
            x->a = n;
            if (a->kind == CT_TOK_INT) {
                x->b = node(p, CT_LIT, a->line);
                x->b->lit = json_integer(strtoll(a->text, NULL, 10));
            } else {
                x->name = kv_strdup(a->text);
            }
            n = x;
        } else if (is_op(t, "[")) {
            next(p);
            ct_node *parts[3] = {0};
            int n_colon = 0;
            for (;;) {
                if (is_op(peek(p), ":")) {
                    next(p);
                    if (++n_colon > 2) return fail(p, t->line, "bad slice", NULL);
                    continue;
                }
                if (is_op(peek(p), "]")) break;
                if (parts[n_colon]) return fail(p, t->line, "bad subscript", NULL);
                parts[n_colon] = parse_expr(p);
                if (!parts[n_colon]) return NULL;
            }
            next(p);
            ct_node *x = node(p, n_colon ? CT_SLICE : CT_ITEM, t->line);
            if (!n_colon && !parts[0]) return fail(p, t->line, "empty subscript", NULL);
            x->a = n;
            x->b = parts[0];
            x->c = parts[1];
            x->d = parts[2];
            n = x;
        } else if (is_op(t, "(")) {
            next(p);
            ct_node *x = node(p, CT_CALL, t->line);
            x->a = n;
            parse_call_args(p, x);
            n = x;
        } else {
            break;
        }
    }
    return p->failed ? NULL : n;
}

static ct_node *parse_filters(parser *p, ct_node *n) {
    while (n && !p->failed) {
        ct_tok *t = peek(p);
        if (is_op(t, "|")) {
            next(p);
            ct_tok *f = next(p);
            if (f->kind != CT_TOK_NAME) return fail(p, f->line, "expected a filter name", NULL);
            ct_node *x = node(p, CT_FILTER, f->line); /* unknown names: check_names */
            x->name = kv_strdup(f->text);
            x->a = n;
            if (accept_op(p, "(")) parse_call_args(p, x);
            n = parse_postfix(p, x);
        } else if (is_name(t, "is")) {
            next(p);
            ct_node *x = node(p, CT_TEST, t->line);
            x->negate = accept_name(p, "not");
            ct_tok *f = next(p);
            if (f->kind != CT_TOK_NAME) return fail(p, f->line, "expected a test name", NULL);
            x->name = kv_strdup(f->text);
            x->a = n;
            ct_tok *nx = peek(p);
            if (accept_op(p, "(")) {
                parse_call_args(p, x);
            } else if (nx->kind == CT_TOK_STRING || nx->kind == CT_TOK_INT ||
                       nx->kind == CT_TOK_FLOAT ||
                       (nx->kind == CT_TOK_NAME && !is_name(nx, "and") && !is_name(nx, "or") &&
                        !is_name(nx, "else") && !is_name(nx, "if") && !is_name(nx, "in") &&
                        !is_name(nx, "is") && !is_name(nx, "not"))) {
                ct_node *arg = parse_postfix(p, parse_primary(p));
                if (!arg) return NULL;
                ct_list_push(&x->args, arg);
            }
            n = x;
        } else {
            break;
        }
    }
    return p->failed ? NULL : n;
}

static ct_node *parse_unary(parser *p, bool with_filter) {
    ct_tok *t = peek(p);
    ct_node *n;
    if (is_op(t, "-") || is_op(t, "+")) {
        next(p);
        n = node(p, is_op(t, "-") ? CT_NEG : CT_POS, t->line);
        if (++p->nest > CT_MAX_NEST) return fail(p, t->line, "expression nested too deeply", NULL);
        n->a = parse_unary(p, false);
        p->nest--;
        if (!n->a) return NULL;
    } else {
        n = parse_postfix(p, parse_primary(p));
    }
    return with_filter ? parse_filters(p, n) : n;
}

static ct_node *binop(parser *p, const char *op, int line, ct_node *a, ct_node *b) {
    if (!a || !b) return NULL;
    ct_node *n = node(p, CT_BINOP, line);
    n->name = kv_strdup(op);
    n->a = a;
    n->b = b;
    return n;
}

static ct_node *parse_pow(parser *p) {
    ct_node *n = parse_unary(p, true);
    while (n && is_op(peek(p), "**")) {
        int line = next(p)->line;
        n = binop(p, "**", line, n, parse_unary(p, true));
    }
    return n;
}

static ct_node *parse_mul(parser *p) {
    ct_node *n = parse_pow(p);
    for (;;) {
        ct_tok *t = peek(p);
        if (!n || !(is_op(t, "*") || is_op(t, "/") || is_op(t, "//") || is_op(t, "%"))) return n;
        next(p);
        n = binop(p, t->text, t->line, n, parse_pow(p));
    }
}

static ct_node *parse_add(parser *p) {
    ct_node *n = parse_mul(p);
    for (;;) {
        ct_tok *t = peek(p);
        if (!n || !(is_op(t, "+") || is_op(t, "-"))) return n;
        next(p);
        n = binop(p, t->text, t->line, n, parse_mul(p));
    }
}

static ct_node *parse_concat(parser *p) {
    ct_node *n = parse_add(p);
    while (n && is_op(peek(p), "~")) {
        int line = next(p)->line;
        n = binop(p, "~", line, n, parse_add(p));
    }
    return n;
}

static ct_node *parse_compare(parser *p) {
    ct_node *n = parse_concat(p);
    for (;;) {
        ct_tok *t = peek(p);
        const char *op = NULL;
        if (is_op(t, "==") || is_op(t, "!=") || is_op(t, "<") || is_op(t, ">") || is_op(t, "<=") ||
            is_op(t, ">="))
            op = t->text;
        else if (is_name(t, "in"))
            op = "in";
        else if (is_name(t, "not") && is_name(peek2(p), "in"))
            op = "notin";
        if (!n || !op) return n;
        next(p);
        if (!strcmp(op, "notin")) next(p);
        n = binop(p, op, t->line, n, parse_concat(p));
    }
}

static ct_node *parse_not(parser *p) {
    ct_tok *t = peek(p);
    if (is_name(t, "not")) {
        next(p);
        if (++p->nest > CT_MAX_NEST) return fail(p, t->line, "expression nested too deeply", NULL);
        ct_node *n = node(p, CT_NOT, t->line);
        n->a = parse_not(p);
        p->nest--;
        return n->a ? n : NULL;
    }
    return parse_compare(p);
}

static ct_node *parse_and(parser *p) {
    ct_node *n = parse_not(p);
    while (n && is_name(peek(p), "and")) {
        ct_node *x = node(p, CT_AND, next(p)->line);
        x->a = n;
        x->b = parse_not(p);
        n = x->b ? x : NULL;
    }
    return n;
}

static ct_node *parse_or(parser *p) {
    ct_node *n = parse_and(p);
    while (n && is_name(peek(p), "or")) {
        ct_node *x = node(p, CT_OR, next(p)->line);
        x->a = n;
        x->b = parse_and(p);
        n = x->b ? x : NULL;
    }
    return n;
}

static ct_node *parse_expr(parser *p) {
    if (++p->nest > CT_MAX_NEST)
        return fail(p, peek(p)->line, "expression nested too deeply", NULL);
    ct_node *n = parse_or(p);
    while (n && is_name(peek(p), "if")) {
        ct_node *x = node(p, CT_COND, next(p)->line);
        x->b = n;
        x->a = parse_or(p);
        if (!x->a) return NULL;
        if (accept_name(p, "else")) {
            x->c = parse_expr(p);
            if (!x->c) return NULL;
        }
        n = x;
    }
    p->nest--;
    return n;
}

/* An expression, or a tuple without parentheses (for `for k, v in` targets and set values). */
static ct_node *parse_tuple_expr(parser *p) {
    ct_node *e = parse_expr(p);
    if (!e || !is_op(peek(p), ",")) return e;
    ct_node *t = node(p, CT_TUPLE, e->line);
    ct_list_push(&t->args, e);
    while (accept_op(p, ",")) {
        ct_node *x = parse_expr(p);
        if (!x) return NULL;
        ct_list_push(&t->args, x);
    }
    return t;
}

/* ---- statements ---- */

static bool expect_block_end(parser *p) {
    ct_tok *t = peek(p);
    if (t->kind == CT_TOK_BLOCK_END) {
        next(p);
        return true;
    }
    fail(p, t->line, "expected '%}', got",
         t->kind == CT_TOK_EOF       ? "end of template"
         : t->kind == CT_TOK_VAR_END ? "}}"
                                     : t->text);
    return false;
}

/* Parses statements into body until a block tag whose keyword is one of ends ("a|b|c"); returns
 * that keyword's token (consumed, the tag's rest left to the caller) or NULL. ends NULL: top level.
 */
static ct_tok *parse_body(parser *p, ct_list *body, const char *const *ends, const char *opener,
                          int open_line);

static bool push_name(ct_node *n, const char *s) {
    n->names = kv_realloc(n->names, (size_t)(n->n_names + 1) * sizeof(char *));
    n->names[n->n_names++] = kv_strdup(s);
    return true;
}

static ct_node *parse_stmt(parser *p) {
    ct_tok *kw = next(p); /* after {% */
    int line = kw->line;
    if (kw->kind != CT_TOK_NAME) return fail(p, line, "expected a statement keyword", NULL);
    const char *k = kw->text;
    if (++p->nest > CT_MAX_NEST) return fail(p, line, "blocks nested too deeply", NULL);
    ct_node *n = NULL;
    if (!strcmp(k, "if")) {
        n = node(p, CT_IF, line);
        n->a = parse_expr(p);
        if (!n->a || !expect_block_end(p)) return NULL;
        ct_node *cur = n;
        for (;;) {
            static const char *const ends[] = {"elif", "else", "endif", NULL};
            ct_tok *e = parse_body(p, &cur->body, ends, "if", line);
            if (!e) return NULL;
            if (!strcmp(e->text, "elif")) {
                ct_node *x = node(p, CT_IF, e->line);
                x->a = parse_expr(p);
                if (!x->a || !expect_block_end(p)) return NULL;
                ct_list_push(&cur->orelse, x);
                cur = x;
            } else if (!strcmp(e->text, "else")) {
                static const char *const ends2[] = {"endif", NULL};
                if (!expect_block_end(p) || !parse_body(p, &cur->orelse, ends2, "if", line))
                    return NULL;
                break;
            } else {
                break;
            }
        }
    } else if (!strcmp(k, "for")) {
        n = node(p, CT_FOR, line);
        do {
            ct_tok *t = next(p);
            if (t->kind != CT_TOK_NAME) return fail(p, t->line, "expected a loop variable", NULL);
            push_name(n, t->text);
        } while (accept_op(p, ","));
        if (!accept_name(p, "in")) return fail(p, line, "expected 'in' in for", NULL);
        n->a = parse_or(p); /* `if` after the iterable filters, it is no conditional */
        if (!n->a) return NULL;
        if (accept_name(p, "if")) {
            n->b = parse_expr(p);
            if (!n->b) return NULL;
        }
        n->recursive = accept_name(p, "recursive");
        if (!expect_block_end(p)) return NULL;
        static const char *const ends[] = {"else", "endfor", NULL};
        ct_tok *e = parse_body(p, &n->body, ends, "for", line);
        if (!e) return NULL;
        if (!strcmp(e->text, "else")) {
            static const char *const ends2[] = {"endfor", NULL};
            if (!expect_block_end(p) || !parse_body(p, &n->orelse, ends2, "for", line)) return NULL;
        }
    } else if (!strcmp(k, "set")) {
        ct_tok *t = next(p);
        if (t->kind != CT_TOK_NAME) return fail(p, t->line, "expected a name after set", NULL);
        n = node(p, CT_SET, line);
        n->name = kv_strdup(t->text);
        if (accept_op(p, ".")) {
            ct_tok *a = next(p);
            if (a->kind != CT_TOK_NAME) return fail(p, a->line, "expected an attribute", NULL);
            n->attr = kv_strdup(a->text);
        } else if (is_op(peek(p), ",")) {
            push_name(n, t->text);
            while (accept_op(p, ",")) {
                ct_tok *x = next(p);
                if (x->kind != CT_TOK_NAME) return fail(p, x->line, "expected a name", NULL);
                push_name(n, x->text);
            }
        }
        if (!n->attr && !n->n_names && peek(p)->kind == CT_TOK_BLOCK_END) {
            n->kind = CT_SETBLOCK;
            next(p);
            static const char *const ends[] = {"endset", NULL};
            if (!parse_body(p, &n->body, ends, "set", line)) return NULL;
        } else {
            if (!expect_op(p, "=")) return NULL;
            n->a = parse_tuple_expr(p);
            if (!n->a) return NULL;
        }
    } else if (!strcmp(k, "macro")) {
        ct_tok *t = next(p);
        if (t->kind != CT_TOK_NAME) return fail(p, t->line, "expected a macro name", NULL);
        n = node(p, CT_MACRO, line);
        n->name = kv_strdup(t->text);
        if (!expect_op(p, "(")) return NULL;
        while (!accept_op(p, ")")) {
            if (n->n_names && !expect_op(p, ",")) return NULL;
            ct_tok *a = next(p);
            if (a->kind != CT_TOK_NAME) return fail(p, a->line, "expected a parameter name", NULL);
            push_name(n, a->text);
            ct_node *def = NULL;
            if (accept_op(p, "=")) {
                def = parse_expr(p);
                if (!def) return NULL;
            }
            ct_list_push(&n->args, def);
        }
        static const char *const ends[] = {"endmacro", NULL};
        if (!expect_block_end(p) || !parse_body(p, &n->body, ends, "macro", line)) return NULL;
    } else if (!strcmp(k, "call")) { /* {% call(params) macro(args) %}body{% endcall %} */
        n = node(p, CT_CALLBLOCK, line);
        if (accept_op(p, "(")) {
            while (!accept_op(p, ")")) {
                if (n->n_names && !expect_op(p, ",")) return NULL;
                ct_tok *a = next(p);
                if (a->kind != CT_TOK_NAME)
                    return fail(p, a->line, "expected a parameter name", NULL);
                push_name(n, a->text);
            }
        }
        n->a = parse_expr(p);
        if (!n->a) return NULL;
        if (n->a->kind != CT_CALL) return fail(p, line, "{% call %} needs a macro call", NULL);
        static const char *const ends[] = {"endcall", NULL};
        if (!expect_block_end(p) || !parse_body(p, &n->body, ends, "call", line)) return NULL;
    } else if (!strcmp(k, "break") || !strcmp(k, "continue")) {
        n = node(p, k[0] == 'b' ? CT_BREAK : CT_CONTINUE, line);
    } else if (!strcmp(k, "generation") || !strcmp(k, "filter")) {
        /* transformers' {% generation %} only marks assistant text: render the body */
        n = node(p, CT_SEQ, line);
        if (k[0] ==
            'f') { /* {% filter name(args) %}body{% endfilter %}: the body's text, filtered */
            ct_tok *f = next(p);
            if (f->kind != CT_TOK_NAME) return fail(p, f->line, "expected a filter name", NULL);
            if (!ct_filter_known(f->text)) return fail(p, f->line, "unknown filter", f->text);
            n->name = kv_strdup(f->text);
            if (accept_op(p, "(")) parse_call_args(p, n);
            if (p->failed) return NULL;
        }
        static const char *const ends[] = {"endgeneration", NULL};
        static const char *const fends[] = {"endfilter", NULL};
        if (!expect_block_end(p) || !parse_body(p, &n->body, k[0] == 'f' ? fends : ends, k, line))
            return NULL;
    } else {
        return fail(p, line, "unknown statement", k);
    }
    if (!expect_block_end(p)) return NULL;
    p->nest--;
    return n;
}

static ct_tok *parse_body(parser *p, ct_list *body, const char *const *ends, const char *opener,
                          int open_line) {
    while (!p->failed) {
        ct_tok *t = next(p);
        switch (t->kind) {
        case CT_TOK_EOF:
            if (ends) fail(p, open_line, "unclosed block, missing end of", opener);
            return NULL;
        case CT_TOK_TEXT: {
            ct_node *n = node(p, CT_TEXT, t->line);
            n->lit = ct_string(t->text, t->len);
            ct_list_push(body, n);
            break;
        }
        case CT_TOK_VAR_BEGIN: {
            ct_node *n = node(p, CT_OUTPUT, t->line);
            n->a = parse_tuple_expr(p);
            if (!n->a) return NULL;
            if (peek(p)->kind != CT_TOK_VAR_END)
                return fail(p, peek(p)->line, "expected '}}', got",
                            peek(p)->kind == CT_TOK_EOF ? "end of template" : peek(p)->text);
            next(p);
            ct_list_push(body, n);
            break;
        }
        case CT_TOK_BLOCK_BEGIN: {
            ct_tok *kw = peek(p);
            if (kw->kind == CT_TOK_NAME && ends)
                for (int i = 0; ends[i]; i++)
                    if (!strcmp(kw->text, ends[i])) return next(p);
            if (kw->kind == CT_TOK_NAME && (!strncmp(kw->text, "end", 3) ||
                                            !strcmp(kw->text, "else") || !strcmp(kw->text, "elif")))
                return fail(p, kw->line, "unexpected", kw->text);
            ct_node *n = parse_stmt(p);
            if (!n) return NULL;
            ct_list_push(body, n);
            break;
        }
        default:
            return fail(p, t->line, "unexpected token", t->text);
        }
    }
    return NULL;
}

/* Jinja's rule for unknown filters and tests: a compile error, except under an `if` (its test,
 * branches) or a conditional expression, where only running them fails; a loop, macro or block
 * body starts strict again. */
static void check_names(parser *p, const ct_node *n, bool soft);
static void check_list(parser *p, const ct_list *l, bool soft) {
    for (int i = 0; i < l->n && !p->failed; i++)
        if (l->v[i]) check_names(p, l->v[i], soft);
}
static void check_names(parser *p, const ct_node *n, bool soft) {
    if (n->kind == CT_FILTER && !soft && !ct_filter_known(n->name))
        fail(p, n->line, "unknown filter", n->name);
    if (n->kind == CT_TEST && !soft && !ct_test_known(n->name))
        fail(p, n->line, "unknown test", n->name);
    bool inner = n->kind == CT_IF || n->kind == CT_COND ? true : soft;
    bool body = n->kind == CT_FOR || n->kind == CT_MACRO || n->kind == CT_SETBLOCK ||
                        n->kind == CT_CALLBLOCK || (n->kind == CT_SEQ && n->name)
                    ? false
                    : inner;
    const ct_node *kids[4] = {n->a, n->b, n->c, n->d};
    for (int i = 0; i < 4 && !p->failed; i++)
        if (kids[i]) check_names(p, kids[i], inner);
    check_list(p, &n->args, inner);
    check_list(p, &n->kw, inner);
    check_list(p, &n->body, body);
    check_list(p, &n->orelse, body);
}

static void free_list(ct_list *l) {
    free(l->v);
}

void chat_template_free(chat_template *t) {
    if (!t) return;
    for (ct_node *n = t->all, *nx; n; n = nx) {
        nx = n->next_alloc;
        free(n->name);
        free(n->attr);
        json_decref(n->lit);
        for (int i = 0; i < n->kw.n; i++) free(n->kw_names[i]);
        free(n->kw_names);
        for (int i = 0; i < n->n_names; i++) free(n->names[i]);
        free(n->names);
        free_list(&n->args);
        free_list(&n->kw);
        free_list(&n->body);
        free_list(&n->orelse);
        free(n);
    }
    free(t);
}

chat_template *chat_template_parse(const char *src, size_t len, kv_error *err) {
    chat_template *t = kv_calloc(1, sizeof *t);
    parser p = {.t = t, .err = err};
    if (ct_lex(src, len, &p.toks, err)) {
        ct_toks_free(&p.toks);
        chat_template_free(t);
        return NULL;
    }
    p.t->root = node(&p, CT_SEQ, 1);
    parse_body(&p, &p.t->root->body, NULL, NULL, 1);
    if (!p.failed) check_names(&p, p.t->root, false);
    ct_toks_free(&p.toks);
    if (p.failed) {
        chat_template_free(t);
        return NULL;
    }
    return t;
}

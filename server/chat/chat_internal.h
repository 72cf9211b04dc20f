/* Internals shared by the chat template lexer, parser and evaluator (not a public API). */
#ifndef KVSERVE_CHAT_INTERNAL_H
#define KVSERVE_CHAT_INTERNAL_H

#include <stdbool.h>

#include "server/chat/chat_template.h"

/* ---- lexer ---- */
typedef enum ct_tok_kind {
    CT_TOK_TEXT,        /* literal template text (already whitespace-trimmed) */
    CT_TOK_VAR_BEGIN,   /* {{ */
    CT_TOK_VAR_END,     /* }} */
    CT_TOK_BLOCK_BEGIN, /* {% */
    CT_TOK_BLOCK_END,   /* %} */
    CT_TOK_NAME,
    CT_TOK_STRING, /* text holds the unescaped value */
    CT_TOK_INT,
    CT_TOK_FLOAT,
    CT_TOK_OP, /* text holds the operator: "==", "(", "|", ... */
    CT_TOK_EOF,
} ct_tok_kind;

typedef struct ct_tok {
    ct_tok_kind kind;
    char *text; /* malloc'd, NUL-terminated (TEXT and STRING may hold NULs: use len) */
    size_t len;
    int line;
} ct_tok;

typedef struct ct_toks {
    ct_tok *v;
    int n, cap;
} ct_toks;

/* Splits src into tokens (whitespace control, trim_blocks, lstrip_blocks, comments applied).
 * -1 with err ("line N: ...") on an unterminated tag, string or comment. */
int ct_lex(const char *src, size_t len, ct_toks *out, kv_error *err);
void ct_toks_free(ct_toks *t);

/* ---- AST ---- */
typedef enum ct_kind {
    /* statements */
    CT_TEXT,     /* lit: the string */
    CT_OUTPUT,   /* {{ a }} */
    CT_IF,       /* a: cond, body, orelse */
    CT_FOR,      /* names: targets, a: iterable, b: filter cond or NULL, body, orelse */
    CT_SET,      /* name (+ attr for ns.attr), a: value; or names for unpacking */
    CT_SETBLOCK, /* {% set name %}body{% endset %} */
    CT_MACRO,    /* name, names: params, args: defaults (NULL entries), body */
    CT_BREAK,
    CT_CONTINUE,
    CT_SEQ,       /* body: statements (generation blocks, filter blocks) */
    CT_CALLBLOCK, /* {% call(names) a %}body{% endcall %}: a is the macro call */
    /* expressions */
    CT_LIT,    /* lit */
    CT_NAME,   /* name */
    CT_LIST,   /* args */
    CT_TUPLE,  /* args */
    CT_DICT,   /* args: key, value, key, value, ... */
    CT_ATTR,   /* a.name */
    CT_ITEM,   /* a[b] */
    CT_SLICE,  /* a[b:c:d], NULL parts absent */
    CT_CALL,   /* a(args, kw) */
    CT_FILTER, /* a | name(args, kw) */
    CT_TEST,   /* a is [not] name(args) */
    CT_NEG,    /* -a */
    CT_POS,    /* +a */
    CT_NOT,    /* not a */
    CT_AND,    /* a and b */
    CT_OR,     /* a or b */
    CT_BINOP,  /* a name b: + - * / // % ** ~ == != < > <= >= in notin */
    CT_COND,   /* b if a else c */
} ct_kind;

typedef struct ct_node ct_node;
typedef struct ct_list {
    ct_node **v;
    int n, cap;
} ct_list;

struct ct_node {
    ct_kind kind;
    int line;
    char *name;  /* name, attribute, filter, test, operator, macro */
    char *attr;  /* set ns.attr */
    json_t *lit; /* CT_LIT / CT_TEXT value (owned) */
    ct_node *a, *b, *c, *d;
    ct_list args; /* positional args / list items / dict k,v / macro defaults */
    ct_list kw;   /* keyword arg values; names in kw_names */
    char **kw_names;
    char **names; /* for targets, macro params */
    int n_names;
    bool negate; /* is not */
    ct_list body, orelse;
    bool recursive;      /* for ... recursive */
    ct_node *next_alloc; /* every node of a template, for freeing */
};

struct chat_template {
    ct_node *root; /* CT_SEQ */
    ct_node *all;  /* allocation list */
};

void ct_list_push(ct_list *l, ct_node *n);

/* ---- values (chat_value.c) ---- */
bool ct_truthy(json_t *v); /* NULL (undefined) is false */

/* The arrays of one render that are Python tuples (tuple literals, items() pairs): a set of
 * pointers, each held by a reference so no other value reuses its address. */
typedef struct ct_ptrset {
    json_t **v;
    size_t cap, n;
} ct_ptrset;
void ct_ptrset_add(ct_ptrset *s, json_t *v); /* no-op for NULL */
bool ct_ptrset_has(const ct_ptrset *s, const json_t *v);
void ct_ptrset_free(ct_ptrset *s);

/* Appends Python str(v) (undefined: nothing) to the buffer. */
typedef struct ct_buf {
    char *p;
    size_t n, cap;
    size_t limit; /* appends beyond this set over */
    bool over;
    const ct_ptrset *tuples; /* arrays printed as tuples; NULL: none */
} ct_buf;
void ct_buf_add(ct_buf *b, const char *s, size_t n);
void ct_buf_adds(ct_buf *b, const char *s);
void ct_str(ct_buf *b, json_t *v);
void ct_repr(ct_buf *b, json_t *v);
void ct_float_repr(char *out, size_t cap, double d);
/* json.dumps(v, ensure_ascii=False, indent, separators, sort_keys): indent NULL = none. */
void ct_tojson(ct_buf *b, json_t *v, const char *indent, const char *item_sep, const char *key_sep,
               bool sort_keys);
bool ct_equal(json_t *a, json_t *b);
/* -1/0/1; *ok false when not comparable. */
int ct_compare(json_t *a, json_t *b, bool *ok);
json_t *ct_string(const char *s, size_t n);
/* Python-style: converts v to a list of items (new reference); NULL when not iterable
 * (undefined gives an empty list). */
json_t *ct_iter_list(json_t *v);
#define CT_LOOP_KEY "\001loop" /* marks a loop object (loop.cycle) */
/* Int keys of dict literals live in the object as CT_INT_KEY + digits: */
#define CT_INT_KEY "\002"
json_t *ct_key_value(const char *k);                 /* the key as a value: an int or a string */
void ct_int_key(char *out, size_t cap, long long i); /* the object key of int i */

/* ---- evaluation (chat_eval.c, chat_filters.c) ---- */
typedef struct ct_ctx {
    ct_buf out;
    json_t *frames[256]; /* variable scopes, innermost last (frame 0 holds a copy of vars) */
    int n_frames;
    const ct_node *macro_nodes[256];
    int n_macros;
    chat_template_limits lim;
    long iterations;
    int depth;
    int brk; /* 1 break, 2 continue pending */
    ct_ptrset tuples;
    ct_ptrset markups; /* strings that are Markup (|safe): '+' HTML-escapes a plain side */
    bool failed;
    kv_error *err;
} ct_ctx;

/* Sets the error once (later errors keep the first) and returns NULL. */
void *ct_fail(ct_ctx *c, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
json_t *ct_eval(ct_ctx *c, const ct_node *n); /* new reference or NULL (undefined / error) */
/* v | name(args, kw of n): new reference or NULL. */
json_t *ct_filter(ct_ctx *c, const ct_node *n, const char *name, json_t *v, json_t **args,
                  int n_args);
/* Whether a filter / test of that name exists (the parser refuses unknown ones). */
bool ct_filter_known(const char *name);
bool ct_test_known(const char *name);
bool ct_test(ct_ctx *c, const ct_node *n, const char *name, json_t *v, json_t **args, int n_args);
/* obj.name(args): string, dict and list methods, or the globals when obj is NULL. *found false
 * when there is no such method. */
json_t *ct_call_method(ct_ctx *c, const ct_node *n, json_t *obj, const char *name, json_t **args,
                       int n_args, bool *found);
/* For a value about to go inside a new list, dict or namespace: NULL with the error set when it
 * would nest too deeply; takes v's reference either way. */
json_t *ct_check_nested(ct_ctx *c, int line, json_t *v);
/* sort, unique, min, max, sum, round (chat_filters_seq.c): true when name is one of them, the
 * filtered value (new ref, or NULL) in *result. */
bool ct_filter_seq(ct_ctx *c, const ct_node *n, const char *name, json_t *v, json_t **args,
                   int n_args, json_t **result);
/* The value of attribute path "a.b" (dict keys, list indexes) of x (borrowed), or NULL. */
json_t *ct_attr_path(json_t *x, const char *path);
/* v (a string) lowered (0), uppered (1), title-cased (2) or capitalized (3): new reference. */
json_t *ct_case_map(json_t *v, int mode);
/* a op b for the binary operators (chat_ops.c): new reference, or NULL with the error set. */
json_t *ct_arith(ct_ctx *c, const ct_node *n, const char *op, json_t *a, json_t *b);
/* Keyword argument `name` of call node n, evaluated (new ref), or NULL when absent. */
json_t *ct_kwarg(ct_ctx *c, const ct_node *n, const char *name);

#endif

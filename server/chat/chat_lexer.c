/* Chat template lexer: template text → tokens. Applies Jinja's whitespace rules as transformers
 * configures them: {%- -%} {{- -}} {#- -#}, trim_blocks (one newline after a block tag or comment
 * dropped), lstrip_blocks (spaces and tabs before a block tag or comment on its line dropped), and
 * the source's single trailing newline dropped. */
#include <ctype.h>
#include <stdlib.h>

#include "server/chat/chat_internal.h"

static void push(ct_toks *t, ct_tok_kind kind, const char *s, size_t n, int line) {
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 64;
        t->v = kv_realloc(t->v, (size_t)t->cap * sizeof *t->v);
    }
    char *p = kv_malloc(n + 1);
    if (n) memcpy(p, s, n);
    p[n] = 0;
    t->v[t->n++] = (ct_tok){kind, p, n, line};
}

void ct_toks_free(ct_toks *t) {
    for (int i = 0; i < t->n; i++) free(t->v[i].text);
    free(t->v);
    t->v = NULL;
    t->n = t->cap = 0;
}

static int count_lines(const char *s, size_t n) {
    int c = 0;
    for (size_t i = 0; i < n; i++) c += s[i] == '\n';
    return c;
}

/* Emits text [s, s+n) with the trims asked by the tags around it. */
static void emit_text(ct_toks *t, const char *s, size_t n, int line, bool strip_left,
                      int strip_right /* 0 none, 1 all whitespace, 2 lstrip_blocks */,
                      bool line_starting) {
    size_t b = 0, e = n;
    if (strip_left)
        while (b < e && isspace((unsigned char)s[b])) b++;
    if (strip_right == 1) {
        while (e > b && isspace((unsigned char)s[e - 1])) e--;
    } else if (strip_right == 2) {
        size_t k = e;
        while (k > b && (s[k - 1] == ' ' || s[k - 1] == '\t')) k--;
        /* Only when the tag begins its line (or the template). */
        if ((k == 0 && line_starting) || (k > 0 && s[k - 1] == '\n')) e = k;
    }
    if (e > b) push(t, CT_TOK_TEXT, s + b, e - b, line + count_lines(s, b));
}

static void add_utf8(ct_buf *b, uint32_t cp) {
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xc0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xe0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        u[0] = (char)(0xf0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    ct_buf_add(b, u, n);
}

static int lex_tag(const char *src, size_t len, size_t *pos, int *line, ct_toks *out,
                   const char *end, kv_error *err) {
    size_t i = *pos;
    while (i < len) {
        char c = src[i];
        if (c == '\n') {
            (*line)++;
            i++;
            continue;
        }
        if (isspace((unsigned char)c)) {
            i++;
            continue;
        }
        /* end of tag, possibly with '-' */
        if (c == '-' && i + 2 < len + 0 && src[i + 1] == end[0] && src[i + 2] == end[1]) break;
        if (c == end[0] && i + 1 < len && src[i + 1] == end[1]) break;
        if (isalpha((unsigned char)c) || c == '_') {
            size_t b = i;
            while (i < len && (isalnum((unsigned char)src[i]) || src[i] == '_')) i++;
            push(out, CT_TOK_NAME, src + b, i - b, *line);
            continue;
        }
        if (isdigit((unsigned char)c)) {
            size_t b = i;
            bool is_float = false;
            while (i < len && (isdigit((unsigned char)src[i]) || src[i] == '_')) i++;
            if (i + 1 < len && src[i] == '.' && isdigit((unsigned char)src[i + 1])) {
                is_float = true;
                i++;
                while (i < len && isdigit((unsigned char)src[i])) i++;
            }
            if (i < len && (src[i] == 'e' || src[i] == 'E')) {
                size_t k = i + 1;
                if (k < len && (src[k] == '+' || src[k] == '-')) k++;
                if (k < len && isdigit((unsigned char)src[k])) {
                    is_float = true;
                    i = k;
                    while (i < len && isdigit((unsigned char)src[i])) i++;
                }
            }
            push(out, is_float ? CT_TOK_FLOAT : CT_TOK_INT, src + b, i - b, *line);
            continue;
        }
        if (c == '\'' || c == '"') {
            int start_line = *line;
            ct_buf b = {0};
            i++;
            while (i < len && src[i] != c) {
                char ch = src[i];
                if (ch == '\n') (*line)++;
                if (ch == '\\' && i + 1 < len) {
                    char e = src[++i];
                    switch (e) {
                    case 'n':
                        ct_buf_add(&b, "\n", 1);
                        break;
                    case 't':
                        ct_buf_add(&b, "\t", 1);
                        break;
                    case 'r':
                        ct_buf_add(&b, "\r", 1);
                        break;
                    case '\\':
                        ct_buf_add(&b, "\\", 1);
                        break;
                    case '\'':
                        ct_buf_add(&b, "'", 1);
                        break;
                    case '"':
                        ct_buf_add(&b, "\"", 1);
                        break;
                    case '\n':
                        (*line)++;
                        break;
                    case 'a':
                        ct_buf_add(&b, "\a", 1);
                        break;
                    case 'b':
                        ct_buf_add(&b, "\b", 1);
                        break;
                    case 'f':
                        ct_buf_add(&b, "\f", 1);
                        break;
                    case 'v':
                        ct_buf_add(&b, "\v", 1);
                        break;
                    case '0':
                        ct_buf_add(&b, "", 1);
                        break;
                    case 'x':
                    case 'u':
                    case 'U': {
                        int nd = e == 'x' ? 2 : e == 'u' ? 4 : 8;
                        uint32_t cp = 0;
                        int k = 0;
                        for (; k < nd && i + 1 < len && isxdigit((unsigned char)src[i + 1]); k++) {
                            char h = src[++i];
                            cp = cp * 16 + (uint32_t)(isdigit((unsigned char)h)
                                                          ? h - '0'
                                                          : (h | 0x20) - 'a' + 10);
                        }
                        if (k != nd || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
                            free(b.p);
                            return kv_error_set(err, "line %d: bad \\%c escape in a string", *line,
                                                e);
                        }
                        add_utf8(&b, cp);
                        break;
                    }
                    default:
                        ct_buf_add(&b, src + i - 1, 2);
                        break;
                    }
                    i++;
                    continue;
                }
                ct_buf_add(&b, &ch, 1);
                i++;
            }
            if (i >= len) {
                free(b.p);
                return kv_error_set(err, "line %d: unterminated string", start_line);
            }
            i++;
            push(out, CT_TOK_STRING, b.p ? b.p : "", b.n, start_line);
            free(b.p);
            continue;
        }
        static const char *ops2[] = {"//", "**", "==", "!=", "<=", ">="};
        bool two = false;
        for (size_t k = 0; k < sizeof ops2 / sizeof *ops2; k++)
            if (i + 1 < len && src[i] == ops2[k][0] && src[i + 1] == ops2[k][1]) two = true;
        if (two) {
            push(out, CT_TOK_OP, src + i, 2, *line);
            i += 2;
            continue;
        }
        if (strchr("+-*/%~<>=()[]{},.:|", c)) {
            push(out, CT_TOK_OP, src + i, 1, *line);
            i++;
            continue;
        }
        return kv_error_set(err, "line %d: unexpected character '%c'", *line, c);
    }
    if (i >= len) return kv_error_set(err, "line %d: unclosed tag (missing '%s')", *line, end);
    *pos = i;
    return 0;
}

int ct_lex(const char *src, size_t len, ct_toks *out, kv_error *err) {
    if (len && src[len - 1] == '\n') {
        len--;
        if (len && src[len - 1] == '\r') len--;
    }
    size_t i = 0, text_start = 0;
    int line = 1, text_line = 1;
    bool strip_next = false; /* previous tag ended with '-' */
    while (i < len) {
        if (src[i] != '{' || i + 1 >= len ||
            (src[i + 1] != '{' && src[i + 1] != '%' && src[i + 1] != '#')) {
            if (src[i] == '\n') line++;
            i++;
            continue;
        }
        char kind = src[i + 1];
        bool minus = i + 2 < len && src[i + 2] == '-';
        bool plus = i + 2 < len && src[i + 2] == '+';
        int strip_right = minus ? 1 : (kind != '{' && !plus) ? 2 : 0;
        emit_text(out, src + text_start, i - text_start, text_line, strip_next, strip_right,
                  text_start == 0 || src[text_start - 1] == '\n');
        int tag_line = line;
        i += 2 + (minus || plus);
        bool end_minus;
        if (kind == '#') {
            size_t k = i;
            while (k + 1 < len && !(src[k] == '#' && src[k + 1] == '}')) k++;
            if (k + 1 >= len) return kv_error_set(err, "line %d: unclosed comment", tag_line);
            line += count_lines(src + i, k - i);
            end_minus = k > i && src[k - 1] == '-';
            i = k + 2;
        } else {
            const char *end = kind == '{' ? "}}" : "%}";
            push(out, kind == '{' ? CT_TOK_VAR_BEGIN : CT_TOK_BLOCK_BEGIN, "", 0, tag_line);
            if (lex_tag(src, len, &i, &line, out, end, err)) return -1;
            end_minus = src[i] == '-';
            i += end_minus ? 3 : 2;
            push(out, kind == '{' ? CT_TOK_VAR_END : CT_TOK_BLOCK_END, "", 0, line);
        }
        /* trim_blocks: the newline right after a block tag or comment goes */
        if (!end_minus && kind != '{' && i < len) {
            if (src[i] == '\n') {
                i++;
                line++;
            } else if (src[i] == '\r' && i + 1 < len && src[i + 1] == '\n') {
                i += 2;
                line++;
            }
        }
        strip_next = end_minus;
        text_start = i;
        text_line = line;
        /* {% raw %}: copy until {% endraw %} */
        if (kind == '%' && out->n >= 3 && out->v[out->n - 3].kind == CT_TOK_BLOCK_BEGIN &&
            out->v[out->n - 2].kind == CT_TOK_NAME && !strcmp(out->v[out->n - 2].text, "raw")) {
            out->n -= 3; /* tokens of the raw tag */
            for (int k = 0; k < 3; k++) free(out->v[out->n + k].text);
            const char *e = NULL;
            for (size_t k = i; k + 1 < len && !e; k++)
                if (src[k] == '{' && src[k + 1] == '%') {
                    size_t m = k + 2;
                    if (m < len && (src[m] == '-' || src[m] == '+')) m++;
                    while (m < len && isspace((unsigned char)src[m])) m++;
                    if (len - m >= 6 && !memcmp(src + m, "endraw", 6)) e = src + k;
                }
            if (!e) return kv_error_set(err, "line %d: unclosed raw block", tag_line);
            size_t k = (size_t)(e - src);
            emit_text(out, src + i, k - i, line, strip_next, src[k + 2] == '-' ? 1 : 2,
                      i == 0 || src[i - 1] == '\n');
            line += count_lines(src + i, k - i);
            size_t m = k;
            while (m + 1 < len && !(src[m] == '%' && src[m + 1] == '}')) m++;
            if (m + 1 >= len) return kv_error_set(err, "line %d: unclosed raw block", tag_line);
            strip_next = src[m - 1] == '-';
            i = m + 2;
            if (!strip_next && i < len && src[i] == '\n') {
                i++;
                line++;
            }
            text_start = i;
            text_line = line;
        }
    }
    emit_text(out, src + text_start, len - text_start, text_line, strip_next, 0, false);
    push(out, CT_TOK_EOF, "", 0, line);
    return 0;
}

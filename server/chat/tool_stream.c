/* Streamed tool calls (see tool_stream.h). The call region (from its marker on) is kept and
 * scanned again at each feed with a forgiving JSON scanner that knows how far each call's name and
 * arguments have come; what is new of them goes out. */
#include "server/chat/tool_stream.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/common.h"

#define TS_MAX_CALLS 64

static const char HERMES_OPEN[] = "<tool_call>", HERMES_CLOSE[] = "</tool_call>";
static const char MISTRAL_TAG[] = "[TOOL_CALLS]", PYTHON_TAG[] = "<|python_tag|>";

/* ---- scanning ---- */

typedef struct found_call {
    bool has_name, name_raw; /* name_raw: Mistral v11's bare name, else a JSON string literal */
    size_t name_off, name_len;
    bool has_args, args_done, args_string;
    size_t args_off, args_len; /* so far when !args_done */
    bool complete;             /* the call's object (or v11 arguments) ended */
} found_call;

typedef struct region_scan {
    found_call calls[TS_MAX_CALLS];
    int n;
    bool bad;      /* the text stopped being calls */
    size_t bad_at; /* the failing call's start (its marker) */
    size_t bad_pos;
} region_scan;

static size_t skip_ws(const char *p, size_t n, size_t i) {
    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r')) i++;
    return i;
}

/* 1: p[i..] starts with lit; 0: p[i..n) is a proper prefix of it (more may come); -1: neither. */
static int expect_lit(const char *p, size_t n, size_t i, const char *lit) {
    size_t m = strlen(lit), have = n - i < m ? n - i : m;
    if (memcmp(p + i, lit, have)) return -1;
    return have == m ? 1 : 0;
}

/* The end (exclusive) of the JSON value at p[i]: > 0 when it ended, 0 when it may go on past n,
 * -1 when it is not JSON. Strings and brackets are tracked, scalars taken loosely. */
static long scan_value(const char *p, size_t n, size_t i) {
    if (i >= n) return 0;
    char c0 = p[i];
    if (c0 != '{' && c0 != '[' && c0 != '"') {
        size_t k = i;
        while (k < n && (isalnum((unsigned char)p[k]) || p[k] == '+' || p[k] == '-' || p[k] == '.'))
            k++;
        if (k == i) return -1;
        return k == n ? 0 : (long)k;
    }
    char stack[256];
    int depth = 0;
    bool in_str = false, esc = false;
    for (size_t k = i; k < n; k++) {
        char c = p[k];
        if (in_str) {
            if (esc)
                esc = false;
            else if (c == '\\')
                esc = true;
            else if (c == '"') {
                in_str = false;
                if (depth == 0) return (long)k + 1;
            }
            continue;
        }
        if (c == '"') {
            in_str = true;
        } else if (c == '{' || c == '[') {
            if (depth == (int)sizeof stack) return -1;
            stack[depth++] = c;
        } else if (c == '}' || c == ']') {
            if (!depth || stack[depth - 1] != (c == '}' ? '{' : '[')) return -1;
            if (--depth == 0) return (long)k + 1;
        }
    }
    return 0;
}

/* A {"name": ..., "<args>": ...} object at p[i] (p[i] == '{'). Returns its end (> 0), 0 when it
 * goes on past n, -1 when it is not such an object. */
static long scan_call_object(const char *p, size_t n, size_t i, const char *k1, const char *k2,
                             found_call *fc) {
    size_t pos = i + 1;
    bool first = true;
    for (;;) {
        pos = skip_ws(p, n, pos);
        if (pos == n) return 0;
        if (p[pos] == '}' && first) break;
        if (p[pos] != '"') return -1;
        long ke = scan_value(p, n, pos);
        if (ke <= 0) return ke;
        const char *key = p + pos + 1;
        size_t klen = (size_t)ke - pos - 2;
        pos = skip_ws(p, n, (size_t)ke);
        if (pos == n) return 0;
        if (p[pos] != ':') return -1;
        pos = skip_ws(p, n, pos + 1);
        if (pos == n) return 0;
        long ve = scan_value(p, n, pos);
        if (ve < 0) return -1;
        bool is_name = klen == 4 && !memcmp(key, "name", 4);
        bool is_args = (klen == strlen(k1) && !memcmp(key, k1, klen)) ||
                       (k2 && klen == strlen(k2) && !memcmp(key, k2, klen));
        if (is_name && ve > 0 && p[pos] == '"') {
            fc->has_name = true;
            fc->name_off = pos;
            fc->name_len = (size_t)ve - pos;
        } else if (is_name && ve > 0) {
            return -1; /* a name that is no string */
        }
        if (is_args && !fc->has_args) {
            fc->has_args = true;
            fc->args_off = pos;
            fc->args_string = p[pos] == '"';
        }
        if (is_args && fc->args_off == pos) {
            fc->args_done = ve > 0;
            fc->args_len = (ve > 0 ? (size_t)ve : n) - pos;
        }
        if (ve == 0) return 0;
        pos = skip_ws(p, n, (size_t)ve);
        if (pos == n) return 0;
        first = false;
        if (p[pos] == ',') {
            pos++;
            continue;
        }
        if (p[pos] != '}') return -1;
        break;
    }
    if (!fc->has_name) return -1;
    json_error_t jerr; /* the loose scan passed: the object must be real JSON too */
    json_t *v = json_loadb(p + i, pos + 1 - i, 0, &jerr);
    if (!v) return -1;
    json_decref(v);
    fc->complete = true;
    return (long)pos + 1;
}

static found_call *new_call(region_scan *rs, size_t at) {
    if (rs->n == TS_MAX_CALLS) {
        rs->bad = true;
        rs->bad_at = rs->bad_pos = at;
        return NULL;
    }
    found_call *fc = &rs->calls[rs->n++];
    memset(fc, 0, sizeof *fc);
    return fc;
}

static void set_bad(region_scan *rs, size_t at, size_t pos) {
    rs->bad = true;
    rs->bad_at = at;
    rs->bad_pos = pos;
}

/* A call that failed while scanned: its record goes (it never goes out unless it already had). */
static void drop_bad(region_scan *rs, size_t at, size_t pos) {
    rs->n--;
    set_bad(rs, at, pos);
}

/* <tool_call>{...}</tool_call> ... (the last close tag may be missing). */
static void scan_hermes(const char *p, size_t n, region_scan *rs) {
    size_t pos = 0;
    while (pos < n) {
        size_t at = pos;
        int m = expect_lit(p, n, pos, HERMES_OPEN);
        if (m <= 0) {
            if (m < 0) set_bad(rs, at, pos);
            return;
        }
        pos = skip_ws(p, n, pos + strlen(HERMES_OPEN));
        if (pos == n) return;
        if (p[pos] != '{') return set_bad(rs, at, pos);
        found_call *fc = new_call(rs, at);
        if (!fc) return;
        long end = scan_call_object(p, n, pos, "arguments", NULL, fc);
        if (end < 0) return drop_bad(rs, at, pos);
        if (end == 0) return;
        pos = skip_ws(p, n, (size_t)end);
        if (pos == n) return;
        m = expect_lit(p, n, pos, HERMES_CLOSE);
        if (m <= 0) {
            if (m < 0) set_bad(rs, (size_t)end, pos);
            return;
        }
        pos = skip_ws(p, n, pos + strlen(HERMES_CLOSE));
    }
}

/* [<|python_tag|>]{...}; {...} */
static void scan_llama3(const char *p, size_t n, region_scan *rs) {
    size_t pos = skip_ws(p, n, 0);
    if (pos < n && p[pos] == '<') {
        int m = expect_lit(p, n, pos, PYTHON_TAG);
        if (m <= 0) {
            if (m < 0) set_bad(rs, 0, pos);
            return;
        }
        pos = skip_ws(p, n, pos + strlen(PYTHON_TAG));
    }
    while (pos < n) {
        size_t at = pos;
        if (p[pos] != '{') return set_bad(rs, at, pos);
        found_call *fc = new_call(rs, at);
        if (!fc) return;
        long end = scan_call_object(p, n, pos, "parameters", "arguments", fc);
        if (end <= 0) {
            if (end < 0) drop_bad(rs, at, pos);
            return;
        }
        pos = skip_ws(p, n, (size_t)end);
        if (pos == n) return;
        if (p[pos] != ';') return set_bad(rs, (size_t)end, pos);
        pos = skip_ws(p, n, pos + 1);
    }
}

static bool v11_name_char(char c) {
    return isalnum((unsigned char)c) || c == '_' || c == '-' || c == '.';
}

/* [TOOL_CALLS][{...}, ...] or [TOOL_CALLS]{...}, or v11's [TOOL_CALLS]name[ARGS]{...} (with an
 * optional [CALL_ID]id before [ARGS]), repeated. */
static void scan_mistral(const char *p, size_t n, region_scan *rs) {
    size_t pos = 0;
    int m = expect_lit(p, n, pos, MISTRAL_TAG);
    if (m <= 0) {
        if (m < 0) set_bad(rs, 0, 0);
        return;
    }
    pos = skip_ws(p, n, strlen(MISTRAL_TAG));
    if (pos == n) return;
    if (p[pos] == '[' || p[pos] == '{') { /* the JSON form */
        bool list = p[pos] == '[';
        if (list) pos++;
        for (;;) {
            pos = skip_ws(p, n, pos);
            if (pos == n) return;
            if (p[pos] != '{') return set_bad(rs, 0, pos);
            found_call *fc = new_call(rs, 0);
            if (!fc) return;
            long end = scan_call_object(p, n, pos, "arguments", NULL, fc);
            if (end <= 0) {
                if (end < 0) drop_bad(rs, 0, pos);
                return;
            }
            pos = skip_ws(p, n, (size_t)end);
            if (!list) break;
            if (pos == n) return;
            if (p[pos] == ',') {
                pos++;
                continue;
            }
            if (p[pos] != ']') return set_bad(rs, (size_t)end, pos);
            pos = skip_ws(p, n, pos + 1);
            break;
        }
        if (pos < n) set_bad(rs, pos, pos);
        return;
    }
    for (;;) { /* v11 */
        size_t at = pos, name_start = pos;
        while (pos < n && v11_name_char(p[pos])) pos++;
        if (pos == n) return;
        if (pos == name_start || p[pos] != '[') return set_bad(rs, at, pos);
        size_t name_end = pos;
        if (expect_lit(p, n, pos, "[CALL_ID]") == 1) {
            pos += strlen("[CALL_ID]");
            while (pos < n && v11_name_char(p[pos])) pos++;
            if (pos == n) return;
        }
        m = expect_lit(p, n, pos, "[ARGS]");
        if (m <= 0) {
            if (m < 0 && expect_lit(p, n, pos, "[CALL_ID]") < 0) set_bad(rs, at, pos);
            return;
        }
        found_call *fc = new_call(rs, at);
        if (!fc) return;
        fc->has_name = fc->name_raw = true;
        fc->name_off = name_start;
        fc->name_len = name_end - name_start;
        pos = skip_ws(p, n, pos + strlen("[ARGS]"));
        if (pos == n) return;
        long end = scan_value(p, n, pos);
        if (end < 0) return drop_bad(rs, at, pos);
        fc->has_args = true;
        fc->args_off = pos;
        fc->args_string = p[pos] == '"';
        fc->args_done = end > 0;
        fc->args_len = (end > 0 ? (size_t)end : n) - pos;
        if (end == 0) return;
        json_t *v = json_loadb(p + pos, (size_t)end - pos, JSON_DECODE_ANY, NULL);
        if (!v) return drop_bad(rs, at, pos);
        json_decref(v);
        fc->complete = true;
        pos = skip_ws(p, n, (size_t)end);
        if (pos == n) return;
        m = expect_lit(p, n, pos, MISTRAL_TAG);
        if (m <= 0) {
            if (m < 0) set_bad(rs, (size_t)end, pos);
            return;
        }
        pos += strlen(MISTRAL_TAG);
    }
}

/* ---- the stream ---- */

void tool_stream_init(tool_stream *s, tool_parser_kind kind, const char *salt) {
    memset(s, 0, sizeof *s);
    s->kind = kind;
    snprintf(s->salt, sizeof s->salt, "%s", salt ? salt : "");
}

void tool_stream_free(tool_stream *s) {
    free(s->buf);
    free(s->args_sent);
    memset(s, 0, sizeof *s);
}

void tool_stream_out_free(tool_stream_out *o) {
    free(o->content);
    json_decref(o->calls);
    memset(o, 0, sizeof *o);
}

bool tool_stream_called(const tool_stream *s) {
    return s->n_started > 0;
}

static void add_content(tool_stream_out *o, const char *p, size_t n) {
    if (!n) return;
    o->content = kv_realloc(o->content, o->content_len + n + 1);
    memcpy(o->content + o->content_len, p, n);
    o->content_len += n;
    o->content[o->content_len] = '\0';
}

/* Drops buf[0..k). */
static void buf_drop(tool_stream *s, size_t k) {
    memmove(s->buf, s->buf + k, s->len - k);
    s->len -= k;
}

static void call_id(const tool_stream *s, int index, char *out, size_t cap) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (const char *c = s->salt; *c; c++) h = (h ^ (unsigned char)*c) * 0x100000001b3ULL;
    h = (h ^ (uint64_t)index) * 0x100000001b3ULL;
    uint64_t h2 = (h ^ 0x9e3779b97f4a7c15ULL) * 0x100000001b3ULL;
    snprintf(out, cap, "call_%016llx%08llx", (unsigned long long)h,
             (unsigned long long)(h2 & 0xffffffffULL));
}

/* The arguments of fc that are new since *sent (a string value goes whole once it ended; a call
 * that ended without arguments has "{}"). New reference, or NULL when nothing is new. */
static json_t *new_args(const tool_stream *s, const found_call *fc, size_t *sent) {
    if (*sent == SIZE_MAX) return NULL;
    if (!fc->has_args) {
        if (!fc->complete) return NULL;
        *sent = SIZE_MAX;
        return json_string("{}");
    }
    if (fc->args_string) {
        if (!fc->args_done) return NULL;
        json_t *v = json_loadb(s->buf + fc->args_off, fc->args_len, JSON_DECODE_ANY, NULL);
        *sent = SIZE_MAX;
        if (!json_is_string(v)) {
            json_decref(v);
            return json_string("");
        }
        return v;
    }
    /* whole UTF-8 sequences only: a piece must be valid JSON text on its own */
    size_t avail = fc->args_len;
    if (!fc->args_done) {
        size_t k = avail;
        while (k > *sent && ((unsigned char)s->buf[fc->args_off + k - 1] & 0xc0) == 0x80) k--;
        if (k > *sent && ((unsigned char)s->buf[fc->args_off + k - 1] & 0x80)) k--;
        if (k < avail && k > *sent) {
            /* k now starts the last (possibly cut) sequence: keep it if whole */
            unsigned char lead = (unsigned char)s->buf[fc->args_off + k];
            size_t need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
            if (k + need <= avail) k += need;
        }
        avail = k;
    }
    if (avail <= *sent) return NULL;
    json_t *piece = json_stringn(s->buf + fc->args_off + *sent, avail - *sent);
    if (!piece) return NULL; /* not UTF-8 yet */
    *sent = avail;
    return piece;
}

static json_t *call_name(const tool_stream *s, const found_call *fc) {
    if (fc->name_raw) return json_stringn(s->buf + fc->name_off, fc->name_len);
    json_t *v = json_loadb(s->buf + fc->name_off, fc->name_len, JSON_DECODE_ANY, NULL);
    if (json_is_string(v)) return v;
    json_decref(v);
    return json_string("");
}

/* Sends what is new of the calls scanned in buf. */
static void emit_calls(tool_stream *s, const region_scan *rs, tool_stream_out *o) {
    for (int i = 0; i < rs->n; i++) {
        const found_call *fc = &rs->calls[i];
        json_t *entry = NULL;
        if (i >= s->n_started) {
            if (!fc->has_name) break;
            if (s->n_started == s->cap_started) {
                s->cap_started = s->cap_started ? 2 * s->cap_started : 4;
                s->args_sent =
                    kv_realloc(s->args_sent, (size_t)s->cap_started * sizeof *s->args_sent);
            }
            s->args_sent[s->n_started++] = 0;
            json_t *args = new_args(s, fc, &s->args_sent[i]);
            char id[48];
            call_id(s, i, id, sizeof id);
            entry = json_pack("{s:i, s:s, s:s, s:{s:o, s:o}}", "index", i, "id", id, "type",
                              "function", "function", "name", call_name(s, fc), "arguments",
                              args ? args : json_string(""));
        } else {
            json_t *args = new_args(s, fc, &s->args_sent[i]);
            if (args)
                entry = json_pack("{s:i, s:{s:o}}", "index", i, "function", "arguments", args);
        }
        if (!entry) continue;
        if (!o->calls) o->calls = json_array();
        json_array_append_new(o->calls, entry);
        if (!fc->complete) break; /* the next call cannot have begun */
    }
}

/* Where a call region begins in buf (content before it may go): sets *start and returns true;
 * false with *safe = the bytes that can go out as content now. */
static bool find_region(tool_stream *s, bool done, size_t *start, size_t *safe) {
    const char *p = s->buf;
    size_t n = s->len;
    if (s->kind == TOOL_PARSER_LLAMA3_JSON) {
        if (s->sent_content) {
            *safe = n;
            return false;
        }
        size_t i = skip_ws(p, n, 0);
        if (i < n && (p[i] == '{' || expect_lit(p, n, i, PYTHON_TAG) == 1)) {
            *start = i;
            return true;
        }
        bool maybe = i == n || (p[i] == '<' && expect_lit(p, n, i, PYTHON_TAG) == 0);
        *safe = maybe && !done ? 0 : n;
        return false;
    }
    const char *marker = s->kind == TOOL_PARSER_HERMES ? HERMES_OPEN : MISTRAL_TAG;
    size_t m = strlen(marker);
    for (size_t i = 0; i + m <= n; i++)
        if (!memcmp(p + i, marker, m)) {
            *start = i;
            return true;
        }
    *safe = done ? n : tool_parser_stream_safe(s->kind, p, n, !s->sent_content);
    return false;
}

void tool_stream_feed(tool_stream *s, const char *text, size_t n, bool done, tool_stream_out *out) {
    memset(out, 0, sizeof *out);
    bool parses = s->kind == TOOL_PARSER_HERMES || s->kind == TOOL_PARSER_LLAMA3_JSON ||
                  s->kind == TOOL_PARSER_MISTRAL;
    if (s->dead || !parses) {
        add_content(out, s->buf, s->len); /* nothing is held in these states but be safe */
        s->len = 0;
        add_content(out, text, n);
        if (out->content_len) s->sent_content = true;
        return;
    }
    if (s->len + n + 1 > s->cap) {
        s->cap = (s->len + n + 1) * 2;
        s->buf = kv_realloc(s->buf, s->cap);
    }
    memcpy(s->buf + s->len, text, n);
    s->len += n;
    s->buf[s->len] = '\0';
    if (!s->in_calls) {
        size_t start = 0, safe = 0;
        if (find_region(s, done, &start, &safe)) {
            s->in_calls = true;
            bool lead_space = true; /* no content of spaces only before the calls, as vLLM */
            for (size_t i = 0; i < start && lead_space; i++)
                lead_space =
                    s->buf[i] == ' ' || s->buf[i] == '\n' || s->buf[i] == '\t' || s->buf[i] == '\r';
            if (!(lead_space && !s->sent_content)) add_content(out, s->buf, start);
            buf_drop(s, start);
        } else {
            add_content(out, s->buf, safe);
            buf_drop(s, safe);
        }
    }
    if (s->in_calls) {
        region_scan *rs = kv_calloc(1, sizeof *rs);
        if (s->kind == TOOL_PARSER_HERMES)
            scan_hermes(s->buf, s->len, rs);
        else if (s->kind == TOOL_PARSER_LLAMA3_JSON)
            scan_llama3(s->buf, s->len, rs);
        else
            scan_mistral(s->buf, s->len, rs);
        emit_calls(s, rs, out);
        if (rs->bad || (done && s->n_started == 0)) {
            /* not calls: all of it is content when no call went out; else from the failing call
             * (its marker on, or where it broke if it had gone out) */
            size_t from = s->n_started == 0 ? 0 : rs->n < s->n_started ? rs->bad_pos : rs->bad_at;
            if (!rs->bad) from = s->len;
            add_content(out, s->buf + from, s->len - from);
            s->len = 0;
            s->dead = true;
            s->in_calls = false;
        }
        free(rs);
    }
    if (done && !s->in_calls) {
        add_content(out, s->buf, s->len);
        s->len = 0;
    }
    if (out->content_len) s->sent_content = true;
}

bool tool_stream_parse_region(tool_parser_kind kind, const char *text, size_t n, const char *salt,
                              json_t *calls) {
    tool_stream s;
    tool_stream_init(&s, kind, salt);
    s.buf = (char *)text; /* read only below */
    s.len = n;
    region_scan *rs = kv_calloc(1, sizeof *rs);
    if (kind == TOOL_PARSER_HERMES)
        scan_hermes(text, n, rs);
    else if (kind == TOOL_PARSER_LLAMA3_JSON)
        scan_llama3(text, n, rs);
    else
        scan_mistral(text, n, rs);
    bool ok = !rs->bad && rs->n > 0 && rs->calls[rs->n - 1].complete;
    for (int i = 0; ok && i < rs->n; i++) {
        const found_call *fc = &rs->calls[i];
        size_t sent = 0;
        json_t *args = new_args(&s, fc, &sent), *v = NULL;
        if (args && !fc->args_string) /* dumped as the other formats are */
            v = json_loads(json_string_value(args), JSON_DECODE_ANY, NULL);
        char *dumped = v ? json_dumps(v, JSON_ENCODE_ANY) : NULL;
        char id[48];
        call_id(&s, i, id, sizeof id);
        json_array_append_new(calls,
                              json_pack("{s:s, s:s, s:{s:o, s:s}}", "id", id, "type", "function",
                                        "function", "name", call_name(&s, fc), "arguments",
                                        dumped ? dumped : json_string_value(args)));
        free(dumped);
        json_decref(v);
        json_decref(args);
    }
    free(rs);
    return ok;
}

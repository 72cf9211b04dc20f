/* Chat template renderer (server/chat): the real templates of testdata/chat_templates rendered
 * exactly as transformers' apply_chat_template does (goldens made with Jinja2), extra templates
 * in tests/data/chat_templates, single features, and malformed or hostile templates. */
#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "server/chat/chat_template.h"

/* Renders src with vars (a JSON text); returns the malloc'd text or NULL with err set. */
static char *render_vars(const char *src, const char *vars_json, kv_error *err) {
    chat_template *t = chat_template_parse(src, strlen(src), err);
    if (!t) return NULL;
    json_t *vars = vars_json ? json_loads(vars_json, JSON_DECODE_ANY, NULL) : json_object();
    ck_assert_ptr_nonnull(vars);
    char *out = NULL;
    int rc = chat_template_render(t, vars, NULL, &out, NULL, err);
    json_decref(vars);
    chat_template_free(t);
    return rc ? NULL : out;
}

static void check_render(const char *src, const char *vars, const char *want) {
    kv_error err = {{0}};
    char *got = render_vars(src, vars, &err);
    ck_assert_msg(got != NULL, "template %s: error %s", src, err.msg);
    ck_assert_msg(!strcmp(got, want), "template %s\n got: [%s]\nwant: [%s]", src, got, want);
    free(got);
}

static void check_error(const char *src, const char *vars, const char *want_in_msg) {
    kv_error err = {{0}};
    char *got = render_vars(src, vars, &err);
    ck_assert_msg(got == NULL, "template %s: expected an error, got [%s]", src, got ? got : "");
    ck_assert_msg(strstr(err.msg, want_in_msg), "template %s: error [%s] lacks [%s]", src, err.msg,
                  want_in_msg);
}

/* ---- template directories: template.jinja, special_tokens.json, cases.json ---- */

/* vLLM's one transformation: tool_calls[].function.arguments (a JSON string) parsed. */
static void parse_tool_arguments(json_t *messages) {
    size_t i, k;
    json_t *m, *tc;
    json_array_foreach(messages, i, m) {
        json_array_foreach(json_object_get(m, "tool_calls"), k, tc) {
            json_t *f = json_object_get(tc, "function");
            json_t *a = json_object_get(f, "arguments");
            if (a && json_is_string(a)) {
                json_t *parsed = json_string_length(a)
                                     ? json_loads(json_string_value(a), JSON_DECODE_ANY, NULL)
                                     : json_object();
                if (parsed) json_object_set_new(f, "arguments", parsed);
            }
        }
    }
}

/* Renders every case of dir; returns the number that failed (each printed). */
static int run_template_dir(const char *dir, int *n_cases) {
    char path[8192];
    kv_error err = {{0}};
    size_t len;
    snprintf(path, sizeof path, "%s/template.jinja", dir);
    char *src = kv_read_file(path, 1 << 20, &len, &err);
    ck_assert_msg(src, "%s", err.msg);
    chat_template *t = chat_template_parse(src, len, &err);
    ck_assert_msg(t, "%s: %s", path, err.msg);
    free(src);
    snprintf(path, sizeof path, "%s/special_tokens.json", dir);
    json_t *special = json_load_file(path, 0, NULL);
    if (!special) special = json_object();
    snprintf(path, sizeof path, "%s/cases.json", dir);
    json_t *cases = json_load_file(path, 0, NULL);
    ck_assert_msg(cases, "cannot read %s", path);
    int failed = 0;
    size_t i;
    json_t *cs;
    json_array_foreach(cases, i, cs) {
        json_t *vars = json_copy(special);
        json_t *messages = json_deep_copy(json_object_get(cs, "messages"));
        parse_tool_arguments(messages);
        json_object_set_new(vars, "messages", messages);
        json_t *tools = json_object_get(cs, "tools");
        json_object_set(vars, "tools", tools ? tools : json_null());
        json_object_set_new(vars, "documents", json_null());
        json_t *agp = json_object_get(cs, "add_generation_prompt");
        json_object_set(vars, "add_generation_prompt", agp ? agp : json_false());
        json_object_update(vars, json_object_get(cs, "chat_template_kwargs"));
        char *out = NULL;
        kv_error rerr = {{0}};
        /* make_goldens.py pins strftime_now to 2024-07-26 12:00 local time */
        chat_template_limits lim = chat_template_default_limits();
        struct tm tm = {.tm_year = 124, .tm_mon = 6, .tm_mday = 26, .tm_hour = 12, .tm_isdst = -1};
        lim.now = (long long)mktime(&tm);
        int rc = chat_template_render(t, vars, &lim, &out, NULL, &rerr);
        const char *name = json_string_value(json_object_get(cs, "name"));
        const char *want = json_string_value(json_object_get(cs, "expected_text"));
        if (json_is_true(json_object_get(cs, "expected_error"))) {
            const char *msg = json_string_value(json_object_get(cs, "error_message"));
            if (rc == 0 || (msg && !strstr(rerr.msg, msg))) {
                printf("FAIL %s/%s: expected error [%s], got [%s]\n", dir, name, msg,
                       rc ? rerr.msg : "success");
                failed++;
            }
        } else if (rc != 0) {
            printf("FAIL %s/%s: error %s\n", dir, name, rerr.msg);
            failed++;
        } else if (!want || strcmp(out, want)) {
            size_t k = 0;
            while (want && out[k] && out[k] == want[k]) k++;
            printf("FAIL %s/%s: differs at byte %zu\n got: [%s]\nwant: [%s]\n", dir, name, k,
                   out + (k > 40 ? k - 40 : 0), want ? want + (k > 40 ? k - 40 : 0) : "");
            failed++;
        }
        free(out);
        json_decref(vars);
    }
    *n_cases = (int)json_array_size(cases);
    json_decref(cases);
    json_decref(special);
    chat_template_free(t);
    return failed;
}

static void run_template_root(const char *root, const char *const *dirs, int min_dirs) {
    int total = 0, failed = 0, n_dirs = 0;
    for (int i = 0; dirs[i]; i++) {
        char dir[2048];
        snprintf(dir, sizeof dir, "%.1000s/%.1000s", root, dirs[i]);
        char probe[2100];
        snprintf(probe, sizeof probe, "%s/cases.json", dir);
        if (access(probe, R_OK)) continue;
        int n = 0;
        failed += run_template_dir(dir, &n);
        total += n;
        n_dirs++;
    }
    printf("chat templates under %s: %d/%d cases render exactly\n", root, total - failed, total);
    ck_assert_int_ge(n_dirs, min_dirs);
    ck_assert_int_eq(failed, 0);
}

START_TEST(shared_real_templates) {
    const char *td = getenv("KVSERVE_TESTDATA");
    char root[4096];
    snprintf(root, sizeof root, "%s/chat_templates", td ? td : "../shared/testdata");
    static const char *const dirs[] = {"llama-3.1-8b-instruct", "qwen2.5-7b-instruct",
                                       "mistral-nemo-instruct-2407", "gemma-2-2b-it", NULL};
    if (access(root, R_OK)) {
        printf("SKIP: shared_real_templates (no %s)\n", root);
        return;
    }
    run_template_root(root, dirs, 4);
}
END_TEST

/* Templates of other models (tests/data/chat_templates, goldens by its make_goldens.py). */
START_TEST(extra_real_templates) {
    const char *src = getenv("KVSERVE_SOURCE");
    char root[2048];
    snprintf(root, sizeof root, "%s/tests/data/chat_templates", src ? src : ".");
    DIR *d = opendir(root);
    ck_assert_msg(d, "cannot list %s (set KVSERVE_SOURCE)", root);
    const char *dirs[64];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 63)
        if (e->d_name[0] != '.') dirs[n++] = strdup(e->d_name);
    closedir(d);
    dirs[n] = NULL;
    run_template_root(root, dirs, 1);
    for (int i = 0; i < n; i++) free((char *)dirs[i]);
}
END_TEST

/* ---- single features ---- */

START_TEST(whitespace_control) {
    check_render("a  {%- if true -%}  b  {%- endif -%}  c", NULL, "abc");
    check_render("a {{- 'x' -}} b", NULL, "axb");
    check_render("{% if true %}\nx\n{% endif %}\n", NULL, "x\n");
    check_render("  {% if true %}\n  y\n  {% endif %}\nz", NULL, "  y\nz");
    check_render("a{# note #}\nb", NULL, "ab");
    check_render("line\n", NULL, "line");
    check_render("line\n\n", NULL, "line\n");
    check_render("{% raw %}{{ x }}{% endraw %}", NULL, "{{ x }}");
}
END_TEST

START_TEST(loops) {
    check_render("{% for x in xs %}{{ loop.index }}{{ x }}{% if not loop.last %},{% endif %}"
                 "{% endfor %}",
                 "{\"xs\": [\"a\", \"b\", \"c\"]}", "1a,2b,3c");
    check_render("{% for x in xs if x > 1 %}{{ loop.index0 }}:{{ x }}/{{ loop.length }} "
                 "{% endfor %}",
                 "{\"xs\": [1, 2, 3]}", "0:2/2 1:3/2 ");
    check_render("{% for x in xs %}{{ loop.previtem }}-{{ loop.nextitem }};{% endfor %}",
                 "{\"xs\": [1, 2]}", "-2;1-;");
    check_render("{% for k, v in d.items() %}{{ k }}={{ v }} {% endfor %}",
                 "{\"d\": {\"b\": 1, \"a\": 2}}", "b=1 a=2 ");
    check_render("{% for x in xs[::-1] %}{{ x }}{% endfor %}", "{\"xs\": [1, 2, 3]}", "321");
    check_render("{% for x in xs %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}"
                 "{% break %}{% endif %}{{ x }}{% endfor %}",
                 "{\"xs\": [1, 2, 3, 4, 5]}", "13");
    check_render("{% for x in nothing %}a{% else %}empty{% endfor %}", NULL, "empty");
    check_render("{% set y = 1 %}{% for x in [1] %}{% set y = 2 %}{% endfor %}{{ y }}", NULL, "1");
    check_render("{% set ns = namespace(y=1) %}{% for x in [1] %}{% set ns.y = 2 %}{% endfor %}"
                 "{{ ns.y }}",
                 NULL, "2");
}
END_TEST

START_TEST(expressions) {
    check_render("{{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }}",
                 NULL, "7 3 -4 1 2 3.5");
    check_render("{{ 'a' ~ 1 ~ none }} {{ 'ab' + 'c' }} {{ [1] + [2] }}", NULL,
                 "a1None abc [1, 2]");
    check_render("{{ x or 'd' }} {{ 0 and 1 }} {{ 'y' if x else 'n' }} {{ not x }}", NULL,
                 "d 0 n True");
    check_render("{{ 'b' in 'abc' }} {{ 2 not in [1, 2] }} {{ 'k' in {'k': 1} }}", NULL,
                 "True False True");
    check_render("{{ xs[-1] }} {{ xs[1:] }} {{ 'hello'[1:3] }} {{ d.a }} {{ d['a'] }} {{ d.zz }}",
                 "{\"xs\": [1, 2, 3], \"d\": {\"a\": \"A\"}}", "3 [2, 3] el A A ");
    check_render("{{ 1200.0 }} {{ 4.1 }} {{ 1e20 }} {{ 0.00001 }} {{ true }} {{ none }}", NULL,
                 "1200.0 4.1 1e+20 1e-05 True None");
    check_render("{{ {'a': \"it's\", 'b': [1, none]} }}", NULL, "{'a': \"it's\", 'b': [1, None]}");
    check_render("{{ '%s-%d %.2f %r %%' % ('a', 3, 2.5, 'q') }}|{{ 'n=%s' % none }}", NULL,
                 "a-3 2.50 'q' %|n=None");
    check_render("{% for k, v in {'b': 1, 'A': 2, 'c': 0} | dictsort %}{{ k }}{{ v }}{% endfor %}|"
                 "{{ none | selectattr('x') | list }}{{ none | map(attribute='x') | list }}|"
                 "{% filter upper %}a{{ 'b' }}{% endfilter %}",
                 NULL, "A2b1c0|[][]|AB");
    check_render("{{ '\\u00e9\\x41\\t' | tojson }}", NULL, "\"\u00e9A\\t\"");
    check_render("{{ z.y }}|{{ d.q }}", "{\"z\": null, \"d\": {}}", "|");
    check_render("{{ x | default('z') }}|{{ undefined_thing }}|{{ 'a' | upper | length }}", NULL,
                 "z||1");
}
END_TEST

START_TEST(filters_and_tests) {
    check_render("{{ d | tojson }}", "{\"d\": {\"b\": 1200.0, \"a\": [\"é\", null, true]}}",
                 "{\"b\": 1200.0, \"a\": [\"é\", null, true]}");
    check_render("{{ d | tojson(indent=2) }}", "{\"d\": {\"a\": [1], \"e\": {}}}",
                 "{\n  \"a\": [\n    1\n  ],\n  \"e\": {}\n}");
    check_render("{{ d | tojson(separators=(',', ':'), sort_keys=true) }}",
                 "{\"d\": {\"b\": 1, \"a\": \"x\\ny\"}}", "{\"a\":\"x\\ny\",\"b\":1}");
    check_render("{{ ms | selectattr('role', 'equalto', 'user') | list | length }}",
                 "{\"ms\": [{\"role\": \"user\"}, {\"role\": \"system\"}, {\"role\": \"user\"}]}",
                 "2");
    check_render("{{ ms | map(attribute='role') | join(',') }}",
                 "{\"ms\": [{\"role\": \"user\"}, {\"role\": \"system\"}]}", "user,system");
    check_render("{{ [1, 'a', 2] | reject('equalto', 'a') | join('-') }}", NULL, "1-2");
    check_render(
        "{{ '  x  ' | trim }}|{{ ' x '.strip() }}|{{ 'a,b'.split(',') }}|"
        "{{ 'abc'.startswith('ab') }}|{{ 'hi you'.title() }}|{{ 'aXa'.replace('a', 'b') }}",
        NULL, "x|x|['a', 'b']|True|Hi You|bXb");
    check_render("{{ x is defined }} {{ none is none }} {{ 'a' is string }} {{ {} is mapping }} "
                 "{{ [] is iterable }} {{ 1 is number }} {{ 3 is odd }} {{ 1 is not equalto 2 }}",
                 NULL, "False True True True True True True True");
    check_render("{{ d.get('a') }} {{ d.get('z', 5) }} {{ d.keys() | list }}",
                 "{\"d\": {\"a\": 1}}", "1 5 ['a']");
    check_render("{{ 'ab\ncd' | indent(2) }}|{{ '3' | int + 1 }}|{{ 'abc' | first }}", NULL,
                 "ab\n  cd|4|a");
}
END_TEST

START_TEST(macros) {
    check_render("{% macro greet(name, punct='!') %}hi {{ name }}{{ punct }}{% endmacro %}"
                 "{{ greet('bob') }} {{ greet('al', punct='?') }}",
                 NULL, "hi bob! hi al?");
    check_render("{% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n * fact(n - 1) | int }}"
                 "{% endif %}{% endmacro %}{{ fact(5) }}",
                 NULL, "120");
    check_render("{% set x %}in{{ 1 }}{% endset %}[{{ x }}]", NULL, "[in1]");
}
END_TEST

/* Jinja features checked against Jinja2 3.1 (expected texts rendered by it). */
START_TEST(jinja_more) {
    static const char *vars =
        "{\"xs\": [3, 1, 2], \"ws\": [\"b\", \"A\", \"a\", \"C\"], \"ds\": [{\"n\": \"x\", \"v\": "
        "2, \"k\": {\"z\": 1}}, {\"n\": \"y\", \"v\": 1, \"k\": {\"z\": 0}}, {\"n\": \"X\", \"v\": "
        "3, \"k\": {\"z\": 2}}], \"fs\": [1.5, 2.5, 0.125, 2.675, -0.5], \"tree\": [{\"name\": "
        "\"a\", \"children\": [{\"name\": \"b\", \"children\": []}, {\"name\": \"c\", "
        "\"children\": [{\"name\": \"d\", \"children\": []}]}]}], \"d\": {\"a\": 1, \"b\": [2]}}";
    check_render(
        "{{ xs|sort }} {{ xs|sort(reverse=true) }} {{ ws|sort }} {{ ws|sort(case_sensitive=true) "
        "}} {{ ws|sort(true) }}",
        vars, "[1, 2, 3] [3, 2, 1] ['A', 'a', 'b', 'C'] ['A', 'C', 'a', 'b'] ['C', 'b', 'A', 'a']");
    check_render("{{ ds|sort(attribute='v')|map(attribute='n')|join(',') }} {{ "
                 "ds|sort(attribute='n')|map(attribute='n')|join }} {{ ds|sort(attribute='k.z', "
                 "reverse=true)|map(attribute='n')|join }}",
                 vars, "y,x,X xXy Xxy");
    check_render("{{ xs|sum }} {{ fs|sum }} {{ ds|sum(attribute='v') }} {{ xs|sum(start=10) }} {{ "
                 "[[1],[2]]|sum(start=[]) }}",
                 vars, "6 6.3 6 16 [1, 2]");
    check_render("{{ xs|min }} {{ xs|max }} {{ ws|min }} {{ ws|max }} {{ "
                 "ws|max(case_sensitive=true) }} {{ ds|min(attribute='v') }} {{ []|max }}|",
                 vars, "1 3 A C b {'n': 'y', 'v': 1, 'k': {'z': 0}} |");
    check_render(
        "{% for f in fs %}{{ f|round }} {{ f|round(1) }} {{ f|round(2) }} {{ f|round(1,'ceil') }} "
        "{{ f|round(1,'floor') }} {% endfor %}{{ 5|round }} {{ 7|round(0,'floor') }}",
        vars,
        "2.0 1.5 1.5 1.5 1.5 2.0 2.5 2.5 2.5 2.5 0.0 0.1 0.12 0.2 0.1 3.0 2.7 2.67 2.7 2.6 -0.0 "
        "-0.5 -0.5 -0.5 -0.5 5 7.0");
    check_render("{{ ws|unique|list }} {{ ws|unique(case_sensitive=true)|list }} {{ "
                 "ds|unique(attribute='n')|map(attribute='v')|list }} {{ [1,1.0,2]|unique|list }}",
                 vars, "['b', 'A', 'C'] ['b', 'A', 'a', 'C'] [2, 1] [1, 2]");
    check_render(
        "{% for x in xs %}{{ loop.cycle('odd','even') }}{{ loop.cycle(1,2,3) }} {% endfor %}", vars,
        "odd1 even2 odd3 ");
    check_render("{% for n in tree recursive %}<{{ n.name }}:{{ loop.depth }}/{{ loop.depth0 }}{% "
                 "if n.children %}[{{ loop(n.children) }}]{% endif %}>{% endfor %}",
                 vars, "<a:1/0[<b:2/1><c:2/1[<d:3/2>]>]>");
    check_render("{% macro box(t) %}({{ t }}:{{ caller() }}){% endmacro %}{% set v = 5 %}{% call "
                 "box('x') %}in {{ v }}{% endcall %}",
                 vars, "(x:in 5)");
    check_render("{% macro lst(items) %}{% for i in items %}[{{ caller(i, loop.index) }}]{% endfor "
                 "%}{% endmacro %}{% call(item, k) lst(xs) %}{{ k }}={{ item }}{% endcall %}",
                 vars, "[1=3][2=1][3=2]");
    check_render("{% macro outer() %}O{{ caller() }}O{% endmacro %}{% macro inner() %}I{{ caller() "
                 "}}I{% endmacro %}{% call outer() %}{% call inner() %}z{% endcall %}{% endcall %}",
                 vars, "OIzIO");
    check_render(
        "{{ d.items()|list }} {{ (1,) }} {{ (1,'x') ~ '' }} {% set t = 1, 2 %}{{ t }} {{ "
        "d|dictsort }} {{ '%s' % ((1,2),) }} {{ [(1,2)] }} {{ (1,2)|tojson }} {{ ((1,2),)|list }}",
        vars,
        "[('a', 1), ('b', [2])] (1,) (1, 'x') (1, 2) [('a', 1), ('b', [2])] (1, 2) [(1, 2)] [1, 2] "
        "[(1, 2)]");
    check_render(
        "{% set m = {0: 'a', 4096: 'b'} %}{{ m[0] }}{{ m[4096] }}{% for k, v in m|dictsort %}{{ k "
        "+ 1 }}{{ v }}{% endfor %}{{ m.keys()|list }} {{ m|tojson }} {{ m }}",
        vars, "ab1a4097b[0, 4096] {\"0\": \"a\", \"4096\": \"b\"} {0: 'a', 4096: 'b'}");
    check_render("{% if false %}{{ x|no_such }}{% endif %}ok{{ 1 if true else (2|nope) }}{% if "
                 "false %}{{ 1 is no_such_test }}{% endif %}",
                 vars, "ok1");
    /* Markup (|safe) as markupsafe: '+' with a plain string escapes it, '~' does not */
    check_render(
        "{{ \"<a>\"|safe + \"<b>\" }} {{ \"<b>\" + \"<a>\"|safe }} {{ (\"x\"|safe + \"<\") + "
        "\"&\" }} {{ \"<a>\"|safe ~ \"<b>\" }} {{ \"<\"|safe + \"'\\\"\" }} {{ \"<\" + \"<\" }}",
        NULL, "<a>&lt;b&gt; &lt;b&gt;<a> x&lt;&amp; <a><b> <&#39;&#34; <<");
    /* tuples that are gone leave the render's tuple set: the live one still prints as one */
    check_render("{% set ns = namespace(keep=none) %}{% for i in range(100000) %}{% set t = (i, i) "
                 "%}{% if i == 7 %}{% set ns.keep = t %}{% endif %}{% endfor %}{{ t }}",
                 NULL, "");
    check_render("{% set t = (0, 1) %}{% for i in range(100000) %}{% set u = (i,) %}{% endfor %}"
                 "{{ t }}",
                 NULL, "(0, 1)");
    check_error("{% for x in [1] %}{{ x|no_such }}{% endfor %}", NULL, "unknown filter");
    check_error("{% if true %}{{ 1|no_such }}{% endif %}", NULL, "unknown filter 'no_such'");
    check_error("{{ {0: 1, 'a': 2}|dictsort }}", NULL, "not supported");
    check_error("{{ [1, 'a']|sort }}", NULL, "not supported");
    check_error("{{ 'a'|round }}", NULL, "needs a number");
    check_error("{% call nothing() %}x{% endcall %}", NULL, "needs a macro");
    check_error("{% for x in [1] recursive %}{{ loop([x]) }}{% endfor %}", NULL,
                "nested too deeply");
}
END_TEST

START_TEST(errors) {
    check_error("{{ x | no_such_filter }}", NULL, "line 1: unknown filter 'no_such_filter'");
    check_error("a\n\n{{ [1] | map('no_such') }}", NULL, "line 3: unknown filter 'no_such'");
    check_error("a\n{% if true %}x", NULL, "line 2");
    check_error("{% for x in y %}", NULL, "unclosed");
    check_error("{{ x", NULL, "line 1");
    check_error("{{ 'abc }}", NULL, "unterminated string");
    check_error("{% endif %}", NULL, "unexpected");
    check_error("{% frobnicate %}", NULL, "unknown statement");
    check_error("{{ raise_exception('Roles must alternate') }}", NULL, "Roles must alternate");
    check_error("{{ x is no_such_test }}", NULL, "unknown test");
    check_error("{{ 1 / 0 }}", NULL, "division by zero");
    check_error("{{ x.y }}", NULL, "'x' is undefined");
    check_error("{{ messages[3].content }}", "{\"messages\": []}", "undefined");
    check_error("{{ '%d' % 'a' }}", NULL, "needs a number");
    check_error("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", NULL, "nested too deeply");
    check_error("{% for a in range(2000) %}{% for b in range(2000) %}{% endfor %}{% endfor %}",
                NULL, "loop iterations");
    check_error(
        "{% set s = 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' %}"
        "{% for a in range(1000) %}{% for b in range(1000) %}{{ s }}{% endfor %}{% endfor %}",
        NULL, "output larger");
    check_error("{% set ns = namespace(x=1) %}{% for i in range(100000) %}{% set ns.x = [ns.x] %}"
                "{% endfor %}{{ ns.x }}",
                NULL, "nested more than");
    check_render("{% set ns = namespace(a=1) %}{% set ns.me = ns %}{% set ns.a = 2 %}{{ ns.me.a }}",
                 NULL, "1");
    kv_error err = {{0}};
    char *nested = malloc(20001);
    for (int i = 0; i < 10000; i++) {
        nested[i] = '(';
        nested[10000 + i] = ')';
    }
    nested[20000] = 0;
    char *src = malloc(20010);
    snprintf(src, 20010, "{{ %s }}", nested);
    ck_assert_ptr_null(chat_template_parse(src, strlen(src), &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "nested too deeply"));
    free(src);
    free(nested);
}
END_TEST

START_TEST(limits) {
    chat_template_limits lim = chat_template_default_limits();
    lim.max_iterations = 3;
    kv_error err = {{0}};
    const char *src = "{% for x in [0, 1, 2, 3] %}{{ x }}{% endfor %}";
    chat_template *t = chat_template_parse(src, strlen(src), &err);
    ck_assert_ptr_nonnull(t);
    json_t *vars = json_object();
    char *out = NULL;
    ck_assert_int_eq(chat_template_render(t, vars, &lim, &out, NULL, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "loop iterations"));
    lim = chat_template_default_limits();
    lim.max_output_bytes = 3;
    ck_assert_int_eq(chat_template_render(t, vars, &lim, &out, NULL, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "output larger"));
    size_t n = 0;
    ck_assert_int_eq(chat_template_render(t, vars, NULL, &out, &n, &err), 0);
    ck_assert_str_eq(out, "0123");
    ck_assert_uint_eq(n, 4);
    free(out);
    json_decref(vars);
    chat_template_free(t);
}
END_TEST

/* ---- where the template comes from ---- */

Suite *chat_suite(void);
Suite *chat_suite(void) {
    Suite *s = suite_create("chat_template");
    TCase *tc = tcase_create("real");
    tcase_add_test(tc, shared_real_templates);
    tcase_add_test(tc, extra_real_templates);
    tcase_add_test(tc, whitespace_control);
    tcase_add_test(tc, loops);
    tcase_add_test(tc, expressions);
    tcase_add_test(tc, filters_and_tests);
    tcase_add_test(tc, macros);
    tcase_add_test(tc, jinja_more);
    tcase_add_test(tc, errors);
    tcase_add_test(tc, limits);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *r = srunner_create(chat_suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}

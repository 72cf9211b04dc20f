#!/usr/bin/env python3
"""Writes cases.json (conversations + the text Jinja2 renders) for each template dir here, in the
environment of transformers' apply_chat_template (trim_blocks, lstrip_blocks, loopcontrols, its
tojson, raise_exception, strftime_now pinned to 2024-07-26 12:00 local time as the C test pins it).
Run: python3 make_goldens.py   (needs python3-jinja2)."""
import copy, datetime, json, os, sys
import jinja2, jinja2.ext, jinja2.sandbox

HERE = os.path.dirname(os.path.abspath(__file__))
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}

class Generation(jinja2.ext.Extension):
    """transformers' AssistantTracker without the tracking: {% generation %}body{% endgeneration %}."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_generation_support"), [], [],
                                      body).set_lineno(lineno)

    def _generation_support(self, caller):
        return caller()


def env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)
    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)
    def strftime_now(fmt):
        return datetime.datetime(2024, 7, 26, 12, 0).strftime(fmt)
    e = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                     extensions=[Generation, jinja2.ext.loopcontrols])
    e.filters["tojson"] = tojson
    e.globals["raise_exception"] = raise_exception
    e.globals["strftime_now"] = strftime_now
    return e

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                         "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city"]}}}]
CALL = {"role": "assistant", "content": "", "tool_calls": [{"id": "call_abc123456", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"days\": 1200.0}"}}]}
RESULT = {"role": "tool", "tool_call_id": "call_abc123456", "name": "get_weather",
          "content": "{\"temp\": 21.5}"}
CASES = [
    {"name": "user_only", "messages": [{"role": "user", "content": "Hello!"}],
     "add_generation_prompt": True},
    {"name": "system_user", "messages": [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": "Capital of France?"}], "add_generation_prompt": True},
    {"name": "multi_turn_no_prompt", "messages": [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! ✨ How can I help?"},
     {"role": "user", "content": "  Tell me a \"joke\"\n"}], "add_generation_prompt": False},
    {"name": "assistant_thinking", "messages": [{"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"},
     {"role": "user", "content": "3+3?"}], "add_generation_prompt": True},
    {"name": "tools_call_and_result", "messages": [{"role": "system", "content": "Use tools."},
     {"role": "user", "content": "Weather in Paris?"}, CALL, RESULT],
     "tools": TOOLS, "add_generation_prompt": True},
    {"name": "tools_offered", "messages": [{"role": "user", "content": "Weather in Paris?"}],
     "tools": TOOLS, "add_generation_prompt": True},
    {"name": "tools_call_id9", "messages": [{"role": "user", "content": "Weather in Paris?"},
     dict(CALL, tool_calls=[dict(CALL["tool_calls"][0], id="a1b2c3d4e")]),
     dict(RESULT, tool_call_id="a1b2c3d4e")], "tools": TOOLS, "add_generation_prompt": True,
     "note": "a 9-character alphanumeric call id, as Mistral's templates require"},
    {"name": "kwargs", "messages": [{"role": "user", "content": "Hi"}], "add_generation_prompt": True,
     "chat_template_kwargs": {"enable_thinking": False, "reasoning_effort": "low"}},
]

def render(tmpl, case):
    msgs = copy.deepcopy(case["messages"])
    for m in msgs:  # vLLM parses tool_calls[].function.arguments before rendering
        for tc in m.get("tool_calls") or []:
            a = tc["function"]["arguments"]
            tc["function"]["arguments"] = json.loads(a) if a else {}
    return tmpl.render(messages=msgs, tools=case.get("tools"), documents=None,
                       add_generation_prompt=case["add_generation_prompt"], **SPECIAL,
                       **case.get("chat_template_kwargs", {}))

def main():
    for d in sorted(os.listdir(HERE)):
        path = os.path.join(HERE, d, "template.jinja")
        if not os.path.isfile(path):
            continue
        try:
            tmpl = env().from_string(open(path, encoding="utf-8").read())
        except jinja2.exceptions.TemplateSyntaxError as e:
            print(f"{d}: SKIPPED, Jinja2 cannot parse it: {e}")
            continue
        out = []
        for case in CASES:
            c = copy.deepcopy(case)
            try:
                c["expected_text"] = render(tmpl, case)
            except jinja2.exceptions.TemplateError as e:
                c["expected_error"] = True
                c["error_message"] = str(e) if type(e) is jinja2.exceptions.TemplateError else None
            except Exception as e:  # a Python error inside the template: any error will do
                c["expected_error"] = True
                c["error_message"] = None
                c["note"] = "python: " + type(e).__name__
            out.append(c)
        with open(os.path.join(HERE, d, "cases.json"), "w", encoding="utf-8") as f:
            json.dump(out, f, ensure_ascii=False, indent=1)
            f.write("\n")
        with open(os.path.join(HERE, d, "special_tokens.json"), "w") as f:
            json.dump(SPECIAL, f, indent=1)
            f.write("\n")
        errs = sum(1 for c in out if c.get("expected_error"))
        print(f"{d}: {len(out)} cases, {errs} errors ({jinja2.__version__})")

if __name__ == "__main__":
    sys.exit(main())

"""Structured outputs and logit_bias on the real kvserve (CPU): stories260K (its real SentencePiece
tokenizer with byte fallback) and the demo model (random weights, byte tokens) sample at
temperature 1 over many seeds; every output must parse as JSON and validate against its schema
(python3-jsonschema, with format checking), every regex output must fullmatch, every choice must be
one of the choices. logit_bias -100 must ban a token and +100 force it. Bad schemas get a 400 naming
the keyword."""
import json
import os
import re
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import kvserve_harness as h  # noqa: E402

try:
    import jsonschema
except ImportError:  # the validator is a test dependency (scripts/install-deps)
    jsonschema = None

SEEDS = range(40)
# A minimal chat template: stories260K's context (512) is too small for a real one with tools.
TEMPLATE_TEXT = "{% for m in messages %}{{ m.content }}\n{% endfor %}"
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                         "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "days"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"tz": {"enum": ["UTC", "CET"]}}, "required": ["tz"]}}},
]

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pet": {"enum": ["cat", "dog", None]},
        "born": {"type": "string", "format": "date"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6},
                 "minItems": 1, "maxItems": 3},
        "score": {"type": "number", "minimum": 0, "maximum": 10},
        "happy": {"type": "boolean"},
    },
    "required": ["name", "age", "pet", "happy"],
    "additionalProperties": False,
}

NESTED = {
    "$defs": {
        "point": {"type": "object", "properties": {"x": {"type": "integer"},
                                                    "y": {"type": "integer"}},
                  "required": ["x", "y"]},
    },
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "kind": {"const": "shape"},
        "points": {"type": "array", "items": {"$ref": "#/$defs/point"}, "maxItems": 3},
        "label": {"anyOf": [{"type": "string", "maxLength": 5}, {"type": "null"}]},
    },
    "required": ["id", "kind", "points", "label"],
}

REGEX = r"(red|green|blue) [a-z]{1,8}, [0-9]{2,4}\."


def validate(test, text, schema):
    try:
        value = json.loads(text)
    except ValueError as exc:
        test.fail(f"not JSON ({exc}): {text!r}")
    if jsonschema is not None:
        jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
    return value


class StructuredCase:
    """Shared tests; subclasses set server and the prompt."""
    prompt = "Once upon a time"

    def complete(self, **body):
        body.setdefault("prompt", self.prompt)
        body.setdefault("temperature", 1.0)
        return self.server.complete(**body)["choices"][0]

    def test_json_schema_always_validates(self):
        for schema in (PERSON, NESTED):
            for seed in SEEDS:
                ch = self.complete(seed=seed, max_tokens=400, response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "t", "schema": schema, "strict": True}})
                self.assertEqual(ch["finish_reason"], "stop", ch)
                validate(self, ch["text"], schema)

    def test_vllm_fields_and_choice_and_regex(self):
        for seed in SEEDS:
            ch = self.complete(seed=seed, max_tokens=60, guided_regex=REGEX)
            self.assertEqual(ch["finish_reason"], "stop", ch)
            self.assertRegex(ch["text"], "^" + REGEX + "$")
            ch = self.complete(seed=seed, max_tokens=30,
                               structured_outputs={"choice": ["yes", "no", "not sure"]})
            self.assertIn(ch["text"], ["yes", "no", "not sure"])
            ch = self.complete(seed=seed, max_tokens=30, guided_choice=["alpha", "beta"])
            self.assertIn(ch["text"], ["alpha", "beta"])
            ch = self.complete(seed=seed, max_tokens=400, guided_json=json.dumps(PERSON))
            validate(self, ch["text"], PERSON)
            ch = self.complete(seed=seed, max_tokens=60, structured_outputs={"regex": r"\d{3}-\w+"})
            self.assertTrue(re.fullmatch(r"\d{3}-\w+", ch["text"], re.ASCII), ch)

    def test_json_object_parses_when_it_ends(self):
        ended = 0
        for seed in SEEDS:
            ch = self.complete(seed=seed, max_tokens=200, response_format={"type": "json_object"})
            if ch["finish_reason"] == "stop":
                self.assertIsInstance(validate(self, ch["text"], {"type": "object"}), dict)
                ended += 1
            else:  # cut by max_tokens: still a prefix of an object
                self.assertEqual(ch["finish_reason"], "length")
                self.assertTrue(ch["text"].startswith("{"), ch)
        print(f"json_object: {ended}/{len(SEEDS)} seeds ended within 200 tokens")

    def test_logit_bias_bans_and_forces(self):
        base = self.server.complete(prompt=self.prompt, max_tokens=8, temperature=0,
                                    return_token_ids=True)["choices"][0]
        first = base["token_ids"][0]
        banned = self.server.complete(prompt=self.prompt, max_tokens=8, temperature=0,
                                      return_token_ids=True,
                                      logit_bias={str(first): -100})["choices"][0]
        self.assertNotIn(first, banned["token_ids"])
        forced_id = base["token_ids"][-1] if base["token_ids"][-1] != first else 100
        for seed in range(10):
            out = self.server.complete(prompt=self.prompt, max_tokens=6, temperature=1.0,
                                       seed=seed, return_token_ids=True, ignore_eos=True,
                                       logit_bias={str(forced_id): 100})["choices"][0]
            self.assertEqual(out["token_ids"], [forced_id] * 6)

    def test_errors_name_the_parameter(self):
        def err(body, param, needle):
            body = dict(body, prompt=self.prompt, model=self.server.name)
            status, _, out = self.server.request("POST", "/v1/completions", body)
            self.assertEqual(status, 400, out)
            self.assertEqual(out["error"]["param"], param, out)
            self.assertIn(needle, out["error"]["message"])
        err({"logit_bias": {"99999999": 1}}, "logit_bias", "99999999")
        err({"logit_bias": {"5": 101}}, "logit_bias", "[-100, 100]")
        err({"logit_bias": {"x": 1}}, "logit_bias", "'x'")
        err({"response_format": {"type": "json_schema", "json_schema": {
            "name": "t", "schema": {"type": "object", "patternProperties": {}}}}},
            "response_format", "patternProperties")
        err({"response_format": {"type": "json_schema", "json_schema": {
            "name": "t", "schema": {"type": "string", "format": "hostname"}}}},
            "response_format", "hostname")
        err({"guided_regex": "(?=x)"}, "guided_regex", "lookaround")
        err({"guided_regex": "a", "guided_choice": ["b"]}, "guided_choice", "only one")
        err({"response_format": {"type": "yaml"}}, "response_format", "yaml")
        err({"structured_outputs": {"grammar": "root ::= x"}}, "structured_outputs", "grammar")
        err({"guided_regex": "[ab]*a[ab]{20}"}, "guided_regex", "max_dfa_states")


@h.needs_model
class Stories260K(StructuredCase, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        template = os.path.join(cls.tmp.name, "t.jinja")
        with open(template, "w") as f:
            f.write(TEMPLATE_TEXT)
        cls.server = h.Server("--chat-template", template)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.tmp.cleanup()

    def chat(self, **body):
        body.setdefault("model", self.server.name)
        body.setdefault("messages", [{"role": "user", "content": "Tell me about a person."}])
        status, _, out = self.server.request("POST", "/v1/chat/completions", body)
        self.assertEqual(status, 200, out)
        return out["choices"][0]

    def test_chat_response_format(self):
        for seed in range(20):
            ch = self.chat(seed=seed, temperature=1.0, max_tokens=400, response_format={
                "type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}})
            validate(self, ch["message"]["content"], PERSON)

    def test_tool_choice_named_and_required(self):
        params = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
        for seed in range(20):
            for name in params:
                ch = self.chat(seed=seed, temperature=1.0, max_tokens=200, tools=TOOLS,
                               tool_choice={"type": "function", "function": {"name": name}})
                self.assertEqual(ch["finish_reason"], "tool_calls", ch)
                calls = ch["message"]["tool_calls"]
                self.assertEqual(len(calls), 1)
                self.assertEqual(calls[0]["function"]["name"], name)
                validate(self, calls[0]["function"]["arguments"], params[name])
            ch = self.chat(seed=seed, temperature=1.0, max_tokens=400, tools=TOOLS,
                           tool_choice="required")
            if ch["finish_reason"] == "length":  # a long list of calls, cut: no calls parsed
                continue
            self.assertEqual(ch["finish_reason"], "tool_calls", ch)
            for call in ch["message"]["tool_calls"]:
                validate(self, call["function"]["arguments"], params[call["function"]["name"]])
        # n choices: every call has its own id (they derive from the choice, as when streamed)
        name = next(iter(params))
        body = {"model": self.server.name, "n": 3, "seed": 1, "temperature": 1.0,
                "max_tokens": 200, "tools": TOOLS,
                "messages": [{"role": "user", "content": "Tell me about a person."}],
                "tool_choice": {"type": "function", "function": {"name": name}}}
        status, _, out = self.server.request("POST", "/v1/chat/completions", body)
        self.assertEqual(status, 200, out)
        ids = [c["message"]["tool_calls"][0]["id"] for c in out["choices"]]
        self.assertEqual(len(set(ids)), 3, ids)
        status, _, out = self.server.request("POST", "/v1/chat/completions", {
            "model": self.server.name, "messages": [{"role": "user", "content": "x"}],
            "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}})
        self.assertEqual((status, out["error"]["param"]), (400, "tool_choice"), out)

    def chat_stream(self, **body):
        """A streamed chat completion: the parsed chunks of its SSE events ([DONE] dropped)."""
        body.setdefault("model", self.server.name)
        body.setdefault("messages", [{"role": "user", "content": "Tell me about a person."}])
        body["stream"] = True
        conn = self.server.connect()
        try:
            conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            self.assertEqual(r.status, 200)
            text = r.read().decode("utf-8")
        finally:
            conn.close()
        events = [e[len("data: "):] for e in text.split("\n\n") if e.startswith("data: ")]
        self.assertEqual(events[-1], "[DONE]")
        return [json.loads(e) for e in events[:-1]]

    def test_tool_choice_named_streamed(self):
        """The forced call streams as delta.tool_calls whose pieces assemble to the named function
        and arguments valid for its schema, and the stream ends with finish_reason tool_calls."""
        params = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
        name = next(iter(params))
        for seed in range(5):
            chunks = self.chat_stream(seed=seed, temperature=1.0, max_tokens=200, tools=TOOLS,
                                      tool_choice={"type": "function",
                                                   "function": {"name": name}})
            choices = [c["choices"][0] for c in chunks if c.get("choices")]
            calls = {}
            for ch in choices:
                for tc in ch.get("delta", {}).get("tool_calls") or []:
                    got = calls.setdefault(tc["index"], {"name": "", "arguments": ""})
                    fn = tc.get("function", {})
                    got["name"] += fn.get("name") or ""
                    got["arguments"] += fn.get("arguments") or ""
            self.assertEqual(choices[-1]["finish_reason"], "tool_calls", choices[-1])
            self.assertEqual(len(calls), 1, calls)
            self.assertEqual(calls[0]["name"], name)
            validate(self, calls[0]["arguments"], params[name])


class Demo(StructuredCase, unittest.TestCase):
    """The demo model: random weights over byte tokens, so any byte is likely at any point."""
    prompt = "Hello"

    @classmethod
    def setUpClass(cls):
        cls.server = h.Server(model=None, name="kvserve-demo-random-weights")

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()


if __name__ == "__main__":
    if jsonschema is None:
        print("note: python3-jsonschema missing: outputs are parsed but not validated")
    h.run_tests(__name__, needs_model=False)  # the demo model's half needs no outside data

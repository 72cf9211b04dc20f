"""POST /v1/chat/completions and /tokenize with messages on the real kvserve: a copy of
stories260K whose tokenizer_config.json holds Qwen2.5's real chat template (testdata
chat_templates). The rendered prompts are checked against the text transformers rendered
(cases.json), generation against /v1/completions on the same token ids, streaming against
non-streaming; a model without a template and a template's raise_exception are 400s."""
import json
import os
import shutil
import sys
import tempfile
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvserve_harness as kh  # noqa: E402

TEMPLATES = os.path.join(os.environ.get("KVSERVE_TESTDATA", ""), "chat_templates")
MESSAGES = [{"role": "system", "content": "You are a storyteller."},
            {"role": "user", "content": "Tell me about a cat."}]


def load_cases(model):
    with open(os.path.join(TEMPLATES, model, "cases.json")) as f:
        return json.load(f)


def model_copy(tmp, name, template=None):
    """stories260K in tmp/name, its tokenizer_config.json holding template (None: no template)."""
    d = os.path.join(tmp, name)
    shutil.copytree(kh.testdata_model(), d)
    cfg_path = os.path.join(d, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg.pop("chat_template", None)
    if template is not None:
        cfg["chat_template"] = template
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    return d


def read_template(model):
    with open(os.path.join(TEMPLATES, model, "template.jinja")) as f:
        return f.read()


class Chat(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="kvserve-chat-")
        d = model_copy(cls.tmp, "qwen", read_template("qwen2.5-7b-instruct"))
        cls.srv = kh.Server("--model", d, model=None, name=d)

    @classmethod
    def tearDownClass(cls):
        rc = cls.srv.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        if rc != 0:
            raise AssertionError(f"kvserve exited with {rc}:\n" + "".join(cls.srv.log))

    def post(self, path, body):
        return self.srv.request("POST", path, body)[::2]

    def chat(self, **body):
        status, out = self.post("/v1/chat/completions", body)
        self.assertEqual(status, 200, out)
        return out

    def tokenize_text(self, text):
        status, out = self.post("/tokenize", {"prompt": text, "add_special_tokens": False})
        self.assertEqual(status, 200, out)
        return out["tokens"]

    def stream(self, body):
        """A streamed chat: (list of chunks, saw [DONE])."""
        conn = self.srv.connect()
        try:
            conn.request("POST", "/v1/chat/completions", body=json.dumps(dict(body, stream=True)),
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            self.assertEqual(r.status, 200)
            self.assertTrue(r.getheader("Content-Type").startswith("text/event-stream"))
            events, done = [], False
            for line in r.read().decode("utf-8").split("\n"):
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    continue
                events.append(json.loads(line[6:]))
            return events, done
        finally:
            conn.close()

    def test_tokenize_messages_is_the_rendered_text_tokenized(self):
        """/tokenize with messages gives the ids of the text transformers renders (cases.json)."""
        n = 0
        for case in load_cases("qwen2.5-7b-instruct"):
            with self.subTest(case=case["name"]):
                body = {"messages": case["messages"],
                        "add_generation_prompt": case["add_generation_prompt"]}
                if case.get("tools") is not None:
                    body["tools"] = case["tools"]
                if case.get("chat_template_kwargs"):
                    body["chat_template_kwargs"] = case["chat_template_kwargs"]
                status, out = self.post("/tokenize", body)
                self.assertEqual(status, 200, out)
                self.assertEqual(out["tokens"], self.tokenize_text(case["expected_text"]))
                self.assertEqual(out["count"], len(out["tokens"]))
                n += 1
        self.assertGreaterEqual(n, 10)

    def test_tokenize_add_special_tokens(self):
        """add_special_tokens (default false) puts the tokenizer's BOS in front."""
        plain = self.post("/tokenize", {"messages": MESSAGES})[1]["tokens"]
        special = self.post("/tokenize", {"messages": MESSAGES, "add_special_tokens": True})[1]
        self.assertEqual(special["tokens"], [1] + plain)

    def test_same_tokens_as_completions(self):
        """Greedy chat equals greedy /v1/completions on the ids /tokenize gives for the messages."""
        ids = self.post("/tokenize", {"messages": MESSAGES})[1]["tokens"]
        comp = self.srv.complete(prompt=ids, max_tokens=24, temperature=0, ignore_eos=True)
        out = self.chat(messages=MESSAGES, max_tokens=24, temperature=0, ignore_eos=True)
        self.assertTrue(out["id"].startswith("chatcmpl-"))
        self.assertEqual(out["object"], "chat.completion")
        self.assertEqual(out["model"], self.srv.name)
        self.assertIsInstance(out["created"], int)
        choice = out["choices"][0]
        self.assertEqual(choice["index"], 0)
        self.assertEqual(choice["message"]["role"], "assistant")
        self.assertEqual(choice["message"]["content"], comp["choices"][0]["text"])
        self.assertEqual(choice["finish_reason"], "length")
        self.assertIsNone(choice["logprobs"])
        u = out["usage"]
        self.assertEqual(u["prompt_tokens"], len(ids))
        self.assertEqual(u["completion_tokens"], 24)
        self.assertEqual(u["total_tokens"], len(ids) + 24)
        self.assertIn("cached_tokens", u["prompt_tokens_details"])

    def test_max_completion_tokens(self):
        out = self.chat(messages=MESSAGES, max_completion_tokens=5, temperature=0,
                        ignore_eos=True)
        self.assertEqual(out["usage"]["completion_tokens"], 5)
        self.assertEqual(out["choices"][0]["finish_reason"], "length")

    def test_repeat_hits_the_prefix_cache(self):
        """The second identical chat finds the prompt's full blocks in the prefix cache."""
        msgs = [{"role": "user", "content": "A dog ran into the park and saw a big red ball."}]
        first = self.chat(messages=msgs, max_tokens=2, temperature=0)
        second = self.chat(messages=msgs, max_tokens=2, temperature=0)
        n = first["usage"]["prompt_tokens"]
        cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        self.assertEqual(cached, (n - 1) // 16 * 16)

    def test_content_parts_equal_a_string(self):
        parts = [{"role": "user", "content": [{"type": "text", "text": "Tell me"},
                                              {"type": "text", "text": "about a cat."}]}]
        joined = [{"role": "user", "content": "Tell me\nabout a cat."}]
        a = self.post("/tokenize", {"messages": parts})[1]["tokens"]
        b = self.post("/tokenize", {"messages": joined})[1]["tokens"]
        self.assertEqual(a, b)

    def test_stream_deltas_concatenate_to_the_content(self):
        body = {"messages": MESSAGES, "max_tokens": 20, "temperature": 0, "ignore_eos": True,
                "stream_options": {"include_usage": True}}
        full = self.chat(**{k: v for k, v in body.items() if k != "stream_options"})
        events, done = self.stream(body)
        self.assertTrue(done)
        self.assertTrue(all(e["object"] == "chat.completion.chunk" for e in events))
        self.assertEqual(len({e["id"] for e in events}), 1)
        first = events[0]["choices"][0]
        self.assertEqual(first["delta"]["role"], "assistant")
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                       if e["choices"])
        self.assertEqual(text, full["choices"][0]["message"]["content"])
        finishes = [e["choices"][0]["finish_reason"] for e in events if e["choices"]]
        self.assertEqual(finishes[-1], "length")
        self.assertTrue(all(f is None for f in finishes[:-1]))
        usage = events[-1]
        self.assertEqual(usage["choices"], [])
        self.assertEqual(usage["usage"]["completion_tokens"], 20)
        self.assertEqual(usage["usage"]["prompt_tokens"], full["usage"]["prompt_tokens"])

    def test_n_choices_and_seed(self):
        body = dict(messages=MESSAGES, max_tokens=8, temperature=1.0, seed=7, n=2)
        a, b = self.chat(**body), self.chat(**body)
        self.assertEqual([c["index"] for c in a["choices"]], [0, 1])
        self.assertEqual([c["message"]["content"] for c in a["choices"]],
                         [c["message"]["content"] for c in b["choices"]])

    def test_logprobs_chat_format(self):
        out = self.chat(messages=MESSAGES, max_tokens=4, temperature=0, ignore_eos=True,
                        logprobs=True, top_logprobs=3)
        content = out["choices"][0]["logprobs"]["content"]
        self.assertEqual(len(content), 4)
        for entry in content:
            self.assertEqual(set(entry), {"token", "logprob", "bytes", "top_logprobs"})
            self.assertEqual(len(entry["top_logprobs"]), 3)
            self.assertEqual(entry["bytes"], list(entry["token"].encode("utf-8")))
            # greedy: the chosen token is the most likely one
            self.assertEqual(entry["top_logprobs"][0]["token"], entry["token"])
        self.assertEqual("".join(e["token"] for e in content),
                         out["choices"][0]["message"]["content"])
        status, err = self.post("/v1/chat/completions", {"messages": MESSAGES, "top_logprobs": 2})
        self.assertEqual(status, 400)
        self.assertEqual(err["error"]["param"], "top_logprobs")

    def test_stop_string(self):
        full = self.chat(messages=MESSAGES, max_tokens=20, temperature=0, ignore_eos=True)
        text = full["choices"][0]["message"]["content"]
        stop = text[6:9]
        out = self.chat(messages=MESSAGES, max_tokens=20, temperature=0, ignore_eos=True,
                        stop=[stop])
        self.assertEqual(out["choices"][0]["message"]["content"], text[:text.index(stop)])
        self.assertEqual(out["choices"][0]["finish_reason"], "stop")

    def test_continue_final_message(self):
        msgs = MESSAGES + [{"role": "assistant", "content": "Once upon a time"}]
        status, out = self.post("/tokenize", {"messages": msgs, "add_generation_prompt": False,
                                              "continue_final_message": True})
        self.assertEqual(status, 200, out)
        rendered = ("<|im_start|>system\nYou are a storyteller.<|im_end|>\n<|im_start|>user\n"
                    "Tell me about a cat.<|im_end|>\n<|im_start|>assistant\nOnce upon a time")
        self.assertEqual(out["tokens"], self.tokenize_text(rendered))

    def test_tool_call_arguments_are_parsed(self):
        """An assistant tool call's arguments string is an object to the template (cases.json)."""
        case = next(c for c in load_cases("qwen2.5-7b-instruct")
                    if c["name"] == "tool_call_roundtrip")
        status, out = self.post("/tokenize", {"messages": case["messages"],
                                              "tools": case["tools"]})
        self.assertEqual(status, 200, out)
        self.assertEqual(out["tokens"], self.tokenize_text(case["expected_text"]))
        # longer than stories260K's 512 tokens: refused like a long completion prompt
        status, out = self.post("/v1/chat/completions", {"messages": case["messages"],
                                                         "tools": case["tools"],
                                                         "tool_choice": "auto"})
        self.assertEqual(status, 400, out)
        self.assertEqual(out["error"]["code"], "context_length_exceeded")
        self.assertEqual(out["error"]["param"], "messages")
        self.assertIn("maximum context length is 512 tokens", out["error"]["message"])
        bad = [dict(m) for m in case["messages"]]
        for m in bad:
            for call in m.get("tool_calls") or []:
                call["function"] = dict(call["function"], arguments="{not json")
        status, out = self.post("/v1/chat/completions", {"messages": bad, "tools": case["tools"]})
        self.assertEqual(status, 400, out)
        self.assertIn("arguments", out["error"]["message"])

    def test_concurrent_renders_agree(self):
        """One parsed template rendered by several HTTP threads at once gives the same ids."""
        cases = load_cases("qwen2.5-7b-instruct")
        bodies = [{"messages": c["messages"], "tools": c.get("tools"),
                   "add_generation_prompt": c["add_generation_prompt"]} for c in cases]
        want = [self.post("/tokenize", b)[1]["tokens"] for b in bodies]
        results = {}

        def worker(k):
            results[k] = [self.post("/tokenize", b)[1].get("tokens") for b in bodies]

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(len(results), 6)
        for got in results.values():
            self.assertEqual(got, want)

    def test_bad_requests(self):
        cases = [
            ({"messages": []}, "messages"),
            ({}, "messages"),
            ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
            ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "content"),
            ({"messages": MESSAGES, "tool_choice": "required"}, "tool_choice"),
            ({"messages": MESSAGES, "tool_choice": {"type": "function",
                                                    "function": {"name": "f"}}}, "tool_choice"),
            ({"messages": MESSAGES, "temperature": -1}, "temperature"),
            ({"messages": MESSAGES, "max_tokens": 100000}, "max_tokens"),
            ({"messages": MESSAGES, "logprobs": True, "top_logprobs": 1000}, "top_logprobs"),
            ({"messages": MESSAGES, "echo": True}, "echo"),
            ({"messages": MESSAGES, "chat_template_kwargs": 3}, "chat_template_kwargs"),
            ({"messages": MESSAGES, "continue_final_message": True}, "continue_final_message"),
        ]
        for body, param in cases:
            with self.subTest(body=body):
                status, out = self.post("/v1/chat/completions", body)
                self.assertEqual(status, 400, out)
                self.assertEqual(out["error"]["type"], "invalid_request_error")
                self.assertEqual(out["error"]["param"], param)
        status, out = self.post("/v1/chat/completions", {"messages": MESSAGES, "model": "other"})
        self.assertEqual(status, 404)


class ChatErrors(unittest.TestCase):
    """A model without a template, and a template that raises."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="kvserve-chat-")
        cls.plain = kh.Server("--model", model_copy(cls.tmp, "plain"), model=None, name="plain")
        mistral = os.path.join(cls.tmp, "mistral.jinja")
        with open(mistral, "w") as f:
            f.write(read_template("mistral-nemo-instruct-2407"))
        # --chat-template overrides the model's own template (here: none)
        cls.mistral = kh.Server("--model", model_copy(cls.tmp, "m"), "--chat-template", mistral,
                                model=None, name="m")

    @classmethod
    def tearDownClass(cls):
        rcs = [cls.plain.stop(), cls.mistral.stop()]
        shutil.rmtree(cls.tmp, ignore_errors=True)
        if rcs != [0, 0]:
            raise AssertionError(f"kvserve exited with {rcs}")

    def test_no_template_is_400(self):
        for path in ("/v1/chat/completions", "/tokenize"):
            status, _, out = self.plain.request("POST", path, {"messages": MESSAGES})
            self.assertEqual(status, 400, out)
            self.assertIn("no chat template", out["error"]["message"])
        # completions still work
        status, _, _ = self.plain.request("POST", "/v1/completions",
                                          {"prompt": "Once", "max_tokens": 2})
        self.assertEqual(status, 200)

    def test_raise_exception_is_400_with_its_message(self):
        n = 0
        for case in load_cases("mistral-nemo-instruct-2407"):
            if not case.get("expected_error"):
                continue
            with self.subTest(case=case["name"]):
                body = {"messages": case["messages"], "max_tokens": 2}
                if case.get("tools") is not None:
                    body["tools"] = case["tools"]
                status, _, out = self.mistral.request("POST", "/v1/chat/completions", body)
                self.assertEqual(status, 400, out)
                self.assertIn(case["error_message"], out["error"]["message"])
                n += 1
        self.assertGreaterEqual(n, 3)

    def test_override_template_renders(self):
        case = next(c for c in load_cases("mistral-nemo-instruct-2407")
                    if c["name"] == "multi_turn")
        status, _, out = self.mistral.request("POST", "/tokenize", {
            "messages": case["messages"], "add_generation_prompt": case["add_generation_prompt"]})
        self.assertEqual(status, 200, out)
        status, _, ref = self.mistral.request("POST", "/tokenize", {
            "prompt": case["expected_text"], "add_special_tokens": False})
        self.assertEqual(out["tokens"], ref["tokens"])


if __name__ == "__main__":
    if not os.path.isdir(TEMPLATES):
        print("SKIP: needs the chat templates and stories260K of the outside test data (set "
              "KVSERVE_TESTDATA, default ../shared/testdata)")
        sys.exit(kh.SKIP)
    kh.run_tests(__name__)

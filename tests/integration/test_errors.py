"""Every error the real kvserve answers, with its status and OpenAI-shaped body, and the server
still answering correctly after each: 400 (invalid parameters, invalid JSON, prompt + max_tokens
over the context), 401 (API key), 404 (route, model), 413 (body size), 503 (queue full)."""
import os
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvserve_harness as kh  # noqa: E402

KEY = "sk-kvserve-test"
AUTH = {"Authorization": f"Bearer {KEY}"}


class Errors(unittest.TestCase):
    """One server with an API key and a 4 KiB body limit."""

    @classmethod
    def setUpClass(cls):
        cls.srv = kh.Server("--api-key", KEY, "--max-body-bytes", "4096",
                            model=kh.STORIES_OR_DEMO)
        cls.exp = kh.once_upon_a_time(cls.srv)
        models = cls.srv.request("GET", "/v1/models", headers=AUTH)[2]
        cls.max_model_len = models["data"][0]["max_model_len"]

    @classmethod
    def tearDownClass(cls):
        rc = cls.srv.stop()
        if rc != 0:
            raise AssertionError(f"kvserve exited with {rc}:\n" + "".join(cls.srv.log))

    def post(self, body=None, path="/v1/completions", headers=AUTH, raw=None):
        return self.srv.request("POST", path, body, headers=headers, raw=raw)

    def assert_error(self, reply, status, code=None, param=None, message=None):
        got_status, headers, body = reply
        self.assertEqual(got_status, status, body)
        self.assertEqual(headers.get("content-type"), "application/json")
        self.assertIsInstance(body, dict, body)
        err = body["error"]
        self.assertEqual(set(err), {"message", "type", "param", "code"})
        self.assertIsInstance(err["message"], str)
        self.assertTrue(err["message"])
        if code is not None:
            self.assertEqual(err["code"], code)
        if param is not None:
            self.assertEqual(err["param"], param)
        if message is not None:
            self.assertIn(message, err["message"])
        self.assert_still_serving()

    def assert_still_serving(self):
        status, _, out = self.post({"model": self.srv.name, "prompt": self.exp["prompt"],
                                    "max_tokens": self.exp["max_tokens"], "temperature": 0})
        self.assertEqual(status, 200, out)
        self.assertEqual(out["choices"][0]["text"], self.exp["text"])

    # ---- 400 ----

    def test_400_invalid_parameters(self):
        cases = [({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"),
                 ({"max_tokens": 0}, "max_tokens"), ({"n": 0}, "n"),
                 ({"logprobs": 1000}, "logprobs"), ({"stop": 5}, "stop")]
        for extra, param in cases:
            with self.subTest(param=param):
                body = {"model": self.srv.name, "prompt": "Hello", "max_tokens": 4}
                body.update(extra)
                self.assert_error(self.post(body), 400, param=param)

    def test_400_sampling_ranges_name_the_param_and_the_value(self):
        # One range table (model/sampler.c) checked on the value as sent: the 400 names the
        # parameter and quotes the value, never its float (1e300 is not "inf").
        cases = [({"temperature": -1}, "got -1"), ({"temperature": 1e300}, "got 1e+300"),
                 ({"top_p": 0}, "got 0"), ({"top_p": 1.5}, "got 1.5"),
                 ({"top_k": -2}, "got -2"), ({"min_p": 2}, "got 2"),
                 ({"repetition_penalty": 3}, "got 3"), ({"presence_penalty": 2.5}, "got 2.5"),
                 ({"presence_penalty": -3}, "got -3"), ({"frequency_penalty": -2.5}, "got -2.5"),
                 ({"frequency_penalty": 2.25}, "got 2.25")]
        for extra, message in cases:
            (param, value), = extra.items()
            with self.subTest(param=param, value=value):
                body = {"model": self.srv.name, "prompt": "hi", "max_tokens": 4}
                body.update(extra)
                self.assert_error(self.post(body), 400, code="invalid_value", param=param,
                                  message=f"'{param}' must be ")
                status, _, out = self.post(body)
                self.assertIn(message, out["error"]["message"])
                self.assertNotIn("inf", out["error"]["message"])

    def test_400_invalid_prompt(self):
        for prompt in [None, 5, [], [[]], [1, "a"], [1, -3], [1, 100000]]:
            with self.subTest(prompt=prompt):
                body = {"model": self.srv.name, "max_tokens": 4}
                if prompt is not None:
                    body["prompt"] = prompt
                self.assert_error(self.post(body), 400)

    def test_400_invalid_json(self):
        self.assert_error(self.post(raw='{"prompt": '), 400, code="invalid_json")
        self.assert_error(self.post(raw='[1, 2]'), 400)

    def test_400_prompt_plus_max_tokens_over_context(self):
        n = self.max_model_len  # 512 on stories260K
        body = {"model": self.srv.name, "prompt": self.exp["prompt"], "max_tokens": n}
        self.assert_error(self.post(body), 400, code="context_length_exceeded",
                          message=f"maximum context length is {n}")
        k = min(n, 1000)  # prompt + max_tokens one over the context, within the 4 KiB body
        body = {"model": self.srv.name, "prompt": [1] * k, "max_tokens": n - k + 1}
        self.assert_error(self.post(body), 400)

    # ---- 401 ----

    def test_401_missing_or_wrong_key(self):
        body = {"model": self.srv.name, "prompt": "Hello", "max_tokens": 4}
        self.assert_error(self.post(body, headers={}), 401, code="invalid_api_key")
        self.assert_error(self.post(body, headers={"Authorization": "Bearer nope"}), 401)
        self.assert_error(self.post(body, headers={"Authorization": KEY}), 401)
        self.assert_error(self.srv.request("GET", "/v1/models"), 401)
        self.assertEqual(self.srv.request("GET", "/v1/models", headers=AUTH)[0], 200)

    # ---- 404 ----

    def test_404_unknown_route(self):
        self.assert_error(self.srv.request("GET", "/v1/nope", headers=AUTH), 404, code="not_found")
        self.assert_error(self.srv.request("GET", "/nope"), 404)
        self.assert_error(self.post({"prompt": "x"}, path="/v1/engines"), 404)

    def test_404_unknown_model(self):
        body = {"model": "gpt-5", "prompt": "Hello", "max_tokens": 4}
        self.assert_error(self.post(body), 404, code="model_not_found", param="model",
                          message="gpt-5")

    # ---- 413 ----

    def test_413_body_too_large(self):
        body = {"model": self.srv.name, "prompt": "a" * 8000, "max_tokens": 4}
        self.assert_error(self.post(body), 413, code="request_too_large")

    # ---- a bad request beside a running one ----

    def test_errors_do_not_disturb_a_running_stream(self):
        body = {"prompt": self.exp["prompt"], "max_tokens": 200, "temperature": 0,
                "ignore_eos": True}
        errors = []

        def during(_events):
            errors.append(self.post({"model": "nope", "prompt": "x"})[0])
            errors.append(self.post({"model": self.srv.name, "prompt": "x", "top_k": -5})[0])
            errors.append(self.post(raw="{{{")[0])

        status, events, done = self.srv.stream(body, headers=AUTH, on_open=during)
        self.assertEqual(status, 200)
        self.assertTrue(done)
        self.assertEqual(errors, [404, 400, 400])
        text = "".join(c["text"] for ev in events for c in ev["choices"])
        full = self.post(dict(body, model=self.srv.name))[2]["choices"][0]["text"]
        self.assertEqual(text, full)
        self.assertTrue(text.startswith(self.exp["text"]))


class QueueFull(unittest.TestCase):
    """One request runs at a time (max_num_seqs 1) and one may wait (max_queue 1): a burst of
    long streamed requests gets 503 for the ones beyond that, and every accepted one completes."""

    def test_503_when_the_queue_is_full(self):
        srv = kh.Server("--max-queue", "1", "--max-num-seqs", "1", model=kh.STORIES_OR_DEMO)
        want = kh.once_upon_a_time(srv)["text"]
        try:
            body = {"model": srv.name, "prompt": "Once upon a time", "max_tokens": 400,
                    "temperature": 0, "ignore_eos": True}
            rejected, accepted = [], []
            # the burst arrives within milliseconds while one request takes ~0.1 s or more; if a
            # slow machine still drained it, the next round tries again
            for _ in range(5):
                results = []
                lock = threading.Lock()

                def one():
                    r = srv.stream(body)
                    with lock:
                        results.append(r)

                threads = [threading.Thread(target=one) for _ in range(16)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(120)
                rejected += [r for r in results if r[0] == 503]
                accepted += [r for r in results if r[0] == 200]
                self.assertEqual(len(results), 16)
                self.assertTrue(all(r[0] in (200, 503) for r in results),
                                [r[0] for r in results])
                if rejected:
                    break
            self.assertTrue(rejected, "no request was refused with max_queue 1")
            err = rejected[0][1][0]["error"]
            self.assertEqual(err["code"], "server_overloaded")
            self.assertEqual(set(err), {"message", "type", "param", "code"})
            self.assertGreaterEqual(len(accepted), 2)  # the running one and the waiting one
            for status, events, done in accepted:
                self.assertTrue(done)
                self.assertEqual(sum(1 for ev in events for c in ev["choices"]
                                     if c["finish_reason"] == "length"), 1)
            # still serving, and back to idle
            out = srv.complete(prompt="Once upon a time", max_tokens=16, temperature=0)
            self.assertEqual(out["choices"][0]["text"], want)
            m = srv.wait_idle()
            self.assertEqual(kh.metric(m, "kvserve:num_requests_running"), 0)
            self.assertEqual(kh.metric(m, "kvserve:num_requests_waiting"), 0)
            # the refused requests never ran: not counted as finished (aborted) requests
            self.assertEqual(kh.metric(m, "kvserve:request_success_total",
                                       'finished_reason="abort"'), 0)
            self.assertEqual(kh.metric(m, "kvserve:request_success_total",
                                       'finished_reason="length"'),
                             len(accepted) + 1 + srv.demo)  # + the demo's reference answer
        finally:
            rc = srv.stop()
        self.assertEqual(rc, 0, "".join(srv.log))


class SmallKvCache(unittest.TestCase):
    """A KV pool smaller than the context: max_model_len is lowered to what it holds, and a
    request over it is a 400, not a hang."""

    def test_max_model_len_follows_the_pool(self):
        srv = kh.Server("--num-gpu-blocks", "8", model=kh.STORIES_OR_DEMO)
        try:
            status, _, out = srv.request("GET", "/v1/models")
            self.assertEqual(status, 200)
            self.assertEqual(out["data"][0]["max_model_len"], 8 * 16)
            status, _, out = srv.request("POST", "/v1/completions",
                                         {"model": srv.name, "prompt": [1] * 100,
                                          "max_tokens": 100})
            self.assertEqual(status, 400, out)
            out = srv.complete(prompt="Once upon a time", max_tokens=16, temperature=0)
            self.assertEqual(out["choices"][0]["text"], kh.once_upon_a_time(srv)["text"])
        finally:
            rc = srv.stop()
        self.assertEqual(rc, 0, "".join(srv.log))
        self.assertIn("max_model_len lowered to 128", "".join(srv.log))


if __name__ == "__main__":
    kh.run_tests(__name__, needs_model=False)

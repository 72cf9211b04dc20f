"""The real kvserve on stories260K (CPU): greedy text against llama2.c's published output
(testdata expected.json), streaming against non-streaming, prefix-cache hits, and the small
endpoints (/tokenize, /detokenize, /v1/models, /metrics, /version, /health). Without the test data
it runs on the built-in demo model, and the checks against llama2.c's output skip by name."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvserve_harness as kh  # noqa: E402

# A prompt of well over two 16-token blocks (stories260K's vocabulary makes ~1 token per word).
LONG_PROMPT = ("Once upon a time, there was a little boy named Tim. Tim had a big red ball. He liked "
               "to play with his ball in the park with his friends. One day, Tim saw a cat")


class Api(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = kh.Server(model=kh.STORIES_OR_DEMO)
        cls.exp = None if cls.srv.demo else kh.expected()
        cls.once = kh.once_upon_a_time(cls.srv)

    @classmethod
    def tearDownClass(cls):
        rc = cls.srv.stop()
        if rc != 0:
            raise AssertionError(f"kvserve exited with {rc}:\n" + "".join(cls.srv.log))

    @kh.needs_model
    def test_greedy_once_upon_a_time(self):
        """The completion text is the continuation only, as transformers/llama2.c produced it."""
        e = self.exp["prompt_once_upon_a_time"]
        out = self.srv.complete(prompt=e["prompt"], max_tokens=e["max_tokens"], temperature=0)
        choice = out["choices"][0]
        self.assertEqual(choice["text"], e["text"])
        self.assertEqual(choice["finish_reason"], "length")
        self.assertEqual(out["usage"]["prompt_tokens"], len(e["prompt_ids_with_bos"]))
        self.assertEqual(out["usage"]["completion_tokens"], len(e["ids"]))
        self.assertEqual(out["model"], self.srv.name)

    @kh.needs_model
    def test_greedy_from_token_ids(self):
        """A prompt given as ids (BOS included) generates the same ids (return_token_ids)."""
        e = self.exp["prompt_once_upon_a_time"]
        out = self.srv.complete(prompt=e["prompt_ids_with_bos"], max_tokens=e["max_tokens"],
                                temperature=0, return_token_ids=True)
        self.assertEqual(out["choices"][0]["text"], e["text"])
        self.assertEqual(out["choices"][0]["token_ids"], e["ids"])

    @kh.needs_model
    def test_greedy_200_tokens_from_bos(self):
        """llama2.c's published 200-token story from BOS alone."""
        e = self.exp["greedy_from_bos"]
        out = self.srv.complete(prompt=e["prompt_ids"], max_tokens=e["max_tokens"], temperature=0,
                                return_token_ids=True)
        self.assertEqual(out["choices"][0]["token_ids"], e["ids"])
        self.assertEqual(out["choices"][0]["text"], e["text"])

    def test_stream_concatenates_to_full_text(self):
        body = dict(prompt="Once upon a time", max_tokens=48, temperature=0, ignore_eos=True)
        full = self.srv.complete(**body)["choices"][0]["text"]
        status, events, done = self.srv.stream(dict(body, stream_options={"include_usage": True}))
        self.assertEqual(status, 200)
        self.assertTrue(done, "stream did not end with data: [DONE]")
        text = "".join(c["text"] for ev in events for c in ev["choices"])
        self.assertEqual(text, full)
        finishes = [c["finish_reason"] for ev in events for c in ev["choices"] if c["finish_reason"]]
        self.assertEqual(finishes, ["length"])
        usage = events[-1]["usage"]
        self.assertEqual(events[-1]["choices"], [])
        self.assertEqual(usage["completion_tokens"], 48)

    def test_stream_n2_each_choice_ends(self):
        body = dict(prompt="The cat", max_tokens=8, temperature=0, n=2, ignore_eos=True)
        status, events, done = self.srv.stream(body)
        self.assertEqual(status, 200)
        self.assertTrue(done)
        texts = {0: "", 1: ""}
        for ev in events:
            for c in ev["choices"]:
                texts[c["index"]] += c["text"]
        full = self.srv.complete(prompt="The cat", max_tokens=8, temperature=0, ignore_eos=True)
        self.assertEqual(texts[0], full["choices"][0]["text"])
        self.assertEqual(texts[1], full["choices"][0]["text"])  # greedy: both the same

    def test_prefix_cache_hit_on_repeated_prompt(self):
        status, _, tok = self.srv.request("POST", "/tokenize", {"prompt": LONG_PROMPT})
        self.assertEqual(status, 200)
        self.assertGreaterEqual(tok["count"], 33, "the prompt must span at least two full blocks")
        first = self.srv.complete(prompt=LONG_PROMPT, max_tokens=8, temperature=0)
        second = self.srv.complete(prompt=LONG_PROMPT, max_tokens=8, temperature=0)
        details = second["usage"]["prompt_tokens_details"]
        self.assertGreater(details["cached_tokens"], 0)
        self.assertGreaterEqual(details["cached_tokens"], 32)
        self.assertLessEqual(details["cached_tokens"], second["usage"]["prompt_tokens"])
        self.assertEqual(details["cached_tokens"],
                         details["cached_tokens_gpu"] + details["cached_tokens_host"] +
                         details["cached_tokens_disk"] + details["cached_tokens_remote"])
        # what came from the cache must not change the output
        self.assertEqual(first["choices"][0]["text"], second["choices"][0]["text"])

    @kh.needs_model
    def test_tokenize_detokenize(self):
        e = self.exp["prompt_once_upon_a_time"]
        status, _, out = self.srv.request("POST", "/tokenize", {"prompt": e["prompt"]})
        self.assertEqual(status, 200)
        self.assertEqual(out["tokens"], e["prompt_ids_with_bos"])
        self.assertEqual(out["count"], len(e["prompt_ids_with_bos"]))
        self.assertEqual(out["max_model_len"], 512)
        status, _, out = self.srv.request("POST", "/detokenize",
                                          {"tokens": e["prompt_ids_with_bos"][1:] + e["ids"]})
        self.assertEqual(status, 200)
        self.assertEqual(out["prompt"], e["prompt"] + e["text"])

    def test_models(self):
        status, _, out = self.srv.request("GET", "/v1/models")
        self.assertEqual(status, 200)
        self.assertEqual(out["object"], "list")
        self.assertEqual(len(out["data"]), 1)
        m = out["data"][0]
        self.assertEqual(m["id"], self.srv.name)
        self.assertEqual(m["object"], "model")
        # config.json's max_position_embeddings
        self.assertEqual(m["max_model_len"], 4096 if self.srv.demo else 512)

    def test_metrics_names_and_counters_move(self):
        before = self.srv.metrics()
        for name in ["kvserve:num_requests_running", "kvserve:num_requests_waiting",
                     "kvserve:kv_cache_usage_perc", "kvserve:prompt_tokens_total",
                     "kvserve:generation_tokens_total", "kvserve:request_success_total",
                     "kvserve:prefix_cache_queries_total", "kvserve:prefix_cache_hits_total",
                     "kvserve:time_to_first_token_seconds_count",
                     "kvserve:e2e_request_latency_seconds_count"]:
            kh.metric(before, name)  # raises KeyError when absent
        # one request of 5 prompt tokens and 5 generated ones moves each counter by exactly that
        # (the tests of this class run one at a time, so nothing else moves them meanwhile)
        n_prompt = self.srv.request("POST", "/tokenize",
                                    {"prompt": "Once upon a time"})[2]["count"]  # 5: stories260K
        before = self.srv.wait_idle()
        self.srv.complete(prompt="Once upon a time", max_tokens=5, temperature=0, ignore_eos=True)
        after = self.srv.wait_idle()

        def delta(name, labels=None):
            return kh.metric(after, name, labels) - kh.metric(before, name, labels)

        self.assertEqual(delta("kvserve:generation_tokens_total"), 5)
        self.assertEqual(delta("kvserve:prompt_tokens_total"), n_prompt)
        self.assertEqual(delta("kvserve:request_success_total", 'finished_reason="length"'), 1)
        self.assertEqual(delta("kvserve:time_to_first_token_seconds_count"), 1)
        self.assertEqual(delta("kvserve:e2e_request_latency_seconds_count"), 1)
        self.assertEqual(delta("kvserve:prefix_cache_queries_total"), n_prompt)
        self.assertEqual(kh.metric(after, "kvserve:num_requests_running"), 0)
        self.assertEqual(kh.metric(after, "kvserve:kv_cache_usage_perc"), 0)

    def test_version_and_health(self):
        status, _, out = self.srv.request("GET", "/version")
        self.assertEqual(status, 200)
        self.assertRegex(out["version"], r"^\d+\.\d+\.\d+")
        if os.environ.get("KVSERVE_VERSION"):  # meson.build's project version
            self.assertEqual(out["version"], os.environ["KVSERVE_VERSION"])
        status, _, _ = self.srv.request("GET", "/health")
        self.assertEqual(status, 200)

    def test_keep_alive_connection_serves_many_requests(self):
        conn = self.srv.connect()
        try:
            for _ in range(5):
                status, _, out = self.srv.request(
                    "POST", "/v1/completions",
                    {"model": self.srv.name, "prompt": "Once upon a time", "max_tokens": 16,
                     "temperature": 0}, conn=conn)
                self.assertEqual(status, 200)
                self.assertEqual(out["choices"][0]["text"], self.once["text"])
        finally:
            conn.close()



class HostTierMetrics(unittest.TestCase):
    """A host tier far smaller than the traffic (0.0001 GiB: a few dozen stories260K blocks) and a
    16-block GPU pool: distinct prompts write blocks through to the host tier until it must evict.
    The tier's evictions and skipped stores show on /metrics as counters that only go up."""

    @classmethod
    def setUpClass(cls):
        cls.srv = kh.Server("--offload-size-gib", "0.0001", "--num-gpu-blocks", "16",
                            model=kh.STORIES_OR_DEMO)

    @classmethod
    def tearDownClass(cls):
        rc = cls.srv.stop()
        if rc != 0:
            raise AssertionError(f"kvserve exited with {rc}:\n" + "".join(cls.srv.log))

    def test_evictions_and_skipped_stores_are_counters(self):
        names = ["kvserve:host_kv_cache_evictions_total",
                 "kvserve:host_kv_cache_stores_skipped_total"]
        _, _, text = self.srv.request("GET", "/metrics")
        for name in names:
            self.assertIn(f"# TYPE {name} counter\n", text)
        seen = [kh.metric(self.srv.metrics(), n) for n in names]
        self.assertEqual(seen, [0, 0])
        for i in range(12):  # distinct prompts of ~30 tokens + 24 generated: 3+ blocks each
            self.srv.complete(prompt=f"{i} Once upon a time, there was a little girl named "
                              f"{i * 7919}. She liked to play in the park with friends and a dog",
                              max_tokens=24, temperature=0, ignore_eos=True)
            m = self.srv.wait_idle()
            now = [kh.metric(m, n) for n in names]
            for name, before, after in zip(names, seen, now):
                self.assertGreaterEqual(after, before, name)
            seen = now
        self.assertGreater(seen[0], 0, "a tier this small must have evicted")
        # the tier filled up before it evicted
        stored = kh.metric(m, "kvserve:host_stored_bytes_total")
        self.assertGreater(stored, 0)
        self.assertEqual(kh.metric(m, "kvserve:host_kv_cache_usage_perc"), 1)


if __name__ == "__main__":
    kh.run_tests(__name__, needs_model=False)

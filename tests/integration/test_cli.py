"""The kvserve command line: the built-in demo model when no --model is given, a config file with
flags overriding it, the effective configuration printed at start-up, bad configurations refused
with a message naming the knob, and --help."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvserve_harness as kh  # noqa: E402

DEMO_NAME = "kvserve-demo-random-weights"


class Cli(unittest.TestCase):
    def test_demo_model_without_model_flag(self):
        srv = kh.Server(model=None, name=DEMO_NAME)
        try:
            log = "".join(srv.log)
            self.assertIn("no --model given: serving the built-in demo model (random weights; "
                          "output is gibberish)", log)
            status, _, out = srv.request("GET", "/v1/models")
            self.assertEqual(status, 200)
            self.assertEqual(out["data"][0]["id"], DEMO_NAME)
            out = srv.complete(prompt="Hello", max_tokens=8, ignore_eos=True)
            self.assertEqual(out["model"], DEMO_NAME)
            self.assertEqual(out["usage"]["completion_tokens"], 8)
            # byte-level vocabulary: <s> (256), then one token per byte
            status, _, tok = srv.request("POST", "/tokenize", {"prompt": "Hi!"})
            self.assertEqual(tok["tokens"], [256, ord("H"), ord("i"), ord("!")])
            # the demo carries a plain chat template, so chat works without --chat-template
            status, _, chat = srv.request("POST", "/v1/chat/completions", {
                "model": DEMO_NAME, "max_tokens": 8, "ignore_eos": True,
                "messages": [{"role": "user", "content": "Hi!"}]})
            self.assertEqual(status, 200, chat)
            self.assertEqual(chat["usage"]["completion_tokens"], 8)
            status, _, tok = srv.request("POST", "/tokenize",
                                         {"messages": [{"role": "user", "content": "Hi!"}]})
            self.assertEqual(tok["tokens"][:5], [256] + [ord(c) for c in "user"], tok)
            status, _, text = srv.request("POST", "/detokenize", {"tokens": tok["tokens"][1:]})
            self.assertEqual(text["prompt"], "user: Hi!\nassistant: ", text)
            status, events, done = srv.stream({"prompt": "Hello", "max_tokens": 8,
                                               "ignore_eos": True})
            self.assertEqual(status, 200)
            self.assertTrue(done)
            # whatever the random weights sample decodes to printable text (README's example
            # printed 32 x U+FFFD before the vocabulary was printable ASCII)
            for body in ({"prompt": "Once upon a time", "max_tokens": 32, "temperature": 0},
                         {"prompt": "Hello", "max_tokens": 64, "temperature": 1.5, "n": 8,
                          "seed": 7, "ignore_eos": True}):
                out = srv.complete(**body)
                for choice in out["choices"]:
                    text = choice["text"]
                    self.assertTrue(text, out)
                    bad = [c for c in text if not (c == "\n" or c.isprintable())]
                    self.assertEqual(bad, [], repr(text))
                    self.assertTrue(text.isascii(), repr(text))
            status, _, tok = srv.request("POST", "/tokenize", {"prompt": "a\u00e9\tb"})
            self.assertEqual(tok["tokens"], [256, ord("a"), ord("b")])  # no token: dropped
            demo_dir = re.search(r"random weights from (\S+)", "".join(srv.log)).group(1)
            self.assertTrue(os.path.isfile(os.path.join(demo_dir, "tokenizer.json")))
        finally:
            rc = srv.stop()
        self.assertEqual(rc, 0, "".join(srv.log))
        self.assertFalse(os.path.exists(demo_dir), "the demo model's temporary directory is left")

    @kh.needs_model
    def test_config_file_and_flags_override(self):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump({"served_model_name": "from-file", "max_model_len": 256,
                       "block_size": 32, "offload": {"reuse_threshold": 3}}, f)
        try:
            srv = kh.Server("--config", f.name, "--served-model-name", "from-flag",
                            name="from-flag")
            try:
                status, _, out = srv.request("GET", "/v1/models")
                self.assertEqual(out["data"][0]["id"], "from-flag")
                self.assertEqual(out["data"][0]["max_model_len"], 256)
                out = srv.complete(prompt="Once upon a time", max_tokens=16, temperature=0)
                self.assertEqual(out["choices"][0]["text"],
                                 kh.expected()["prompt_once_upon_a_time"]["text"])
                # the effective configuration is printed as JSON at start-up
                log = "".join(srv.log)
                self.assertIn('"block_size": 32', log)
                self.assertIn('"served_model_name": "from-flag"', log)
                self.assertIn('"reuse_threshold": 3', log)
                self.assertIn('"device": "cpu"', log)
            finally:
                rc = srv.stop()
            self.assertEqual(rc, 0)
        finally:
            os.unlink(f.name)

    @kh.needs_model
    def test_api_key_is_not_printed(self):
        srv = kh.Server("--api-key", "sk-secret-123")
        try:
            self.assertNotIn("sk-secret-123", "".join(srv.log))
        finally:
            srv.stop()

    def run_kvserve(self, *args):
        return subprocess.run([kh.kvserve_bin(), *args], capture_output=True, text=True,
                              timeout=60)

    def test_bad_configuration_is_refused(self):
        cases = [(["--block-size", "12"], "block_size"),
                 (["--set", "block_szie=16"], "block_szie"),
                 (["--port", "http"], "port"),
                 (["--frobnicate"], "--frobnicate"),
                 (["--config", "/nonexistent/kvserve.json"], "/nonexistent/kvserve.json"),
                 # nan / inf parse as doubles but aborted in the JSON step (issue 20)
                 (["--offload-size-gib", "nan"], "offload.size_gib"),
                 (["--gpu-memory-utilization", "nan"], "gpu_memory_utilization"),
                 (["--set", "offload.size_gib=inf"], "offload.size_gib")]
        for args, named in cases:
            with self.subTest(args=args):
                r = self.run_kvserve(*args)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(named, r.stderr)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            f.write('{"offload": {"store_policy": "sometimes"}}')
        try:
            r = self.run_kvserve("--config", f.name)
            self.assertEqual(r.returncode, 2)
            self.assertIn("offload.store_policy", r.stderr)
        finally:
            os.unlink(f.name)

    def test_bad_model_directory_fails_cleanly(self):
        with tempfile.TemporaryDirectory() as d:
            r = self.run_kvserve("--model", d, "--device", "cpu", "--port", "0")
        self.assertEqual(r.returncode, 1)
        self.assertIn("config.json", r.stderr)

    def crafted_model(self, d, **config):
        """A copy of stories260K in d whose config.json has the given keys replaced."""
        src = kh.testdata_model()
        for name in os.listdir(src):
            shutil.copyfile(os.path.join(src, name), os.path.join(d, name))
        with open(os.path.join(d, "config.json")) as f:
            cfg = json.load(f)
        cfg.update(config)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f)
        return d

    @kh.needs_model
    def test_untied_config_without_lm_head_is_refused(self):
        # used to serve the embedding as the output layer without a word (issue 20)
        with tempfile.TemporaryDirectory() as d:
            self.crafted_model(d, tie_word_embeddings=False)
            r = self.run_kvserve("--model", d, "--device", "cpu", "--port", "0")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(os.path.join(d, "model.safetensors"), r.stderr)
        self.assertIn("lm_head.weight", r.stderr)
        self.assertIn("tie_word_embeddings", r.stderr)

    @kh.needs_model
    def test_huge_max_position_embeddings_is_clamped(self):
        # 2^31 - 1 overflowed int in the KV sizing and failed with "no memory left" (issue 20)
        with tempfile.TemporaryDirectory() as d:
            self.crafted_model(d, max_position_embeddings=2**31 - 1)
            # The CPU pool is then half the available RAM, allocated but untouched; meson's
            # MALLOC_PERTURB_ would write all of it, so this server runs without it.
            perturb = os.environ.pop("MALLOC_PERTURB_", None)
            try:
                srv = kh.Server("--max-num-seqs", "1", "--model", d, model=None, name=d)
            finally:
                if perturb is not None:
                    os.environ["MALLOC_PERTURB_"] = perturb
            try:
                log = "".join(srv.log)
                self.assertRegex(log, r"fewer than max_model_len 2147483647: max_model_len lowered")
                out = srv.complete(prompt="Once upon a time", max_tokens=4, ignore_eos=True)
                self.assertEqual(out["usage"]["completion_tokens"], 4)
            finally:
                srv.stop()

    @kh.needs_model
    def test_host_tier_larger_than_memory_is_refused(self):
        # said ready, then pinned until the OOM killer came (issue 20)
        r = self.run_kvserve("--model", kh.testdata_model(), "--device", "cpu", "--port", "0",
                             "--offload-size-gib", "100000")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertRegex(r.stderr, r"offload.size_gib 100000 is more than the [0-9.]+ GiB of "
                                   r"memory available")
        self.assertNotIn("ready on", r.stderr)

    def test_help(self):
        r = self.run_kvserve("--help")
        self.assertEqual(r.returncode, 0)
        for flag in ["--config", "--model", "--port", "--block-size", "--offload-size-gib"]:
            self.assertIn(flag, r.stdout)


if __name__ == "__main__":
    kh.run_tests(__name__, needs_model=False)

"""generation_config.json sampling defaults on the real kvserve (vLLM's --generation-config auto):
a copy of stories260K (without the test data: of an in-repo fixture model with a byte-level
tokenizer) whose generation_config.json sets temperature 0 answers requests that set
no temperature greedily; --generation-config vllm ignores the file; a bad file stops the start."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvserve_harness as kh  # noqa: E402

PROMPT = "Once upon a time"


def model_copy(tmp, name, gen):
    d = os.path.join(tmp, name)
    shutil.copytree(kh.testdata_model() or kh.fixture_model(tokenizer="bytes"), d)
    with open(os.path.join(d, "generation_config.json")) as f:
        cfg = json.load(f)
    cfg.update(gen)
    with open(os.path.join(d, "generation_config.json"), "w") as f:
        json.dump(cfg, f)
    return d


class GenerationConfig(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="kvserve-gen-")
        cls.greedy_dir = model_copy(cls.tmp, "greedy", {"temperature": 0.0})

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def texts(self, srv, n=3):
        return [srv.complete(prompt=PROMPT, max_tokens=24)["choices"][0]["text"]
                for _ in range(n)]

    def test_temperature_from_the_file(self):
        srv = kh.Server("--model", self.greedy_dir, model=None, name=self.greedy_dir)
        try:
            self.assertTrue(any("temperature=0" in line for line in srv.log), "".join(srv.log))
            greedy = srv.complete(prompt=PROMPT, max_tokens=24, temperature=0)
            self.assertEqual(self.texts(srv), [greedy["choices"][0]["text"]] * 3)
            # a request's own value still wins
            sampled = {srv.complete(prompt=PROMPT, max_tokens=24, temperature=1.0,
                                    seed=k)["choices"][0]["text"] for k in range(4)}
            self.assertGreater(len(sampled), 1)
        finally:
            self.assertEqual(srv.stop(), 0)

    def test_vllm_ignores_the_file(self):
        srv = kh.Server("--model", self.greedy_dir, "--generation-config", "vllm", model=None,
                        name=self.greedy_dir)
        try:
            self.assertGreater(len(set(self.texts(srv, 4))), 1)
        finally:
            self.assertEqual(srv.stop(), 0)

    def test_bad_file_stops_the_start(self):
        d = model_copy(self.tmp, "bad", {"top_p": "high"})
        r = subprocess.run([kh.kvserve_bin(), "--device", "cpu", "--port", "0", "--model", d],
                           capture_output=True, text=True, timeout=60)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("generation_config.json", r.stderr)
        self.assertIn("top_p", r.stderr)


if __name__ == "__main__":
    kh.run_tests(__name__, needs_model=False)

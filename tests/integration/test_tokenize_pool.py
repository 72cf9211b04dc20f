"""Tokenizing off the HTTP polling threads (issue 20 item 3), against the real kvserve over real
sockets: while several large /tokenize bodies are being tokenized, /health still answers and a
SIGTERM still ends the process promptly; a full tokenize queue answers 503. One polling thread
(--http-threads 1), so a tokenization run on it would hold every other connection. The time
bounds are liveness bounds (10 s against tens of seconds of tokenizing), not benchmarks. Runs on
in-repo data only: a random-weight fixture model with the llama2_style fixture tokenizer, whose
merges make a MiB of text about 4 s of tokenizing."""
import json
import os
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvserve_harness as kh  # noqa: E402

N_BODIES = 2
BODY_MIB = 3  # 12+ s of tokenizing each on this CPU: a polling thread held that long fails
LIVENESS_S = 10


def big_prompt(mib=BODY_MIB):
    unit = "Once upon a time there was a little girl named Lily. "
    return unit * (mib * (1 << 20) // len(unit))


class Tokenizing:
    """N_BODIES /tokenize requests sent at once from threads; results[i] = (status, JSON) or the
    exception."""

    def __init__(self, srv, n=N_BODIES, mib=BODY_MIB):
        self.srv = srv
        self.body = json.dumps({"model": srv.name, "prompt": big_prompt(mib)})
        self.results = [None] * n
        self.sent = [threading.Event() for _ in range(n)]
        self.threads = [threading.Thread(target=self._one, args=(i,), daemon=True)
                        for i in range(n)]
        for t in self.threads:
            t.start()

    def _one(self, i):
        try:
            conn = self.srv.connect(timeout=300)
            try:
                conn.request("POST", "/tokenize", body=self.body,
                             headers={"Content-Type": "application/json"})
                self.sent[i].set()
                r = conn.getresponse()
                self.results[i] = (r.status, json.loads(r.read().decode()))
            finally:
                conn.close()
        except Exception as e:  # noqa: BLE001 (a reset at shutdown is an answer too)
            self.results[i] = e
        self.sent[i].set()

    def wait_sent(self):
        """Until every body has been written to its socket (the server has read all but what
        the socket buffers hold), and a moment more, so the tokenizing has begun."""
        for e in self.sent:
            e.wait(120)
        time.sleep(1)

    def join(self, timeout=300):
        for t in self.threads:
            t.join(timeout)


def start(*extra):
    # max_model_len large enough that a 4 MiB prompt passes the byte precheck (262144 tokens
    # cover 12 MiB of this tokenizer's text), with a KV pool that holds it (0.4 GiB)
    return kh.Server("--http-threads", "1", "--max-model-len", "262144", "--num-gpu-blocks",
                     "16384", *extra, model_dir=kh.fixture_model())


class TokenizePool(unittest.TestCase):
    def test_health_answers_while_tokenizing(self):
        srv = start()
        try:
            work = Tokenizing(srv)
            work.wait_sent()
            t0 = time.time()
            conn = srv.connect(timeout=LIVENESS_S)
            try:
                status, _, _ = srv.request("GET", "/health", conn=conn)
            finally:
                conn.close()
            took = time.time() - t0
            self.assertEqual(status, 200)
            self.assertLess(took, LIVENESS_S, f"/health took {took:.1f} s")
            still = sum(t.is_alive() for t in work.threads)
            print(f"/health answered in {took * 1e3:.0f} ms with {still} of {N_BODIES} "
                  "tokenizations still running")
            work.join()
            counts = set()
            for r in work.results:
                self.assertIsInstance(r, tuple, r)
                self.assertEqual(r[0], 200, r)
                counts.add(r[1]["count"])
            self.assertEqual(len(counts), 1, counts)  # the same text, the same count
            self.assertGreater(counts.pop(), BODY_MIB << 17)
            self.assertEqual(srv.stop(), 0, "".join(srv.log))
        finally:
            srv.kill()

    def test_sigterm_exits_promptly_while_tokenizing(self):
        srv = start()
        try:
            work = Tokenizing(srv, n=2, mib=4)  # one body alone is 15+ s of tokenizing
            work.wait_sent()
            t0 = time.time()
            rc = srv.stop(timeout=60)
            took = time.time() - t0
            print(f"exited {rc} {took:.2f} s after SIGTERM")
            self.assertEqual(rc, 0, "".join(srv.log))
            self.assertLess(took, LIVENESS_S, f"SIGTERM took {took:.1f} s")
            work.join(30)
            for r in work.results:  # each got an answer or a closed connection, none a 200
                self.assertFalse(isinstance(r, tuple) and r[0] == 200, r)
        finally:
            srv.kill()

    def test_full_queue_answers_503(self):
        srv = start("--tokenize-threads", "1", "--tokenize-queue", "1")
        try:
            work = Tokenizing(srv, n=5, mib=1)
            work.join()
            statuses = sorted(r[0] for r in work.results if isinstance(r, tuple))
            self.assertEqual(len(statuses), 5, work.results)
            self.assertIn(200, statuses)
            self.assertIn(503, statuses)  # one running, one queued, the rest refused
            for r in work.results:
                if r[0] == 503:
                    self.assertEqual(r[1]["error"]["code"], "server_overloaded", r)
            self.assertEqual(srv.request("GET", "/health")[0], 200)
            self.assertEqual(srv.stop(), 0, "".join(srv.log))
        finally:
            srv.kill()


if __name__ == "__main__":
    kh.run_tests(__name__, needs_model=False)

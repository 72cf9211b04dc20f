"""Graceful shutdown of the real kvserve: SIGTERM (or SIGINT) while streams run ends every stream
with its finish chunk and data: [DONE], idle keep-alive connections do not hold the exit, and the
process exits 0."""
import os
import signal
import socket
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvserve_harness as kh  # noqa: E402


class Shutdown(unittest.TestCase):
    def stop_during_streams(self, sig):
        # one request runs at a time, so most of the burst is still running or waiting at the signal
        srv = kh.Server("--max-num-seqs", "1", model=kh.STORIES_OR_DEMO)
        try:
            idle = srv.connect()
            idle.connect()  # an idle keep-alive connection stays open through the shutdown
            body = {"prompt": "Once upon a time", "max_tokens": 480, "temperature": 0,
                    "ignore_eos": True}
            results, lock, first = [], threading.Lock(), threading.Event()

            def one():
                try:
                    r = srv.stream(body, on_open=lambda _events: first.set())
                except OSError as e:  # not yet connected when the listener closed
                    r = (None, [str(e)], False)
                with lock:
                    results.append(r)

            threads = [threading.Thread(target=one) for _ in range(4)]
            for t in threads:
                t.start()
            self.assertTrue(first.wait(60), "no stream produced a token")
            rc = srv.stop(sig)
            for t in threads:
                t.join(60)
            idle.close()
        finally:
            srv.kill()
        log = "".join(srv.log)
        self.assertEqual(rc, 0, log)
        self.assertIn("kvserve: stopped", log)
        self.assertEqual(len(results), 4)
        finishes = []
        for status, events, done in results:
            if status != 200:  # arrived after the shutdown began: refused, not cut
                self.assertIn(status, (None, 503), events)
                continue
            self.assertTrue(done, "a stream did not end with data: [DONE]")
            ends = [c["finish_reason"] for ev in events for c in ev["choices"] if c["finish_reason"]]
            self.assertEqual(len(ends), 1, ends)
            self.assertIn(ends[0], ("length", "abort"))
            finishes.append(ends[0])
        self.assertIn("abort", finishes, "the signal came after every stream had finished")
        with self.assertRaises(OSError):  # nothing listens any more
            socket.create_connection(("127.0.0.1", srv.port), timeout=5).close()

    def test_sigterm_during_streams(self):
        self.stop_during_streams(signal.SIGTERM)

    def test_sigint_during_streams(self):
        self.stop_during_streams(signal.SIGINT)

    def test_sigterm_when_idle(self):
        srv = kh.Server(model=kh.STORIES_OR_DEMO)
        try:
            srv.complete(prompt="Once upon a time", max_tokens=4)
            rc = srv.stop(signal.SIGTERM)
        finally:
            srv.kill()
        self.assertEqual(rc, 0, "".join(srv.log))


if __name__ == "__main__":
    kh.run_tests(__name__, needs_model=False)

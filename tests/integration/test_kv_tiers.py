"""The real kvserve on stories260K (CPU) with the tiers below the host tier and KV events:
a restarted server serves a prompt from its disk tier (usage.cached_tokens_disk, identical greedy
text); two kvserve processes pointed at one REAL redis-server (started here on a free port) share a
prefix (process B: cached_tokens_remote, identical text), and with Redis killed both still answer;
a ZMQ subscriber receives a request's BlockStored events in vLLM's wire format and decodes them.
Needs redis-server, python3-zmq and python3-msgpack (scripts/install-deps); skips without them."""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvserve_harness as kh  # noqa: E402

try:
    import msgpack
    import zmq
except ImportError:  # pragma: no cover
    msgpack = zmq = None
    # Debian's python3-zmq / python3-msgpack live in the system interpreter: use it when this
    # one (a pyenv or venv python3 first on PATH) lacks them
    if os.path.exists("/usr/bin/python3") and os.path.realpath(sys.executable) != \
            os.path.realpath("/usr/bin/python3") and not os.environ.get("KVSERVE_REEXEC"):
        os.environ["KVSERVE_REEXEC"] = "1"
        os.execv("/usr/bin/python3", ["/usr/bin/python3", *sys.argv])

PROMPT = [1] + [3 + (i * 37) % 400 for i in range(99)]  # 100 ids: 6 full blocks of 16


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(srv, name):
    """The value of an unlabelled-but-model_name metric line, or 0."""
    _, _, text = srv.request("GET", "/metrics")
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_metric(srv, name, at_least, timeout=20):
    end = time.time() + timeout
    while metric(srv, name) < at_least and time.time() < end:
        time.sleep(0.05)
    return metric(srv, name)


def complete(srv, prompt=PROMPT):
    out = srv.complete(prompt=prompt, max_tokens=16, temperature=0, ignore_eos=True)
    return out["choices"][0]["text"], out["usage"]["prompt_tokens_details"]


TIER = ["--offload-size-gib", "0.01", "--block-size", "16"]


def tiered(*args):
    """A server with a host tier, once the tier has its memory: it is pinned in the background
    after ready and taken by the engine at a step, so a first short request (no full block)
    makes the engine take it."""
    srv = kh.Server(*TIER, *args)
    srv.complete(prompt=[1, 2, 3], max_tokens=1, temperature=0)
    time.sleep(0.3)
    srv.complete(prompt=[1, 2, 3], max_tokens=1, temperature=0)
    return srv


class DiskTier(unittest.TestCase):
    def test_restart_serves_from_disk(self):
        d = tempfile.mkdtemp(prefix="kvserve_it_disk_")
        try:
            ref = kh.Server()
            ref_text, _ = complete(ref)
            self.assertEqual(ref.stop(), 0)
            a = tiered("--offload-disk-path", d, "--offload-disk-size-gib", "1")
            text, det = complete(a)
            self.assertEqual(text, ref_text)
            self.assertEqual(det["cached_tokens_disk"], 0)
            wait_metric(a, "kvserve:disk_block_puts_total", 6)
            self.assertEqual(a.stop(), 0)  # the remaining puts are drained at shutdown
            b = tiered("--offload-disk-path", d, "--offload-disk-size-gib", "1")
            # the scan runs while the server serves: wait until it has indexed the files
            wait_metric(b, "kvserve:disk_kv_cache_blocks", 6)
            text, det = complete(b)
            self.assertEqual(text, ref_text)
            self.assertEqual(det["cached_tokens_disk"], 96)
            self.assertEqual(det["cached_tokens"], 96)
            self.assertEqual(metric(b, "kvserve:disk_block_hits_total"), 6)
            self.assertEqual(metric(b, "kvserve:disk_prefix_cache_hits_total"), 96)
            self.assertEqual(b.stop(), 0)
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def test_disk_tier_without_host_tier_is_a_config_error(self):
        d = tempfile.mkdtemp(prefix="kvserve_it_disk_")
        try:
            p = subprocess.run([kh.kvserve_bin(), "--device", "cpu", "--model", kh.testdata_model(),
                                "--port", "0", "--offload-disk-path", d],
                               capture_output=True, text=True, timeout=60)
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("offload.size_gib", p.stderr)
        finally:
            shutil.rmtree(d, ignore_errors=True)


@unittest.skipUnless(shutil.which("redis-server"), "no redis-server")
class RemoteTier(unittest.TestCase):
    def test_two_processes_share_and_survive_redis_death(self):
        port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no", "--loglevel", "warning"])
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            ref = kh.Server()
            ref_text, _ = complete(ref)
            other = [1] + [5 + (i * 11) % 300 for i in range(99)]
            ref_other, _ = complete(ref, other)
            self.assertEqual(ref.stop(), 0)
            url = f"redis://127.0.0.1:{port}/0"
            a = tiered("--offload-remote-url", url)
            b = tiered("--offload-remote-url", url)
            text, det = complete(a)
            self.assertEqual(text, ref_text)
            wait_metric(a, "kvserve:remote_block_puts_total", 6)
            text, det = complete(b)  # process B: the prefix computed by A
            self.assertEqual(text, ref_text)
            self.assertEqual(det["cached_tokens_remote"], 96)
            self.assertEqual(metric(b, "kvserve:remote_block_hits_total"), 6)
            redis.kill()
            redis.wait()
            for srv in (a, b):  # misses now, never failures
                text, det = complete(srv, other)
                self.assertEqual(text, ref_other)
                self.assertEqual(det["cached_tokens_remote"], 0)
            self.assertGreater(metric(a, "kvserve:remote_errors_total"), 0)
            self.assertEqual(a.stop(), 0)
            self.assertEqual(b.stop(), 0)
        finally:
            if redis.poll() is None:
                redis.kill()
                redis.wait()


@unittest.skipUnless(zmq and msgpack, "no python3-zmq / python3-msgpack")
class KvEvents(unittest.TestCase):
    def test_block_stored_events_of_a_request(self):
        port = free_port()
        srv = tiered("--kv-events-endpoint", f"tcp://*:{port}")
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.connect(f"tcp://127.0.0.1:{port}")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        time.sleep(0.5)  # ZMQ's slow joiner: the subscription reaches the PUB first
        try:
            complete(srv)
            stored = {"GPU": [], "CPU": []}
            seqs = []
            end = time.time() + 10
            while time.time() < end and (len(stored["GPU"]) < 6 or len(stored["CPU"]) < 6):
                if not sub.poll(200):
                    continue
                topic, seq, payload = sub.recv_multipart()
                self.assertEqual(topic, b"")
                seqs.append(int.from_bytes(seq, "big"))
                batch = msgpack.unpackb(payload, raw=False)
                ts, events, dp_rank = batch  # EventBatch [ts, events, data_parallel_rank]
                self.assertIsInstance(ts, float)
                self.assertEqual(dp_rank, 0)
                for ev in events:
                    if ev[0] != "BlockStored":
                        self.assertIn(ev[0], ("BlockRemoved", "AllBlocksCleared"))
                        continue
                    tag, hashes, parent, token_ids, block_size, lora_id, medium, lora_name = ev
                    self.assertEqual(block_size, 16)
                    self.assertIsNone(lora_id)
                    self.assertIsNone(lora_name)
                    stored[medium].append((hashes, parent, token_ids))
            self.assertEqual(seqs, sorted(seqs))
            gpu = stored["GPU"]
            self.assertGreaterEqual(len(gpu), 6)
            # the prompt's 6 blocks in order: their token ids, each one's parent the one before
            for i in range(6):
                hashes, parent, token_ids = gpu[i]
                self.assertEqual(len(hashes), 1)
                self.assertTrue(0 <= hashes[0] < 2**64)
                self.assertEqual(token_ids, PROMPT[16 * i:16 * (i + 1)])
                self.assertEqual(parent, None if i == 0 else gpu[i - 1][0][0])
            # the host tier stored the same blocks (write_through): the same hashes, medium CPU
            cpu = [h[0][0] for h in stored["CPU"]]
            for i in range(6):
                self.assertIn(gpu[i][0][0], cpu)
        finally:
            sub.close(0)
            ctx.term()
            self.assertEqual(srv.stop(), 0)


if __name__ == "__main__":
    kh.skip_unless_ready()
    unittest.main()

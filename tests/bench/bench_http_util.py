"""Shared parts of the HTTP benchmarks (bench_startup.py, bench_longdoc.py), Python standard
library only: a model directory made of a config.json and the test data's tokenizer, a kvserve
process on a free port with its stderr kept, and streamed completions timed to their first
token."""
import http.client
import json
import os
import shutil
import subprocess
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))


def testdata_dir():
    """$KVSERVE_TESTDATA, else shared/testdata (or .leadrun/testdata) in or beside the checkout;
    None when absent."""
    for d in (os.environ.get("KVSERVE_TESTDATA", ""), os.path.join(ROOT, "shared", "testdata"),
              os.path.join(ROOT, ".leadrun", "testdata"),
              os.path.join(ROOT, "..", "shared", "testdata")):
        if d and os.path.isdir(os.path.join(d, "tokenizers")):
            return d
    return None


def default_bin():
    build = os.environ.get("BUILD", "")
    for b in ([build] if build else []) + [os.path.join(ROOT, "build-gpu"),
                                           os.path.join(ROOT, "build")]:
        p = os.path.join(b, "server", "kvserve")
        if os.access(p, os.X_OK):
            return p
    return os.path.join(ROOT, "build", "server", "kvserve")


def make_model_dir(dst, config_dir, tokenizer="llama3"):
    """dst gets config.json of config_dir and the tokenizer files: config_dir's own when it has
    tokenizer.json, else the test data's tokenizers/<tokenizer>."""
    os.makedirs(dst, exist_ok=True)
    shutil.copy(os.path.join(config_dir, "config.json"), os.path.join(dst, "config.json"))
    src = config_dir
    if not os.path.isfile(os.path.join(config_dir, "tokenizer.json")):
        td = testdata_dir()
        if not td:
            raise SystemExit("no tokenizer.json: set KVSERVE_TESTDATA to the shared test data")
        src = os.path.join(td, "tokenizers", tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), os.path.join(dst, name))
    return dst


class Server:
    """kvserve on 127.0.0.1, --port 0 (the port is read from its "listening on" line). t_start is
    the time just before the process was spawned; log holds its stderr lines with their times."""

    def __init__(self, binary, args, ready_timeout=600):
        self.t_start = time.time()
        self.proc = subprocess.Popen([binary, "--host", "127.0.0.1", "--port", "0", *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, errors="replace")
        self.log = []
        self.port = None
        self._seen = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._seen.wait(ready_timeout) or self.port is None:
            self.kill()
            raise RuntimeError("kvserve did not start:\n" + "".join(l for _, l in self.log))
        self.t_ready = self.wait_ready(ready_timeout)

    def _read(self):
        for line in self.proc.stderr:
            self.log.append((time.time(), line))
            if self.port is None and "listening on http://" in line:
                self.port = int(line.split("listening on http://", 1)[1].split()[0]
                                .rsplit(":", 1)[1])
                self._seen.set()
        self._seen.set()

    def log_text(self):
        return "".join(l for _, l in self.log)

    def wait_ready(self, timeout):
        """Polls /health every 5 ms; returns the time it first answered 200."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("kvserve exited:\n" + self.log_text())
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/health")
                r = c.getresponse()
                r.read()
                c.close()
                if r.status == 200:
                    return time.time()
            except OSError:
                pass
            time.sleep(0.005)
        raise RuntimeError("kvserve never became ready:\n" + self.log_text())

    def get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        c.request("GET", path)
        r = c.getresponse()
        body = r.read().decode("utf-8", "replace")
        c.close()
        return r.status, body

    def metrics(self):
        _, text = self.get("/metrics")
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reader.join(5)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def stream_completion(port, prompt, max_tokens, timeout=600, extra=None):
    """A streamed /v1/completions of prompt (text or token ids). Returns (ttft_s, total_s,
    n_events, usage or None); raises on an HTTP error."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True, "temperature": 0,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    body.update(extra or {})
    t0 = time.time()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", "/v1/completions", body=json.dumps(body),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
        ttft, n, usage = None, 0, None
        for line in r:
            line = line.decode("utf-8", "replace").strip()
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            ev = json.loads(data)
            if ev.get("usage"):
                usage = ev["usage"]
            if ev.get("choices"):
                if ttft is None:
                    ttft = time.time() - t0
                n += 1
        return ttft, time.time() - t0, n, usage
    finally:
        c.close()


def percentile(v, p):
    if not v:
        return float("nan")
    s = sorted(v)
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)

"""Integration-test support (Python 3 standard library only): starts the real kvserve binary on
stories260K with the CPU backend on a free port, waits for /health, and talks HTTP to it.

The binary comes from $KVSERVE_BIN (meson sets it), the model from $KVSERVE_TESTDATA; a test whose
model is absent prints SKIP and exits 77, which meson counts as skipped."""
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import unittest

SKIP = 77
READY_TIMEOUT_S = 60
# Server(model=STORIES_OR_DEMO): stories260K when the test data has it, else the built-in demo model
# (random weights, in the binary), for modules whose checks hold on any model.
STORIES_OR_DEMO = "stories260K-or-demo"
NEEDS = ("stories260K, outside data: set KVSERVE_TESTDATA to a folder holding "
         "models/stories260K (default ../shared/testdata beside the checkout)")


def testdata_model(name="stories260K"):
    """The model directory, or None when the test data is absent."""
    root = os.environ.get("KVSERVE_TESTDATA", "")
    path = os.path.join(root, "models", name)
    return path if root and os.path.isfile(os.path.join(path, "config.json")) else None


def fixture_model(tokenizer="llama2_style", model="llama-f32"):
    """A model directory built from in-repo fixtures only (no outside data): the random-weight
    transformers fixture tests/fixtures/models/<model> with the tokenizer.json of
    tests/fixtures/tokenizers/<tokenizer>, linked into a temporary directory (removed at exit).
    Its tokenizer may hold more tokens than the model: fit for /tokenize, not for text prompts."""
    import atexit
    import shutil
    import tempfile
    here = os.path.dirname(os.path.abspath(__file__))
    fixtures = os.path.join(here, "..", "fixtures")
    d = tempfile.mkdtemp(prefix="kvserve-fixture-")
    atexit.register(shutil.rmtree, d, True)
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        os.symlink(os.path.abspath(os.path.join(fixtures, "models", model, f)), os.path.join(d, f))
    if tokenizer == "bytes":
        with open(os.path.join(d, "tokenizer.json"), "w") as f:
            json.dump(byte_tokenizer(), f)
    else:
        os.symlink(os.path.abspath(os.path.join(fixtures, "tokenizers", tokenizer,
                                                "tokenizer.json")),
                   os.path.join(d, "tokenizer.json"))
    return d


def byte_tokenizer(n_vocab=512):
    """A byte-level BPE tokenizer.json without merges (GPT-2's byte-to-unicode map, token b is
    byte b, <s> 256 and </s> 257 as special tokens, two-letter pieces up to n_vocab, the fixture
    models' 512), so a fixture model serves text prompts and every id it generates decodes."""
    printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    cps, k = {}, 0
    for b in range(256):
        if b in printable:
            cps[b] = b
        else:
            cps[b] = 256 + k
            k += 1
    vocab = {chr(cps[b]): b for b in range(256)}
    for i in range(n_vocab - 258):  # ids 258.. : two-letter pieces (decodable, never merged into)
        vocab[chr(0x41 + i // 26) + chr(0x61 + i % 26)] = 258 + i
    added = [{"id": 256 + i, "content": t, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True}
             for i, t in enumerate(("<s>", "</s>"))]
    level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": True}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": None, "pre_tokenizer": level, "post_processor": None,
            "decoder": level, "model": {"type": "BPE", "dropout": None, "unk_token": None,
                                        "fuse_unk": False, "byte_fallback": False,
                                        "vocab": vocab, "merges": []}}


def expected(name="stories260K"):
    with open(os.path.join(testdata_model(name), "expected.json")) as f:
        return json.load(f)


def once_upon_a_time(srv):
    """The greedy completion of "Once upon a time" that srv must keep giving: stories260K's
    published output (llama2.c) when srv serves it, else (the demo model) srv's own first answer,
    so the checks that use it test that errors leave generation unchanged, not the reference."""
    if not srv.demo:
        return expected()["prompt_once_upon_a_time"]
    body = {"model": srv.name, "prompt": "Once upon a time", "max_tokens": 16, "temperature": 0}
    status, _, out = srv.request("POST", "/v1/completions", body,
                                 headers={"Authorization": "Bearer " + srv.api_key}
                                 if srv.api_key else None)
    assert status == 200, out
    return {"prompt": body["prompt"], "max_tokens": 16, "text": out["choices"][0]["text"]}


def kvserve_bin():
    path = os.environ.get("KVSERVE_BIN")
    if not path:
        src = os.environ.get("KVSERVE_SOURCE", os.path.join(os.path.dirname(__file__), "..", ".."))
        path = os.path.join(src, "build", "server", "kvserve")
    return path


def skip_unless_ready(needs_model=True):
    """Exits 77 (skip) when the binary, or (needs_model) the model, is missing."""
    if needs_model and not testdata_model():
        print("SKIP: needs " + NEEDS)
        sys.exit(SKIP)
    if not os.access(kvserve_bin(), os.X_OK):
        print(f"SKIP: kvserve binary not found at {kvserve_bin()} (set KVSERVE_BIN)")
        sys.exit(SKIP)


class Server:
    """A kvserve process on 127.0.0.1 and a port the kernel picked (--port 0; the port is read
    from the "listening on" line of its stderr). Its stderr is kept in self.log."""

    def __init__(self, *args, model="stories260K", name=None, model_dir=None):
        """args are extra flags; model None starts kvserve without --model (the demo model);
        model_dir a model directory by path (e.g. fixture_model())."""
        if model == STORIES_OR_DEMO:
            model = "stories260K" if testdata_model() else None
            name = name or (None if model else "kvserve-demo-random-weights")
        self.model = model_dir or (testdata_model(model) if model else None)
        self.name = name or self.model
        self.demo = self.model is None
        self.api_key = args[args.index("--api-key") + 1] if "--api-key" in args else None
        cmd = [kvserve_bin(), "--device", "cpu", "--host", "127.0.0.1", "--port", "0",
               "--n-threads", "1", *args]
        if self.model:
            cmd += ["--model", self.model]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, errors="replace")
        self.log = []
        self.port = None
        self._port_seen = threading.Event()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        if not self._port_seen.wait(READY_TIMEOUT_S) or self.port is None:
            self.kill()
            raise RuntimeError("kvserve did not start:\n" + "".join(self.log))
        self.wait_ready()

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.log.append(line)
            if self.port is None and "listening on http://" in line:
                self.port = int(line.split("listening on http://", 1)[1].split()[0].rsplit(":", 1)[1])
                self._port_seen.set()
        self._port_seen.set()

    def wait_ready(self):
        deadline = time.time() + READY_TIMEOUT_S
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("kvserve exited:\n" + "".join(self.log))
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("kvserve never became ready:\n" + "".join(self.log))

    def connect(self, timeout=60):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, raw=None, conn=None):
        """One request; body is JSON-encoded unless raw bytes are given. Returns (status,
        headers dict with lower-case names, parsed JSON or text)."""
        own = conn is None
        conn = conn or self.connect()
        try:
            h = {"Content-Type": "application/json"}
            h.update(headers or {})
            data = raw if raw is not None else (json.dumps(body) if body is not None else None)
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            text = r.read().decode("utf-8")
            hdrs = {k.lower(): v for k, v in r.getheaders()}
            try:
                payload = json.loads(text)
            except ValueError:
                payload = text
            return r.status, hdrs, payload
        finally:
            if own:
                conn.close()

    def complete(self, **body):
        """POST /v1/completions, asserting 200; returns the JSON response."""
        body.setdefault("model", self.name)
        status, _, out = self.request("POST", "/v1/completions", body)
        if status != 200:
            raise AssertionError(f"completion failed: {status} {out}")
        return out

    def stream(self, body, headers=None, on_open=None):
        """A streamed completion: returns (status, list of parsed data events, saw_done). The
        events are JSON objects; "[DONE]" ends the list and sets saw_done. on_open(events) is
        called after the first event."""
        body = dict(body, stream=True)
        body.setdefault("model", self.name)
        conn = self.connect()
        try:
            h = {"Content-Type": "application/json"}
            h.update(headers or {})
            conn.request("POST", "/v1/completions", body=json.dumps(body), headers=h)
            r = conn.getresponse()
            if r.status != 200:
                return r.status, [json.loads(r.read().decode())], False
            events, done = [], False
            for line in r:
                line = line.decode("utf-8").rstrip("\r\n")
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    done = True
                    break
                events.append(json.loads(data))
                if on_open and len(events) == 1:
                    on_open(events)
            return r.status, events, done
        finally:
            conn.close()

    def metrics(self):
        """/metrics as {name{labels}: value}."""
        status, _, text = self.request("GET", "/metrics")
        assert status == 200, status
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out

    def wait_idle(self, timeout=30):
        """Waits until the engine reports nothing running or waiting (the gauges are published
        at the end of an engine step, just after the last events went out); returns the last
        metrics seen."""
        deadline = time.time() + timeout
        while True:
            m = self.metrics()
            idle = (metric(m, "kvserve:num_requests_running") == 0 and
                    metric(m, "kvserve:num_requests_waiting") == 0)
            if idle or time.time() > deadline:
                return m
            time.sleep(0.02)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Sends sig and waits; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._reader.join(5)
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def metric(values, name, labels=None):
    """The value of one sample; labels a substring that the label set must contain."""
    for key, v in values.items():
        base = key.split("{", 1)[0]
        if base == name and (labels is None or labels in key):
            return v
    raise KeyError(name)


def needs_model(test):
    """Marks one test of a module run with run_tests(needs_model=False) as needing stories260K."""
    return unittest.skipUnless(testdata_model(), "needs " + NEEDS)(test)


def run_tests(module_name, needs_model=True):
    """Runs the module's unittest cases; exits 0 when all passed, 1 otherwise. needs_model=False:
    the module runs without the test data, and its tests marked @needs_model skip (and say so)."""
    skip_unless_ready(needs_model)
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[module_name])
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    sys.exit(0 if result.wasSuccessful() else 1)

"""Runs the official OpenAI Node client's test (openai_client/) against the real kvserve on
stories260K (with Qwen2.5's chat template for the chat cases): installs the pinned client with
`npm ci` when node_modules is absent, starts kvserve with an API key, then `node --test`. Skips
(77) without node >= 18 and npm, or when the npm registry cannot be reached for the install."""
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvserve_harness as kh  # noqa: E402

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openai_client")
KEY = "sk-kvserve-openai-client"
MODEL_NAME = "stories260K"


def skip(why):
    print(f"SKIP: {why}")
    sys.exit(kh.SKIP)


def ensure_client():
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        skip("node/npm not installed (scripts/install-deps installs them)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 18:
        skip(f"node {version} has no built-in test runner (needs >= 18)")
    if os.path.isfile(os.path.join(HERE, "node_modules", "openai", "package.json")):
        return node
    ping = subprocess.run([npm, "ping"], cwd=HERE, capture_output=True, text=True, timeout=120)
    if ping.returncode != 0:
        skip("the npm registry is unreachable: " + (ping.stderr.strip().splitlines() or ["?"])[-1])
    r = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, capture_output=True,
                       text=True, timeout=600)
    print(r.stdout + r.stderr)
    if r.returncode != 0:
        print("npm ci failed")
        sys.exit(1)
    return node


def main():
    kh.skip_unless_ready()
    node = ensure_client()
    # stories260K has no chat template: Qwen2.5's real one (testdata) serves the chat cases
    template = os.path.join(os.environ.get("KVSERVE_TESTDATA", ""), "chat_templates",
                            "qwen2.5-7b-instruct", "template.jinja")
    if not os.path.isfile(template):
        skip(f"{template} not found")
    srv = kh.Server("--api-key", KEY, "--served-model-name", MODEL_NAME, "--chat-template",
                    template, name=MODEL_NAME)
    try:
        env = dict(os.environ, KVSERVE_URL=f"http://127.0.0.1:{srv.port}",
                   KVSERVE_MODEL=MODEL_NAME, KVSERVE_API_KEY=KEY,
                   KVSERVE_EXPECTED=os.path.join(kh.testdata_model(), "expected.json"))
        r = subprocess.run([node, "--test", "openai_client.test.mjs"], cwd=HERE, env=env,
                           timeout=300)
    finally:
        rc = srv.stop()
    if rc != 0:
        print(f"kvserve exited with {rc}:\n" + "".join(srv.log))
        sys.exit(1)
    sys.exit(0 if r.returncode == 0 else 1)


if __name__ == "__main__":
    main()

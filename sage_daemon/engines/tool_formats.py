"""Tool calling for the llama.cpp engine: how tools reach the prompt, what grammar forces a call,
and how calls are read back out of streamed text. Pure logic: no model, no I/O.

Models are finetuned on one of a few ways of writing a call, and the chat template says which:

- hermes (Hermes, Qwen): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, after
  optional text, one block per call;
- llama3 (Llama 3.1+): the whole reply is `{"name": ..., "parameters": {...}}`, optionally after
  the `<|python_tag|>` token;
- mistral: `[TOOL_CALLS]` then a JSON array of `{"name": ..., "arguments": {...}}`;
- generic: a template that knows no tools. As llama.cpp's generic format does, the tools are
  described in a system prompt and the whole reply is one JSON object:
  `{"tool_call": {...}}`, `{"tool_calls": [...]}` or `{"response": "..."}`.

The three parts agree on each format: `template_messages` renders the conversation (earlier
calls and their results included) the way the model was trained to read it, `call_constraint`
is the grammar llguidance enforces while sampling (required / named calls, or free text whose
calls must be valid), and `ToolCallParser` splits the output into content, reasoning and
OpenAI-shaped tool-call deltas as it streams.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import string
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec

from .base import ChatMessage, InvalidRequestError, OutputConstraint, ToolCallDelta, ToolSpec
from .grammar import JSON_LAYOUT, closed_objects

__all__ = [
    "ParsedDelta",
    "ToolCallParser",
    "ToolFormat",
    "call_constraint",
    "detect_format",
    "generic_tools_prompt",
    "template_knows_tools",
    "template_messages",
    "template_tools",
]

ToolFormat = Literal["hermes", "llama3", "mistral", "generic"]

HERMES_OPEN = "<tool_call>"
HERMES_CLOSE = "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
MISTRAL_CALLS = "[TOOL_CALLS]"
MISTRAL_ARGS = "[ARGS]"

_ALNUM = string.ascii_letters + string.digits
# The contents of Jinja statement and expression blocks ({% ... %}, {{ ... }}).
_JINJA_BLOCK = re.compile(r"\{[%{](.*?)[%}]\}", re.S)
_TOOLS_WORD = re.compile(r"\btools\b")


# -- the template's side ---------------------------------------------------------------------


def detect_format(template: str | None) -> ToolFormat:
    """The tool-call format a chat template was written for, from marks only its family uses.

    Checked in this order because a Hermes-style template may also mention `tools` in a Llama
    header, never the other way round. No template, or none of the marks: generic.
    """
    if not template:
        return "generic"
    if HERMES_OPEN in template:
        return "hermes"
    if PYTHON_TAG in template or ("<|start_header_id|>" in template and "tools" in template):
        return "llama3"
    if MISTRAL_CALLS in template:
        return "mistral"
    return "generic"


def template_knows_tools(template: str | None) -> bool:
    """Whether a chat template renders a `tools` variable (inside `{% %}` or `{{ }}`): only then
    are tools handed to it natively; otherwise they go into a generic system prompt, since a
    template that ignores `tools` would silently drop them."""
    if not template:
        return False
    return any(_TOOLS_WORD.search(block) for block in _JINJA_BLOCK.findall(template))


def template_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """The template's `tools` variable, in OpenAI's request shape (what templates are written
    for). A function without a parameters schema gets an empty object schema, since templates
    iterate `parameters.properties`."""
    return [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters or {"type": "object", "properties": {}}},
        }
        for t in tools
    ]


def _parsed_arguments(arguments: str) -> Any:
    """A call's arguments as templates want them (a mapping they `tojson`), or the text as given
    when it is not JSON: a template must never fail on what a client echoed back."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def _mistral_id(call_id: str) -> str:
    """Mistral templates refuse call ids that are not 9 alphanumerics: others are mapped to
    one, the same for the call and its result, so the pairing survives."""
    if len(call_id) == 9 and call_id.isascii() and call_id.isalnum():
        return call_id
    return hashlib.sha256(call_id.encode()).hexdigest()[:9]


def template_messages(
    messages: Sequence[ChatMessage], tools: Sequence[ToolSpec], tool_choice: str, parallel: bool, fmt: ToolFormat, native: bool
) -> list[dict[str, Any]]:
    """The message dicts handed to the chat template.

    `native`: the template renders tools itself (`template_knows_tools`), so earlier calls and
    their results are given in OpenAI's shape (arguments parsed, as templates `tojson` them).
    Otherwise, as llama.cpp's generic format, the tools are described in a system prompt, calls
    are written as the JSON the model is asked to produce, and results come back as user
    messages (a template that knows no tools knows no `tool` role either). Messages without
    tool parts are plain `{"role", "content"}`.
    """
    names = {call.id: call.name for m in messages for call in m.tool_calls}
    if native:
        return [_native_message(m, names, fmt) for m in messages]
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "tool":
            response = {"tool_response": {"tool": m.name or names.get(m.tool_call_id or "", ""), "tool_call_id": m.tool_call_id, "content": m.content or ""}}
            text = json.dumps(response, ensure_ascii=False)
            # Results of parallel calls come as one user turn: templates that insist on
            # alternating roles would refuse two user messages in a row.
            if out and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n" + text
            else:
                out.append({"role": "user", "content": text, "_tool_results": True})
        elif m.role == "assistant" and m.tool_calls:
            calls = [{"name": c.name, "arguments": _parsed_arguments(c.arguments), "id": c.id} for c in m.tool_calls]
            shape: dict[str, Any] = {"tool_call": calls[0]} if not parallel and len(calls) == 1 else {"tool_calls": calls}
            text = json.dumps(shape, ensure_ascii=False)
            out.append({"role": "assistant", "content": f"{m.content}\n{text}" if m.content else text})
        else:
            out.append({"role": m.role, "content": m.content or ""})
    for d in out:
        d.pop("_tool_results", None)
    if tools:
        prompt = generic_tools_prompt(tools, tool_choice, parallel)
        if out and out[0]["role"] in ("system", "developer"):
            first = out[0]["content"]
            out[0] = {"role": out[0]["role"], "content": f"{first}\n\n{prompt}" if first else prompt}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def _native_message(m: ChatMessage, names: Mapping[str, str], fmt: ToolFormat) -> dict[str, Any]:
    ident = _mistral_id if fmt == "mistral" else (lambda i: i)
    if m.role == "assistant" and m.tool_calls:
        return {
            "role": "assistant",
            "content": m.content or "",
            "tool_calls": [
                {"id": ident(c.id), "type": "function", "function": {"name": c.name, "arguments": _parsed_arguments(c.arguments)}}
                for c in m.tool_calls
            ],
        }
    if m.role == "tool":
        d: dict[str, Any] = {"role": "tool", "tool_call_id": ident(m.tool_call_id or ""), "content": m.content or ""}
        # Some templates (Llama, Gemma) print the function's name with its result.
        name = m.name or names.get(m.tool_call_id or "")
        if name:
            d["name"] = name
        return d
    return {"role": m.role, "content": m.content or ""}


def generic_tools_prompt(tools: Sequence[ToolSpec], tool_choice: str, parallel: bool) -> str:
    """The system prompt that teaches a model whose template knows no tools the generic format:
    the functions with their JSON Schemas, and the one JSON object its reply must be (the
    grammar of `call_constraint("generic", ...)` enforces the same shapes)."""
    named = tool_choice not in ("auto", "required", "none")
    lines = ["You can call functions. The available functions, with JSON Schemas of their arguments:", ""]
    for t in tools:
        lines.append(f"- {t.name}: {t.description}" if t.description else f"- {t.name}")
        lines.append(f"  parameters: {json.dumps(t.parameters or {'type': 'object'}, ensure_ascii=False)}")
    lines += ["", "Reply with a single JSON object and nothing else."]
    name = tool_choice if named else "<function name>"
    call = f'{{"name": "{name}", "arguments": {{<arguments>}}}}'
    lines.append(f'To call a function: {{"tool_call": {call}}}')
    if parallel:
        lines.append(f'To call several functions at once: {{"tool_calls": [{call}, ...]}}')
    if named:
        lines.append(f"You must call the function {tool_choice!r}.")
    elif tool_choice == "required":
        lines.append("You must call at least one of the functions.")
    else:
        lines.append('To answer without calling a function: {"response": "<your answer>"}')
    return "\n".join(lines)


# -- the grammar ------------------------------------------------------------------------------


def _call_schema(tool: ToolSpec, args_key: str) -> dict[str, Any]:
    # Closed objects, as for response_format: a small model free to add keys invents them until max_tokens.
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, args_key: closed_objects(tool.parameters) if tool.parameters else {"type": "object"}},
        "required": ["name", args_key],
        "additionalProperties": False,
    }


def _any_call_schema(tools: Sequence[ToolSpec], args_key: str) -> dict[str, Any]:
    """One schema for a call of any of `tools`: llguidance picks between two `%json` rules at
    their first byte, so alternatives must live in one schema's anyOf."""
    schemas = [_call_schema(t, args_key) for t in tools]
    return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}


def _json_rule(schema: Mapping[str, Any]) -> str:
    # The JSON layout of response_format (JSON_LAYOUT): compact separators, no free whitespace.
    return "%json " + json.dumps({**schema, "x-guidance": JSON_LAYOUT}, ensure_ascii=False)


def _regex_literal(text: str) -> str:
    """`text` matched literally inside a Lark `/.../` regex."""
    return re.escape(text).replace("/", "\\/")


class _Markers:
    """How a marker is written in a grammar. A marker the vocabulary holds as a special token
    must be named as that token: a string literal only matches the bytes of ordinary tokens,
    so it would forbid the token the model was trained to emit. By id (`<[ID]>`) where known,
    by name (`<name>`) for `<...>` names, else as a string."""

    def __init__(self, special_tokens: frozenset[str], special_token_ids: Mapping[str, int] | None):
        self.names = special_tokens
        self.ids = special_token_ids or {}

    def special(self, marker: str) -> bool:
        return marker in self.ids or (marker in self.names and marker.startswith("<") and marker.endswith(">") and not marker.startswith("<["))

    def ref(self, marker: str) -> str:
        if marker in self.ids:
            return f"<[{self.ids[marker]}]>"
        if self.special(marker):
            return marker
        return json.dumps(marker)


def _free_then(markers: _Markers, opener: str, rest: str, lines: list[str]) -> str:
    """Free text, or free text then `opener` then `rest`: the text never contains `opener` (so
    every call is checked). A string opener ends a lazy lexeme (the text up to the first
    `opener`): a plain terminal that excludes it would be cut one byte short of it. A special
    token opener follows a terminal that excludes its spelling in ordinary tokens (which the
    parser would read as a call, unchecked)."""
    if markers.special(opener):
        lines.append(f"TEXT: /(?s:.)+/ & ~/(?s:.*){_regex_literal(opener)}(?s:.*)/")
        return f"TEXT? | TEXT? {markers.ref(opener)} {rest}"
    lines.append("TEXT: /(.|\\n)+/")
    lines.append(f"lead[lazy]: /(.|\\n)*{_regex_literal(opener)}/")
    return f"TEXT? | lead {rest}"


def _reasoning_prefix(markers: _Markers, reasoning: tuple[str, str] | None, starts_in: bool, lines: list[str]) -> str:
    """A reasoning block ahead of the constrained reply (a forced call must not forbid thinking
    first, and a template that opened `<think>` leaves the output inside it)."""
    if reasoning is None:
        return ""
    open_, close = reasoning
    if markers.special(close):
        lines.append("THINK_TEXT: /(.|\\n)+/")
        body = f"THINK_TEXT? {markers.ref(close)}"
    else:
        lines.append(f"think_body[lazy]: /(.|\\n)*{_regex_literal(close)}/")
        body = "think_body"
    if starts_in:
        lines.append(f"think: {body}")
        return "think WS "
    lines.append(f"think: {markers.ref(open_)} {body}")
    return "(think WS)? "


# Calls in one reply at most: a small model that may call again and again otherwise repeats its
# call until max_tokens, and the reply ends mid-call (finish_reason length, no call parsed).
MAX_PARALLEL_CALLS = 8


def call_constraint(
    fmt: ToolFormat,
    tools: Sequence[ToolSpec],
    tool_choice: str,
    parallel: bool,
    special_tokens: frozenset[str] = frozenset(),
    special_token_ids: Mapping[str, int] | None = None,
    *,
    reasoning: tuple[str, str] | None = None,
    starts_in_reasoning: bool = False,
) -> OutputConstraint | None:
    """The llguidance Lark grammar the output must match when tools are offered.

    tool_choice "required" or a function's name: the reply is calls (of that function) and
    nothing else; "auto": free text, in which every call the model starts must be a valid call
    of an offered function with schema-valid arguments; "none" (or no tools): None. Markers the
    vocabulary holds as special tokens (`special_tokens`, `special_token_ids` by text) are
    written as those tokens. `reasoning`: the model may think first (`starts_in_reasoning`: the
    prompt opened the block, so the output must close it before the reply).

    Raises InvalidRequestError when tool_choice names a function that is not offered.
    """
    if tool_choice == "none" or not tools:
        return None
    named = tool_choice not in ("auto", "required")
    if named:
        tools = [t for t in tools if t.name == tool_choice]
        if not tools:
            raise InvalidRequestError(f"tool_choice names the function {tool_choice!r}, which is not among the tools", param="tool_choice")
    forced = tool_choice != "auto"
    markers = _Markers(special_tokens, special_token_ids)
    lines: list[str] = ["WS: /[ \\t\\r\\n]*/"]
    prefix = _reasoning_prefix(markers, reasoning, starts_in_reasoning, lines)
    if fmt == "hermes":
        lines.append(f"body: {_json_rule(_any_call_schema(tools, 'arguments'))}")
        lines.append(f"call_rest: WS body WS {markers.ref(HERMES_CLOSE)}")
        lines.append(f"call: {markers.ref(HERMES_OPEN)} call_rest")
        more = f" (WS call){{0,{MAX_PARALLEL_CALLS - 1}}}" if parallel else ""
        main = f"call{more}" if forced else _free_then(markers, HERMES_OPEN, f"call_rest{more}", lines)
    elif fmt == "llama3":
        tag = f"{markers.ref(PYTHON_TAG)}? " if markers.special(PYTHON_TAG) else ""
        lines.append(f"body: {_json_rule(_any_call_schema(tools, 'parameters'))}")
        lines.append(f"call: {tag}body")
        calls = f"call (WS call){{0,{MAX_PARALLEL_CALLS - 1}}}" if parallel else "call"
        if forced:
            main = calls
        else:
            # Text is anything that does not open a JSON object (whitespace ahead of it too):
            # the output that does is a call.
            lines.append("TEXT: /[ \\t\\r\\n]*([^{ \\t\\r\\n](.|\\n)*)?/")
            main = f"TEXT | {calls}"
    elif fmt == "mistral":
        array: dict[str, Any] = {"type": "array", "items": _any_call_schema(tools, "arguments"), "minItems": 1, "maxItems": MAX_PARALLEL_CALLS if parallel else 1}
        lines.append(f"body: {_json_rule(array)}")
        main = f"{markers.ref(MISTRAL_CALLS)} WS body" if forced else _free_then(markers, MISTRAL_CALLS, "WS body", lines)
    else:
        call = _any_call_schema(tools, "arguments")
        wrapper: dict[str, Any]
        # One call is the shape the prompt shows first: a model not trained for tools, offered
        # only an array, repeats its call until MAX_PARALLEL_CALLS.
        wrapper = {"type": "object", "properties": {"tool_call": call}, "required": ["tool_call"], "additionalProperties": False}
        if parallel:
            calls_array = {"type": "array", "items": call, "minItems": 1, "maxItems": MAX_PARALLEL_CALLS}
            several = {"type": "object", "properties": {"tool_calls": calls_array}, "required": ["tool_calls"], "additionalProperties": False}
            wrapper = {"anyOf": [wrapper, several]}
        if not forced:
            response = {"type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"], "additionalProperties": False}
            wrapper = {"anyOf": [*(wrapper["anyOf"] if "anyOf" in wrapper else [wrapper]), response]}
        lines.append(f"body: {_json_rule(wrapper)}")
        main = "body"
    if prefix and "|" in main:  # the prefix goes ahead of every alternative
        lines[:0] = [f"start: {prefix}main", f"main: {main}"]
    else:
        lines.insert(0, f"start: {prefix}{main}")
    return OutputConstraint(kind="lark", value="\n".join(lines) + "\n", param="tool_choice" if named else "tools", name="tools")


# -- the output -------------------------------------------------------------------------------


class ParsedDelta(msgspec.Struct, frozen=True):
    """What a piece of raw output turned out to be: answer text, reasoning, and tool calls."""

    content: str = ""
    reasoning: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()


def _call_id() -> str:
    return "call_" + "".join(secrets.choice(_ALNUM) for _ in range(24))


def _held(text: str, markers: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a marker: what must
    wait for the next fragment before it can be called text."""
    for n in range(min(len(text), max(len(m) for m in markers) - 1), 0, -1):
        tail = text[-n:]
        if any(m.startswith(tail) for m in markers):
            return n
    return 0


def _as_call(value: object) -> tuple[str, dict[str, Any]] | None:
    """(name, arguments) of one call object as models write it: arguments under "arguments"
    or "parameters" (Llama), as an object or as JSON text of one, possibly in OpenAI's
    {"function": {...}} wrapper."""
    if isinstance(value, dict) and isinstance(value.get("function"), dict) and "name" not in value:
        value = value["function"]
    if not isinstance(value, dict):
        return None
    name = value.get("name")
    if not isinstance(name, str) or not name:
        return None
    args = value["arguments"] if "arguments" in value else value.get("parameters", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return name, args


def _as_calls(value: object) -> list[tuple[str, dict[str, Any]]] | None:
    """A call object or a non-empty list of them; None if any is not a call."""
    items = value if isinstance(value, list) else [value]
    calls = [_as_call(v) for v in items]
    if not calls or any(c is None for c in calls):
        return None
    return [c for c in calls if c is not None]


def _loads(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None


class _JsonEnd:
    """Finds where a JSON object or array ends in text that arrives in pieces: brackets counted
    outside strings. It only finds the end; json.loads judges what was found."""

    def __init__(self) -> None:
        self.pos = 0
        self.depth = 0
        self.in_string = False
        self.escaped = False

    def scan(self, text: str) -> int | None:
        """The end (exclusive) of the value starting at text[0] ('{' or '['), or None while it
        is still open. `text` is the same growing text at each call."""
        for i in range(self.pos, len(text)):
            c = text[i]
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif c == "\\":
                    self.escaped = True
                elif c == '"':
                    self.in_string = False
            elif c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth <= 0:
                    self.pos = i + 1
                    return i + 1
        self.pos = len(text)
        return None


_Mode = Literal[
    "think_start", "reasoning", "body_start", "plain", "scan", "hermes_call", "mistral_call",
    "llama_start", "llama_json_start", "llama_json", "llama_after", "generic_start", "generic_json", "tail",
]


_FIRST_MODE: dict[str, _Mode] = {"hermes": "scan", "mistral": "scan", "llama3": "llama_start", "generic": "generic_start"}


class ToolCallParser:
    """Splits streamed model output into content, reasoning and tool calls.

    Fragments may split anywhere (inside a marker, inside a call's JSON); text goes out as soon
    as it cannot be the start of a marker or a call, so content streams with at most a marker's
    length of delay. A call goes out when its JSON is complete, as OpenAI's deltas: one with
    index, id and name, then one with the arguments (compact JSON). Whitespace around calls is
    dropped. Nothing is lost: a call that does not parse (bad JSON, no name) is content, raw.

    `reasoning`: the markers of a reasoning block at the start of the output (None: no
    reasoning); `starts_in_reasoning`: the prompt opened the block. `tools_enabled` False: all
    non-reasoning output is content.
    """

    def __init__(
        self,
        fmt: ToolFormat,
        tools_enabled: bool,
        reasoning: tuple[str, str] | None = ("<think>", "</think>"),
        starts_in_reasoning: bool = False,
    ):
        self.fmt = fmt
        self.tools_enabled = tools_enabled
        self.reasoning = reasoning
        self._mode: _Mode = "body_start" if reasoning is None else ("reasoning" if starts_in_reasoning else "think_start")
        self._buf = ""
        self._after_think = False
        self._ws = ""  # whitespace held back in tool modes: dropped if a call follows
        self._structured = False  # a call (or a generic response) was parsed: trailing whitespace is dropped
        self._raw = ""  # text of the call being read that precedes _buf (its marker), for when it does not parse
        self._json: _JsonEnd | None = None
        self._mistral_name: str | None = None
        self._index = 0
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._calls: list[ToolCallDelta] = []
        self._done = False

    @property
    def called(self) -> bool:
        """At least one tool call was parsed (the finish reason becomes tool_calls)."""
        return self._index > 0

    def feed(self, text: str) -> ParsedDelta:
        if self._done:
            raise RuntimeError("ToolCallParser.feed after finish")
        self._buf += text
        while self._step(final=False):
            pass
        return self._take()

    def finish(self) -> ParsedDelta:
        """The end of the output: what was held back (a marker's prefix, an unfinished call)."""
        if not self._done:
            self._done = True
            while self._step(final=True):
                pass
            if self._ws and not self._structured:
                self._content.append(self._ws)
            self._ws = ""
        return self._take()

    # -- emitting --

    def _take(self) -> ParsedDelta:
        delta = ParsedDelta("".join(self._content), "".join(self._reasoning), tuple(self._calls))
        self._content, self._reasoning, self._calls = [], [], []
        return delta

    def _text(self, text: str) -> None:
        """Content in a tool mode: trailing whitespace waits, to be dropped if a call follows."""
        held = self._ws + text
        solid = held.rstrip()
        if solid:
            self._content.append(solid)
        self._ws = held[len(solid) :]

    def _plain(self, text: str) -> None:
        if self._ws:
            text, self._ws = self._ws + text, ""
        if text:
            self._content.append(text)

    def _emit(self, calls: Sequence[tuple[str, dict[str, Any]]]) -> None:
        self._ws = ""
        self._structured = True
        for name, args in calls:
            i, self._index = self._index, self._index + 1
            self._calls.append(ToolCallDelta(index=i, id=_call_id(), name=name))
            self._calls.append(ToolCallDelta(index=i, arguments=json.dumps(args, ensure_ascii=False, separators=(",", ":"))))

    def _call_or_raw(self, calls: Sequence[tuple[str, dict[str, Any]]] | None, raw: str) -> None:
        if calls:
            self._emit(calls)
        else:
            self._text(raw)

    def _scan_json(self) -> int | None:
        """The end of the JSON value that starts _buf, once it is complete."""
        if self._json is None:
            self._json = _JsonEnd()
        end = self._json.scan(self._buf)
        if end is not None:
            self._json = None
        return end

    # -- the state machine: one method per mode (_STEPS); each consumes what it can; True: go on --

    def _step(self, final: bool) -> bool:
        """One step of the state machine in the current mode: each consumes what it can; True: go on."""
        return _STEPS[self._mode](self, final)

    def _step_think_start(self, final: bool) -> bool:
        buf = self._buf
        assert self.reasoning is not None
        opener, rest = self.reasoning[0], buf.lstrip()
        if rest.startswith(opener):
            self._buf, self._mode = rest[len(opener) :], "reasoning"
            return True
        if opener.startswith(rest) and not final:
            return False
        self._mode = "body_start"
        return True

    def _step_reasoning(self, final: bool) -> bool:
        buf = self._buf
        assert self.reasoning is not None
        closer = self.reasoning[1]
        i = buf.find(closer)
        if i >= 0:
            self._reasoning.append(buf[:i])
            self._buf, self._mode, self._after_think = buf[i + len(closer) :], "body_start", True
            return True
        keep = 0 if final else _held(buf, (closer,))
        self._reasoning.append(buf[: len(buf) - keep])
        self._buf = buf[len(buf) - keep :]
        return False

    def _step_body_start(self, final: bool) -> bool:
        buf = self._buf
        if self._after_think:  # the blank line after </think> is not part of the answer
            buf = self._buf = buf.lstrip()
            if not buf and not final:
                return False
            self._after_think = False
        self._mode = _FIRST_MODE[self.fmt] if self.tools_enabled else "plain"
        return True

    def _step_plain(self, final: bool) -> bool:
        buf = self._buf
        self._plain(buf)
        self._buf = ""
        return False

    def _step_tail(self, final: bool) -> bool:
        buf = self._buf
        self._text(buf)
        self._buf = ""
        return False

    def _step_scan(self, final: bool) -> bool:
        buf = self._buf
        opener = HERMES_OPEN if self.fmt == "hermes" else MISTRAL_CALLS
        i = buf.find(opener)
        if i >= 0:
            self._text(buf[:i])
            self._raw, self._buf = opener, buf[i + len(opener) :]
            self._mode = "hermes_call" if self.fmt == "hermes" else "mistral_call"
            self._mistral_name = None
            return True
        keep = 0 if final else _held(buf, (opener,))
        self._text(buf[: len(buf) - keep])
        self._buf = buf[len(buf) - keep :]
        return False

    def _step_hermes_call(self, final: bool) -> bool:
        buf = self._buf
        i = buf.find(HERMES_CLOSE)
        if i < 0 and not final:
            return False
        body, rest = (buf[:i], buf[i + len(HERMES_CLOSE) :]) if i >= 0 else (buf, "")
        raw = self._raw + body + (HERMES_CLOSE if i >= 0 else "")
        call = _as_call(_loads(body))
        self._call_or_raw([call] if call else None, raw)
        self._buf, self._mode = rest, "scan"
        return True

    def _step_llama_start_or_after(self, final: bool) -> bool:
        buf = self._buf
        mode = self._mode
        rest = buf.lstrip() if mode == "llama_start" else buf.lstrip(" \t\r\n;")
        if not rest:
            if mode == "llama_start":
                self._text(buf)
            self._buf = ""
            return False
        if mode == "llama_after":  # separators between calls are dropped
            self._buf, self._mode = rest, "llama_start"
            return True
        lead = buf[: len(buf) - len(rest)]
        if rest.startswith(PYTHON_TAG):
            self._text(lead)
            self._raw, self._buf, self._mode = PYTHON_TAG, rest[len(PYTHON_TAG) :], "llama_json_start"
            return True
        if PYTHON_TAG.startswith(rest) and not final:
            return False
        if rest.startswith("{"):
            self._text(lead)
            self._raw, self._buf, self._mode = "", rest, "llama_json"
            return True
        self._mode = "plain"  # an answer in words: no call can follow
        return True

    def _step_llama_json_start(self, final: bool) -> bool:
        buf = self._buf
        rest = buf.lstrip()
        if rest.startswith("{"):
            self._raw += buf[: len(buf) - len(rest)]
            self._buf, self._mode = rest, "llama_json"
            return True
        if rest or final:  # <|python_tag|> then no JSON (a built-in tool's code): words
            self._text(self._raw)
            self._raw, self._mode = "", "plain"
            return True
        return False

    def _step_llama_json(self, final: bool) -> bool:
        buf = self._buf
        end = self._scan_json()
        if end is None and not final:
            return False
        end = len(buf) if end is None else end
        value = _loads(buf[:end])
        call = _as_call(value) if isinstance(value, dict) else None
        if call:
            self._emit([call])
            self._buf, self._mode = buf[end:], "llama_after"
        else:
            self._text(self._raw + buf[:end])
            self._buf, self._mode = buf[end:], "plain"
        self._raw = ""
        return True

    def _step_generic_start(self, final: bool) -> bool:
        buf = self._buf
        rest = buf.lstrip()
        if not rest:
            if final:
                self._text(buf)
                self._buf = ""
            return False
        self._text(buf[: len(buf) - len(rest)])
        self._buf = rest
        self._mode = "generic_json" if rest.startswith("{") else "plain"
        return True

    def _step_generic_json(self, final: bool) -> bool:
        buf = self._buf
        end = self._scan_json()
        if end is None and not final:
            return False
        end = len(buf) if end is None else end
        self._generic(buf[:end])
        self._buf, self._mode = buf[end:], "tail"
        return True

    def _generic(self, text: str) -> None:
        """One generic-format reply object: its calls, its response as content, or (any other
        JSON, or none) the text itself."""
        value = _loads(text)
        if isinstance(value, dict):
            calls = None
            if "tool_call" in value:
                calls = _as_calls(value["tool_call"]) if isinstance(value["tool_call"], dict) else None
            elif "tool_calls" in value:
                calls = _as_calls(value["tool_calls"]) if isinstance(value["tool_calls"], list) else None
            elif isinstance(value.get("response"), str):
                self._structured = True
                self._ws = ""  # the response is the answer as written
                self._content.append(value["response"])
                return
            if calls:
                self._emit(calls)
                return
        self._text(text)

    def _mistral_step(self, final: bool) -> bool:
        """After [TOOL_CALLS]: a JSON array (or object) of calls, or the newer `name[ARGS]{...}`."""
        buf = self._buf
        if self._json is None and self._mistral_name is None:
            rest = buf.lstrip()
            if not rest:
                if final:
                    self._text(self._raw + buf)
                    self._buf, self._mode = "", "scan"
                return False
            if rest[0] in "[{":
                self._raw += buf[: len(buf) - len(rest)]
                self._buf = buf = rest
            else:
                k = rest.find(MISTRAL_ARGS)
                start = rest[k + len(MISTRAL_ARGS) :].lstrip() if k >= 0 else ""
                if not start:
                    if final:
                        self._text(self._raw + buf)
                        self._buf, self._mode = "", "scan"
                    return False
                if not start.startswith("{"):
                    self._text(self._raw + buf)
                    self._buf, self._mode = "", "scan"
                    return False
                self._mistral_name = rest[:k].strip()
                self._raw += buf[: len(buf) - len(start)]
                self._buf = buf = start
        end = self._scan_json()
        if end is None and not final:
            return False
        end = len(buf) if end is None else end
        value = _loads(buf[:end])
        name = self._mistral_name
        if name is not None:
            call = _as_call({"name": name, "arguments": value}) if isinstance(value, dict) else None
            calls = [call] if call else None
        else:
            calls = _as_calls(value)
        self._call_or_raw(calls, self._raw + buf[:end])
        self._buf, self._mode, self._raw, self._mistral_name = buf[end:], "scan", "", None
        return True


# The step of each mode (ToolCallParser._step).
_STEPS = {
    "think_start": ToolCallParser._step_think_start,
    "reasoning": ToolCallParser._step_reasoning,
    "body_start": ToolCallParser._step_body_start,
    "plain": ToolCallParser._step_plain,
    "tail": ToolCallParser._step_tail,
    "scan": ToolCallParser._step_scan,
    "hermes_call": ToolCallParser._step_hermes_call,
    "mistral_call": ToolCallParser._mistral_step,
    "llama_start": ToolCallParser._step_llama_start_or_after,
    "llama_after": ToolCallParser._step_llama_start_or_after,
    "llama_json_start": ToolCallParser._step_llama_json_start,
    "llama_json": ToolCallParser._step_llama_json,
    "generic_start": ToolCallParser._step_generic_start,
    "generic_json": ToolCallParser._step_generic_json,
}

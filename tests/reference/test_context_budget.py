"""Sessions that never get stuck (finding F4): the context budget, the trimmed history, the retry.

A `user` conversation against a llama.cpp-like upstream with a 256-token context keeps
answering, turn after turn, because each run sends only the newest history that fits; when
the estimate is off and the upstream still answers ``context_length_exceeded``, the run tries
once more with half its history.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import aiohttp
import openai
import pytest

from openclaw_http_compat import (
    AgentRunRequest,
    ClientTool,
    GenerationOptions,
    RunError,
    TextDelta,
    ToolCall,
)
from openclaw_http_compat.config import ModelRef
from openclaw_http_compat.reference import AgentRuntime, GatewayConfig, SessionStore, Turn
from openclaw_http_compat.reference.budget import (
    FIRST_PAGE,
    TURN_TOKENS,
    Budget,
    context_budget,
    fit_history,
    history_tokens,
    is_context_overflow,
    load_history,
)
from openclaw_http_compat.reference.tokens import (
    IMAGE_TOKENS,
    estimate_json,
    estimate_message,
    estimate_messages,
    estimate_text,
)

from .mock_upstream import CompletionReply, ContextLimit, MockUpstream, Received, Reply, StreamReply
from .real_gateway import gateway_config, serve_gateway
from .test_runtime import SESSION, _collect, _config, _mock_agents, runtime_for

__all__ = ("runtime_for",)  # a fixture, imported for pytest

RuntimeFactory = Any

# --- the estimate ---------------------------------------------------------------------------


def test_text_estimate_is_utf8_bytes_over_four_rounded_up() -> None:
    """4 UTF-8 bytes a token, rounded up; multi-byte characters count by their bytes."""
    assert [estimate_text(t) for t in ("", "abcd", "abcde", "é", "日本語")] == [0, 1, 2, 1, 3]
    assert estimate_json({"a": [1, 2]}) == estimate_text('{"a":[1,2]}') == 3


def test_message_estimate_counts_overhead_content_calls_and_images() -> None:
    """A message costs 4 plus its text, its tool calls (id, name, arguments), its call id, and
    a fixed amount per image part; a request adds 3 for the reply's priming."""
    assert estimate_message({"role": "user", "content": "abcdefgh"}) == 4 + 2
    assert estimate_message({"role": "assistant", "content": None, "tool_calls": [
        {"id": "call", "type": "function", "function": {"name": "get", "arguments": "{}"}}]}) == 4 + 1 + 1 + 1
    assert estimate_message({"role": "tool", "content": "ok", "tool_call_id": "call"}) == 4 + 1 + 1
    parts = [{"type": "text", "text": "abcd"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 999}}]
    assert estimate_message({"role": "user", "content": parts}) == 4 + 1 + IMAGE_TOKENS
    assert estimate_messages([{"role": "user", "content": "abcd"}] * 2) == 3 + 2 * 5


# --- the budget -------------------------------------------------------------------------------


def _gateway(models: list[Any], defaults: dict[str, Any] | None = None) -> GatewayConfig:
    raw: dict[str, Any] = {"gateway": {"auth": {"mode": "none"}}, "models": {"providers": {"up": {"models": models}}}}
    if defaults is not None:
        raw["agents"] = {"defaults": defaults}
    return GatewayConfig.from_mapping(raw, env={})


@pytest.mark.parametrize(
    ("models", "defaults", "model", "max_tokens", "expected"),
    [
        ([{"id": "m", "contextWindow": 256}], None, "m", None, Budget(256, 64)),
        ([{"id": "m", "contextWindow": 256}], None, "m", 16, Budget(256, 16)),
        ([{"id": "m", "contextWindow": 128000, "contextTokens": 32000}], None, "m", None, Budget(32000, 4096)),
        ([{"id": "m", "contextWindow": 1000, "contextTokens": 5000}], None, "m", None, Budget(1000, 250)),
        ([{"id": "m", "contextTokens": 8000, "maxTokens": 500}], None, "m", None, Budget(8000, 500)),
        ([{"id": "m", "contextTokens": 8000, "maxTokens": 500}], None, "m", 100, Budget(8000, 100)),
        ([{"id": "m"}], {"contextTokens": 2000}, "m", None, Budget(2000, 500)),
        ([{"id": "m", "maxTokens": 10}], {"contextTokens": 2000}, "m", None, Budget(2000, 10)),
        ([{"id": "m", "contextWindow": 300}], {"contextTokens": 2000}, "m", None, Budget(300, 75)),
        ([], {"contextTokens": 2000}, "unlisted", None, Budget(2000, 500)),
        ([{"id": "m", "maxTokens": 10}], None, "m", None, None),
        ([], None, "m", None, None),
    ],
    ids=("window", "request-max-tokens", "tokens-within-window", "window-caps-tokens", "entry-max-tokens",
         "request-beats-entry", "defaults", "defaults-with-entry-max", "entry-beats-defaults", "unlisted-model",
         "no-context-size", "nothing"),
)
def test_context_budget(
    models: list[Any], defaults: dict[str, Any] | None, model: str, max_tokens: int | None, expected: Budget | None
) -> None:
    """The model entry's contextTokens capped by its contextWindow, else agents.defaults.contextTokens;
    the reply keeps max_tokens, else the entry's maxTokens, else a quarter of the context (4096 at most)."""
    options = GenerationOptions(max_tokens=max_tokens) if max_tokens is not None else None
    assert context_budget(_gateway(models, defaults), ModelRef("up", model), options) == expected


def test_budget_counts_system_prompt_and_tools() -> None:
    """What is left for the conversation: the prompt budget less the system message, the tool
    definitions and the reply's priming; at least one message is always loaded."""
    budget = Budget(256, 64)
    system = [{"role": "system", "content": "x" * 40}]
    tool = ClientTool(name="get_weather", description="Weather", parameters={"type": "object"})
    tools_tokens = estimate_json([["get_weather", "Weather", {"type": "object"}]])
    assert budget.for_history(system, ()) == 192 - (4 + 10) - 3
    assert budget.for_history(system, (tool,)) == 192 - (4 + 10) - 3 - tools_tokens
    assert (budget.max_messages, Budget(10, 9).max_messages, Budget(10, 20).max_messages) == (49, 1, 1)


class _Transcript:
    """A session of ``turns`` whose tail is read the way a store reads it; it keeps each limit asked."""

    def __init__(self, turns: list[Turn]) -> None:
        self.turns = turns
        self.limits: list[int | None] = []

    async def load(self, *, limit: int | None = None) -> list[Turn]:
        self.limits.append(limit)
        return list(self.turns if limit is None else self.turns[-limit:])


def _session(count: int, text: str) -> _Transcript:
    return _Transcript([Turn("user" if i % 2 == 0 else "assistant", f"{i}: {text}") for i in range(count)])


async def test_a_long_session_costs_a_small_context_one_page() -> None:
    """10,000 turns of 44 tokens and a 1,024-token context: one read of the first page (the
    prompt's 768 tokens over TURN_TOKENS: 24 turns), whatever the session's age; the page
    already holds more tokens than fit (the prompt allows 193 turns of bare overhead)."""
    budget = Budget(1024, 256)
    first = budget.prompt // TURN_TOKENS
    old, young = _session(10_000, "x" * 160), _session(10, "x" * 160)
    assert await load_history(old, budget) == old.turns[-first:]
    assert await load_history(young, budget) == young.turns
    assert old.limits == young.limits == [first] == [24]


async def test_a_wide_context_of_short_turns_reads_page_after_page() -> None:
    """Short turns (6 tokens each) and a 128k context: pages grow fourfold while every turn read
    could still be sent. 10,000 turns all fit, so all are read; of 40,000 the read stops at
    max_messages; a session shorter than a page is read once."""
    budget = Budget(131_072, 4096)
    first = budget.prompt // TURN_TOKENS
    fits = _session(10_000, "ok")
    assert await load_history(fits, budget) == fits.turns
    assert fits.limits == [first, 4 * first] == [3968, 15_872]
    long = _session(40_000, "ok")
    loaded = await load_history(long, budget)
    assert long.limits == [first, 4 * first, budget.max_messages]
    assert loaded == long.turns[-budget.max_messages :]
    assert sum(4 + estimate_text(turn.content) for turn in loaded) > budget.prompt
    short = _session(10, "ok")
    assert await load_history(short, budget) == short.turns
    assert short.limits == [first]


async def test_a_small_context_reads_at_least_a_first_page() -> None:
    """A context too small for TURN_TOKENS-sized turns still reads FIRST_PAGE turns at once."""
    budget = Budget(256, 64)
    session = _session(1_000, "x" * 400)
    assert await load_history(session, budget) == session.turns[-FIRST_PAGE:]
    assert session.limits == [FIRST_PAGE]


async def test_without_a_budget_the_whole_transcript_is_read_once() -> None:
    session = _session(300, "hello")
    assert await load_history(session, None) == session.turns
    assert session.limits == [None]


async def test_a_page_never_goes_past_max_messages() -> None:
    """The budget's max_messages caps the read, pages or not."""
    budget = Budget(2048, 0)
    session = _session(5_000, "")
    assert await load_history(session, budget) == session.turns[-513:]
    assert session.limits == [64, 256, budget.max_messages] == [64, 256, 513]


# --- trimming ---------------------------------------------------------------------------------

# Every message here costs 4 + 2 = 6 tokens (8 bytes of content), calls 4 + 1 + 1 + 2 = 8.
def _user(i: int) -> dict[str, Any]:
    return {"role": "user", "content": f"user {i:03}"}


def _said(i: int) -> dict[str, Any]:
    return {"role": "assistant", "content": f"said {i:03}"}


def _call(call_id: str) -> dict[str, Any]:
    return {"role": "assistant", "content": None,
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": "f", "arguments": "{}"}}]}


def _result(call_id: str) -> dict[str, Any]:
    return {"role": "tool", "content": "12345678", "tool_call_id": call_id}


def test_oldest_turns_go_first() -> None:
    """The newest turns that fit are kept, in order, from a user turn on; the new entries count
    against the budget."""
    earlier = [_user(0), _said(0), _user(1), _said(1)]
    new = [_user(2)]
    assert fit_history(earlier, new, 6 * 5) == earlier
    assert fit_history(earlier, new, 6 * 5 - 1) == earlier[2:]
    assert fit_history(earlier, new, 6 * 3) == earlier[2:]
    assert fit_history(earlier, new, 6 * 3 - 1) == []
    assert fit_history(earlier, new, None) == earlier
    # Untrimmed, a history is sent as it is, whatever it starts with.
    assert fit_history(earlier[1:], new, None) == fit_history(earlier[1:], new, 100) == earlier[1:]


def test_new_entries_are_never_dropped() -> None:
    """New entries over the budget still go (they are not in what is returned); no history does."""
    assert fit_history([_user(0), _said(0)], [_user(1)] * 10, 20) == []


def test_a_call_and_its_results_go_together() -> None:
    """An assistant turn that called tools is kept or dropped with its results, never split."""
    earlier = [_user(0), _call("a"), _result("a"), _said(1), _user(1), _call("b"), _result("b"), _said(2)]
    pair = estimate_message(_call("b")) + estimate_message(_result("b"))
    assert pair == 7 + 7
    assert fit_history(earlier, [_user(2)], 6 + 6 + pair + 6) == earlier[4:]
    # Room for said(2) and the pair, not for the user turn before them: nothing is kept.
    assert fit_history(earlier, [_user(2)], 6 + 6 + pair + 5) == []
    # Room for a result and a user turn, not for the call: never a result without its call.
    assert fit_history([_user(0), _call("a"), _result("a")], [_user(1)], 6 + 7 + 6) == []
    assert fit_history([_user(0), _call("a"), _result("a")], [_user(1)], 6 + pair + 6) == [_user(0), _call("a"), _result("a")]


def test_results_in_the_new_entries_keep_their_call() -> None:
    """When the new entries are tool results, the call they answer is kept whatever it costs."""
    earlier = [_user(0), _said(0), _user(1), _call("a")]
    assert fit_history(earlier, [_result("a")], 0) == [_call("a")]
    assert fit_history(earlier, [_result("a")], 7 + 7 + 6) == [_user(1), _call("a")]
    assert fit_history(earlier, [_result("a")], 7 + 7 + 5) == [_call("a")]


def test_results_without_their_call_are_left_out() -> None:
    """A result whose call is gone (cut off the loaded tail, or never stored) is not sent."""
    assert fit_history([_result("a"), _user(0), _said(0)], [_user(1)], None) == [_user(0), _said(0)]
    assert fit_history([_user(0), _result("a"), _said(0)], [_user(1)], None) == [_user(0), _said(0)]


@pytest.mark.parametrize(
    ("error", "overflow"),
    [
        (RunError(message="x", reason="format", status=400, code="context_length_exceeded"), True),
        (RunError(message="x", reason="server_error", code="context_length_exceeded"), True),
        (RunError(message="the request exceeds the available context size, try increasing it", reason="format",
                  status=400, code="exceed_context_size_error"), True),
        (RunError(message="This model's maximum context length is 2048 tokens. However, you requested 2100 tokens.",
                  reason="format", status=400), True),
        (RunError(message="prompt is too long: 210000 tokens > 200000 maximum", reason="format", status=400), True),
        (RunError(message="litellm.ContextWindowExceededError: context window exceeded", reason="format",
                  status=400), True),
        (RunError(message="maximum context length exceeded", reason="server_error", status=500), False),
        (RunError(message="Invalid value for 'temperature'", reason="format", status=400), False),
        (RunError(message="upstream stream ended before [DONE]", reason="server_error"), False),
    ],
)
def test_context_overflow_is_recognised(error: RunError, overflow: bool) -> None:
    """The code, or a 400/413 whose message says the context is exceeded (OpenAI, vLLM, llama.cpp, LiteLLM)."""
    assert is_context_overflow(error) is overflow


# --- the mock upstream's context limit ------------------------------------------------------


async def test_context_limit_refuses_like_llama_cpp(mock_upstream: MockUpstream) -> None:
    """Over n_ctx: 400 context_length_exceeded with llama-cpp-python's message, or an empty 200
    stream; under it, the reply. Tokens: 3 priming, 4 per message, one per word or mark."""
    limit = ContextLimit(n_ctx=20)
    mock_upstream.default = limit
    small = [{"role": "user", "content": "Hello, world!"}]  # 3 + 4 + 4 = 11
    big = [{"role": "user", "content": "one two three four five six seven"}] * 2  # 3 + 2 * (4 + 7) = 25
    async with aiohttp.ClientSession() as session:
        async def post(body: dict[str, Any]) -> tuple[int, str, bytes]:
            async with session.post(f"{mock_upstream.url}/chat/completions", json=body) as resp:
                return resp.status, resp.content_type, await resp.read()

        status, _, body = await post({"model": "m", "messages": small, "max_tokens": 9})
        assert (status, json.loads(body)["choices"][0]["message"]["content"]) == (200, "OK.")
        assert await post({"model": "m", "messages": small, "max_tokens": 10}) == (
            400,
            "application/json",
            json.dumps({"error": {
                "message": "This model's maximum context length is 20 tokens. However, you requested 21 tokens "
                "(11 in the messages, 10 in the completion). Please reduce the length of the messages or completion.",
                "type": "invalid_request_error", "param": None, "code": "context_length_exceeded"}}).encode(),
        )
        assert await post({"model": "m", "messages": big, "stream": True}) == (200, "text/event-stream", b"")
    assert (limit.prompt_tokens, limit.refused) == ([11, 11, 25], 2)


# --- through the gateway ----------------------------------------------------------------------

WEATHER_TOOL: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather by city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
SYSTEM_PROMPT = "You are a terse assistant."


def _assistant_replies(received: Received) -> Reply:
    """A tool call when asked about the weather; otherwise a short answer naming the turn."""
    last = received.json["messages"][-1]
    if last["role"] == "user" and "weather" in last["content"]:
        turn = last["content"].split()[1].rstrip(":")
        call = {"index": 0, "id": f"call_{turn}", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        return StreamReply(deltas=(), tool_calls=(call,), finish_reason="tool_calls")
    return CompletionReply(pieces=("Noted, ", f"that makes {len(received.json['messages'])} messages."))


def _check_pairs(messages: list[dict[str, Any]]) -> None:
    """Every tool message answers a call of the assistant turn before its run of results, and
    every call is answered."""
    open_calls: set[str] = set()
    for message in messages:
        if message["role"] == "tool":
            assert message["tool_call_id"] in open_calls, messages
            open_calls.discard(message["tool_call_id"])
            continue
        assert not open_calls, messages
        open_calls = {call["id"] for call in message.get("tool_calls") or ()}
    assert not open_calls, messages


async def _turn(client: openai.AsyncOpenAI, history: list[Any], stream: bool) -> tuple[str | None, list[Any]]:
    """One request with the whole history; the reply's text and tool calls as the client sees them."""
    kwargs: dict[str, Any] = {"model": "openclaw", "user": "alice", "messages": history, "tools": [WEATHER_TOOL]}
    if not stream:
        reply = await client.chat.completions.create(**kwargs)
        choice = reply.choices[0]
        calls = [call.model_dump(exclude_none=True) for call in choice.message.tool_calls or ()]
        assert choice.finish_reason == ("tool_calls" if calls else "stop")
        return choice.message.content, calls
    chunks = [chunk async for chunk in await client.chat.completions.create(stream=True, **kwargs)]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = []
    for delta in (d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()):
        # An identity delta (id, name) opens a call; argument fragments follow.
        assert delta.function is not None
        if delta.id:
            calls.append({"id": delta.id, "type": "function", "function": {"name": delta.function.name, "arguments": ""}})
        calls[-1]["function"]["arguments"] += delta.function.arguments or ""
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == (["tool_calls"] if calls else ["stop"])
    return text or None, calls


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_long_user_conversation_keeps_answering(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, stream: bool
) -> None:
    """24 user turns (four of them a tool call and its result) with `user` set, against an upstream
    with n_ctx 256 and a model entry with contextWindow 256: every turn is answered, every
    request fits the budget, holds the latest message, and keeps calls with their results."""
    limit = ContextLimit(n_ctx=256, reply=_assistant_replies)
    mock_upstream.default = limit
    raw = gateway_config(mock_upstream.url, models=[{"id": "tiny", "contextWindow": 256}],
                         agents={"defaults": {"model": "mock/tiny", "systemPrompt": SYSTEM_PROMPT}})
    history: list[Any] = []
    async with serve_gateway(raw, tmp_path) as (url, store):
        async with openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0) as client:
            for turn in range(24):
                topic = "weather in Paris" if turn % 5 == 4 else f"item {turn} on my shopping list"
                history.append({"role": "user", "content": f"Turn {turn}: please remember the {topic}."})
                text, calls = await _turn(client, history, stream)
                if calls:
                    history.append({"role": "assistant", "content": text, "tool_calls": calls})
                    history.append({"role": "tool", "tool_call_id": calls[0]["id"], "content": f"Sunny, {turn} C"})
                    text, calls = await _turn(client, history, stream)
                assert text is not None and text.startswith("Noted, that makes ")
                history.append({"role": "assistant", "content": text})
        transcript = await store.load("agent:main:openai-user:alice")

    assert limit.refused == 0
    requests = [r.json["messages"] for r in mock_upstream.requests]
    assert len(requests) == 24 + 4  # the tool turns (4, 9, 14, 19) take two calls
    tools = (ClientTool(name="get_weather", description="Weather by city",
                        parameters=WEATHER_TOOL["function"]["parameters"]),)
    system = [{"role": "system", "content": SYSTEM_PROMPT}]
    # A quarter of the window is kept for the reply (no max_tokens anywhere).
    available = Budget(256, 64).for_history(system, tools)
    for messages in requests:
        assert messages[0] == system[0]
        assert history_tokens(messages[1:]) <= available
        _check_pairs(messages)
    # The latest entry the client sent is the last message of each call, verbatim.
    client_entries = [m for m in history if m["role"] != "assistant"]
    assert [messages[-1]["content"] for messages in requests] == [m["content"] for m in client_entries]
    # The history was trimmed (the session holds far more than the last call sent) ...
    assert len(transcript) == len(history) == 24 * 2 + 4 * 2
    assert len(requests[-1]) < 16
    # ... and stored whole, calls and results included.
    assert transcript == [
        Turn(m["role"], m["content"] or "", tool_calls=tuple(_tool_calls(m)), tool_call_id=m.get("tool_call_id"))
        for m in history
    ]


def _tool_calls(message: dict[str, Any]) -> list[ToolCall]:
    return [ToolCall(id=c["id"], name=c["function"]["name"], arguments=c["function"]["arguments"])
            for c in message.get("tool_calls") or ()]


@pytest.mark.parametrize(("n_ctx", "retry_fits"), [(256, True), (100, False)], ids=["retry-fits", "retry-overflows"])
async def test_overflow_is_retried_once_with_half_the_history(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, n_ctx: int, retry_fits: bool
) -> None:
    """A budget too loose for the upstream (contextWindow 4096 in front of n_ctx 256): the
    refused call is retried once with the newer half of its history, and the SDK sees a normal
    completion; if that is refused too, the client gets the upstream's 400. Only a completed
    run is stored."""
    limit = ContextLimit(n_ctx=100_000, reply=CompletionReply(pieces=("Fine, noted.",)))
    mock_upstream.default = limit
    raw = gateway_config(mock_upstream.url, models=[{"id": "loose", "contextWindow": 4096}])
    async with serve_gateway(raw, tmp_path) as (url, store):
        async with openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0) as client:
            for i in range(12):
                content = f"Message {i}: here are a few more words to remember for later."
                await client.chat.completions.create(model="openclaw", user="alice",
                                                     messages=[{"role": "user", "content": content}])
            transcript = await store.load("agent:main:openai-user:alice")
            limit.n_ctx = n_ctx
            last: list[Any] = [{"role": "user", "content": "And now?"}]
            if retry_fits:
                reply = await client.chat.completions.create(model="openclaw", user="alice", messages=last)
                assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == ("Fine, noted.", "stop")
            else:
                with pytest.raises(openai.BadRequestError) as refused:
                    await client.chat.completions.create(model="openclaw", user="alice", messages=last)
                assert refused.value.status_code == 400
                assert "Please reduce the length of the messages" in refused.value.message
        after = await store.load("agent:main:openai-user:alice")

    assert len(mock_upstream.requests) == 12 + 2
    first, second = (r.json["messages"] for r in mock_upstream.requests[-2:])
    assert first == [*({"role": t.role, "content": t.content} for t in transcript), *last]
    assert limit.prompt_tokens[-2] > n_ctx
    assert (limit.prompt_tokens[-1] <= n_ctx) is retry_fits
    # The retry sends the newer half of the history (by the estimate), from a user turn on,
    # then the new message.
    assert second == first[len(first) - len(second) :]
    exchange = history_tokens(first[:2])
    assert history_tokens(first[:-1]) // 2 - exchange < history_tokens(second[:-1]) <= history_tokens(first[:-1]) // 2
    assert second[0]["role"] == "user"
    if retry_fits:
        assert after == [*transcript, Turn("user", "And now?"), Turn("assistant", "Fine, noted.")]
    else:
        assert after == transcript


async def _fill(store: SessionStore, exchanges: int) -> None:
    for i in range(exchanges):
        await store.append(SESSION, [Turn("user", f"question {i} " * 4), Turn("assistant", f"answer {i} " * 4)])


async def test_no_retry_once_something_was_streamed(
    runtime_for: RuntimeFactory, mock_upstream: MockUpstream, store: SessionStore
) -> None:
    """An overflow reported after the reply began (an in-band error) is not retried: the client
    already has part of the reply."""
    await _fill(store, 4)
    runtime: AgentRuntime = runtime_for(_config(mock_upstream.url, agents=_mock_agents()))
    error = {"message": "context exceeded", "type": "invalid_request_error", "code": "context_length_exceeded"}
    mock_upstream.reply(StreamReply(deltas=("par",), error=error))
    assert await _collect(runtime, _request_for("more?")) == [
        TextDelta("par"), RunError(message="context exceeded", reason="server_error", code="context_length_exceeded")
    ]
    assert len(mock_upstream.requests) == 1
    assert len(await store.load(SESSION)) == 8


@pytest.mark.parametrize("history", [0, 4], ids=["no-history", "streamed"])
async def test_no_retry_without_history_or_when_streaming(
    runtime_for: RuntimeFactory, mock_upstream: MockUpstream, store: SessionStore, history: int
) -> None:
    """With no history to halve, the overflow is the run's error at once. A streamed overflow
    is an empty 200 body, which says nothing about the context: it is not retried either."""
    await _fill(store, history)
    mock_upstream.default = ContextLimit(n_ctx=8)
    runtime: AgentRuntime = runtime_for(_config(mock_upstream.url, agents=_mock_agents()))
    events = await _collect(runtime, _request_for("more?", stream=bool(history)))
    assert len(mock_upstream.requests) == 1
    assert isinstance(events[-1], RunError) and len(events) == 1
    if not history:
        assert events[-1].code == "context_length_exceeded"
    assert len(await store.load(SESSION)) == 2 * history


def _request_for(message: str, **kwargs: Any) -> AgentRunRequest:
    return AgentRunRequest(run_id="chatcmpl_1", agent_id="main", session_key=SESSION, message=message, **kwargs)

"""Property-based tests: whatever a client sends, the answer is well formed.

Every response is either a success (200 with a valid ``chat.completion``, or an SSE stream
of valid chunks ending in ``data: [DONE]``) or an error with the exact OpenAI envelope
``{"error": {"message", "type", "param", "code"}}`` and a 4xx status. Never a 5xx, never a
traceback in a body, never a hang. The agent runner is instant: it echoes the prompt, or
calls the first client tool when the request offers tools (so a forced ``tool_choice`` is
always satisfied and a 502 is never the correct answer).

Budgets are fixed per property (``max_examples``) so the whole file runs in seconds.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pytest_aiohttp import AiohttpClient

from openclaw_http_compat import (
    AgentEvent,
    AgentRunRequest,
    RunEnd,
    RunUsage,
    TextDelta,
    ToolCall,
)

from .conftest import TOKEN, ScriptedRunner, make_config, make_gateway

Client = TestClient[web.Request, web.Application]

AUTH: Final = {"Authorization": f"Bearer {TOKEN}"}
CHAT: Final = "/v1/chat/completions"
REQUEST_TIMEOUT_S: Final = 10.0
VALID_BODY: Final = {"model": "openclaw", "messages": [{"role": "user", "content": "hi"}]}
# Exception class names that only reach a body through str(exc) or a traceback.
_PYTHON_ERROR = re.compile(
    r"Traceback|File \"|\b(?:Overflow|UnicodeEncode|UnicodeDecode|Key|Type|Attribute|Index|Recursion|Runtime"
    r"|Assertion|ZeroDivision|JSONDecode|Memory|NotImplemented|Name)Error\b"
)

# One place to set the budgets; the README's Reliability section quotes these numbers.
BUDGET: Final = settings(
    max_examples=250,
    deadline=None,
    # The client fixture is deliberately shared by every example: one gateway, many requests.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
SMALL_BUDGET: Final = settings(BUDGET, max_examples=100)


async def tool_or_echo(request: AgentRunRequest) -> AsyncIterator[AgentEvent]:
    """Echo the prompt; call the first offered client tool instead when there is one."""
    yield RunUsage(input=len(request.message), output=3)
    if request.client_tools:
        yield ToolCall(id="call_1", name=request.client_tools[0].name, arguments='{"q": 1}')
        yield RunEnd("tool_calls")
        return
    yield TextDelta("echo: ")
    yield TextDelta(request.message)
    yield RunEnd()


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    """The stand-in gateway with the plugin, on a loopback test server, shared by all examples."""
    return await aiohttp_client(make_gateway(make_config(), ScriptedRunner(tool_or_echo)))


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------

# Unicode text without lone surrogates (those have a property of their own, below).
texts = st.text(max_size=30)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats()  # NaN and ±Infinity too: Python's JSON reader accepts them
    | texts
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)

_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8
_JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 8
image_urls = st.one_of(
    st.sampled_from(
        [
            "data:image/png;base64," + base64.b64encode(_PNG).decode(),
            "data:image/jpeg;base64," + base64.b64encode(_JPEG).decode(),
            "data:;base64," + base64.b64encode(_PNG).decode(),
            "data:image/png;charset=utf-8;base64," + base64.b64encode(_PNG).decode(),
            "data:image/svg+xml;base64,PHN2Zy8+",
            "data:application/pdf;base64,JVBERi0=",
            "data:image/png,notbase64",
            "data:image/png;base64,",
            "data:image/png;base64,!!!",
            "data:",
            "",
            "   ",
            # Remote URLs: images.allowUrl is off, so these are refused without any fetch.
            "http://127.0.0.1/x.png",
            "https://example.com/cat.png",
            "http://[::1]:80/",
            "file:///etc/passwd",
            "ftp://example.com/x",
        ]
    ),
    st.builds(lambda b, mime: f"data:{mime};base64," + base64.b64encode(b).decode(), st.binary(max_size=40),
              st.sampled_from(["image/png", "image/gif", "image/webp", "text/plain", ""])),
    st.builds(lambda host, path: f"https://{host}/{quote(path)}", st.from_regex(r"[a-z0-9.-]{1,20}", fullmatch=True), texts),
    texts,
)

text_parts = st.fixed_dictionaries({"type": st.sampled_from(["text", "input_text"]), "text": texts | json_values})
image_parts = st.fixed_dictionaries(
    {
        "type": st.just("image_url"),
        "image_url": image_urls
        | st.fixed_dictionaries({"url": image_urls | json_values}, optional={"detail": st.sampled_from(["auto", "low"])})
        | json_values,
    }
)
parts = text_parts | image_parts | st.fixed_dictionaries({"input_text": texts}) | json_values
contents = texts | st.none() | st.lists(parts, max_size=4) | json_values
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", " User ", "bogus", ""]) | json_values
tool_calls = st.lists(
    st.fixed_dictionaries(
        {
            "id": texts | json_values,
            "type": st.just("function"),
            "function": st.fixed_dictionaries({"name": texts | json_values, "arguments": texts | json_values}),
        }
    )
    | json_values,
    max_size=3,
)
messages = st.fixed_dictionaries(
    {"role": roles},
    optional={
        "content": contents,
        "name": texts,
        "tool_call_id": texts | json_values,
        "tool_calls": tool_calls | json_values,
        "stopReason": st.sampled_from(["error", "stop"]),
    },
) | json_values

tool_names = st.sampled_from(["get_weather", "lookup", " spaced ", ""]) | texts
tools = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["function", "retrieval"]),
        "function": st.fixed_dictionaries(
            {"name": tool_names | json_values},
            optional={
                "description": texts | json_values,
                "parameters": st.dictionaries(texts, json_values, max_size=3) | json_values,
                "strict": st.booleans() | json_values,
            },
        )
        | json_values,
    }
) | json_values
tool_choices = (
    st.sampled_from(["auto", "none", "required", "any"])
    | st.fixed_dictionaries(
        {"type": st.sampled_from(["function", "web"]), "function": st.fixed_dictionaries({"name": tool_names}) | json_values}
    )
    | json_values
)
numbers = st.integers(min_value=-(2**64), max_value=2**64) | st.floats() | json_values
models = (
    st.sampled_from(
        ["openclaw", "openclaw/default", "OpenClaw/Main", "openclaw:beta", "agent:alpha", "openclaw/ghost", "gpt-4o", "", "  "]
    )
    | texts
    | json_values
)

chat_bodies = st.fixed_dictionaries(
    {"messages": st.lists(messages, max_size=5) | json_values},
    optional={
        "model": models,
        "stream": st.booleans() | json_values,
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans() | json_values})
        | json_values,
        "tools": st.lists(tools, max_size=3) | json_values,
        "tool_choice": tool_choices,
        "n": st.sampled_from([1, 2, 0, 1.0]) | json_values,
        "temperature": st.floats(min_value=-1, max_value=3) | numbers,
        "top_p": st.floats(min_value=-1, max_value=2) | numbers,
        "frequency_penalty": numbers,
        "presence_penalty": numbers,
        "seed": numbers,
        "max_tokens": st.integers(min_value=-5, max_value=2**54) | numbers,
        "max_completion_tokens": st.integers(min_value=-5, max_value=2**54) | numbers,
        "stop": texts | st.lists(texts, max_size=6) | json_values,
        "response_format": st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])})
        | json_values,
        "user": texts | json_values,
        "logprobs": json_values,
        "metadata": json_values,
    },
)

# Header values an HTTP client can send: printable, no control characters, no surrogates.
header_texts = st.sampled_from(
    [
        "main", "beta", "ALPHA", "ghost", "", " ", "subagent:x", "cron:1", "acp:z", "agent:main:subagent:x",
        "agent:main:harness:codex:1", "agent:beta:openai:custom", "openai/gpt-4o", "openai/", "/x", "gpt-4o",
        "Slack", "bearer test-token", "Bearer test-token", "Bearer  test-token ", "Basic dGVzdA==", "Bearer",
    ]
) | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40) | st.text(
    st.characters(categories=["L", "N", "P", "S", "Zs"]), max_size=20
)
header_names = st.sampled_from(
    [
        "x-openclaw-agent-id",
        "x-openclaw-agent",
        "x-openclaw-session-key",
        "x-openclaw-model",
        "x-openclaw-message-channel",
        "x-openclaw-scopes",
        "Authorization",
    ]
)


def _mutate(data: bytes, position: int, insert: bytes, cut: int) -> bytes:
    position %= len(data) + 1
    return data[:position] + insert + data[position + cut :]


valid_bytes = st.sampled_from(
    [json.dumps(VALID_BODY).encode(), json.dumps({**VALID_BODY, "stream": True}).encode()]
)
raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.builds(_mutate, valid_bytes, st.integers(0, 200), st.binary(max_size=8), st.integers(0, 8)),
    st.builds(lambda b, n: b[:n], valid_bytes, st.integers(0, 80)),
    st.sampled_from(
        [
            b"", b"   ", b"\xef\xbb\xbf{}", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xff\xfe{\x00}\x00",
            b'{"messages": [{"role": "user", "content": "\xe9"}]}', b"null", b"[]", b'"x"', b"1e999",
            b'{"messages": NaN}', b"{" * 2000, b"[" * 500,
        ]
    ),
)


# --------------------------------------------------------------------------------------------
# The oracle
# --------------------------------------------------------------------------------------------


def _no_python_internals(body: bytes) -> None:
    text = body.decode("utf-8", "replace")
    match = _PYTHON_ERROR.search(text)
    assert match is None, f"Python internals leak into a body: {match.group(0)!r} in {text[:300]!r}"


def assert_error_envelope(status: int, content_type: str, body: bytes) -> None:
    """A 4xx with exactly ``{"error": {message: str, type: str, param: str|None, code: str|None}}``."""
    assert 400 <= status < 500, f"status {status}: {body[:300]!r}"
    assert content_type == "application/json", content_type
    error = json.loads(body)
    assert isinstance(error, dict) and list(error) == ["error"], error
    inner = error["error"]
    assert isinstance(inner, dict) and set(inner) == {"message", "type", "param", "code"}, inner
    assert isinstance(inner["message"], str) and inner["message"]
    assert isinstance(inner["type"], str) and inner["type"]
    assert inner["param"] is None or isinstance(inner["param"], str)
    assert inner["code"] is None or isinstance(inner["code"], str)


def _expected_model(body: object) -> str:
    model = body.get("model") if isinstance(body, Mapping) else None
    return model if isinstance(model, str) and model else "openclaw"


def _wants_usage(body: object) -> bool:
    if not isinstance(body, Mapping) or body.get("stream") is not True:
        return False
    options = body.get("stream_options")
    return isinstance(options, Mapping) and options.get("include_usage") is True


def _assert_usage(usage: object) -> None:
    assert isinstance(usage, dict)
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert isinstance(usage[key], int) and usage[key] >= 0


def assert_completion(payload: bytes, request_body: object) -> None:
    """A valid non-streaming ``chat.completion``."""
    completion = json.loads(payload)
    assert completion["object"] == "chat.completion"
    assert isinstance(completion["id"], str) and completion["id"].startswith("chatcmpl_")
    assert isinstance(completion["created"], int)
    assert completion["model"] == _expected_model(request_body)
    [choice] = completion["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] in ("stop", "length", "tool_calls")
    message = choice["message"]
    assert message["role"] == "assistant" and isinstance(message["content"], str)
    for call in message.get("tool_calls", []):
        assert call["type"] == "function" and isinstance(call["id"], str)
        assert isinstance(call["function"]["name"], str) and isinstance(call["function"]["arguments"], str)
    _assert_usage(completion["usage"])


def assert_sse(payload: bytes, request_body: object) -> None:
    """A well-formed chunk stream: role first, one finish chunk, usage iff asked, then [DONE]."""
    assert payload.endswith(b"data: [DONE]\n\n"), payload[-200:]
    frames = payload.split(b"\n\n")
    assert frames[-1] == b"" and frames[-2] == b"data: [DONE]"
    chunks = []
    for frame in frames[:-2]:
        if frame.startswith(b":"):  # a keep-alive comment
            continue
        assert frame.startswith(b"data: "), frame
        chunk = json.loads(frame[len(b"data: ") :])
        assert "error" not in chunk, f"in-band error from an instant, error-free runner: {chunk}"
        chunks.append(chunk)
    assert chunks, payload
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl_")
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["model"] == _expected_model(request_body) for c in chunks)
    assert chunks[0]["choices"] == [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]
    finishes = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"] is not None]
    assert len(finishes) == 1 and finishes[0]["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")
    usage = [c for c in chunks if c["choices"] == []]
    if _wants_usage(request_body):
        assert len(usage) == 1 and usage[0] is chunks[-1]
        _assert_usage(usage[0]["usage"])
    else:
        assert usage == [] and not any("usage" in c for c in chunks)


async def post(client: Client, data: bytes, headers: Mapping[str, str] | None = None) -> tuple[int, str, bytes]:
    """POST raw bytes and read the whole answer, failing on a hang."""
    async with asyncio.timeout(REQUEST_TIMEOUT_S):
        async with client.post(CHAT, data=data, headers={**AUTH, **(headers or {})}) as resp:
            return resp.status, resp.content_type, await resp.read()


def check_answer(status: int, content_type: str, payload: bytes, request_body: object) -> None:
    """The oracle: a valid success or a 4xx OpenAI error, nothing else."""
    assert status < 500, f"status {status}: {payload[:300]!r}"
    _no_python_internals(payload)
    if status != 200:
        assert_error_envelope(status, content_type, payload)
    elif content_type == "text/event-stream":
        assert isinstance(request_body, Mapping) and request_body.get("stream") is True
        assert_sse(payload, request_body)
    else:
        assert content_type == "application/json", content_type
        assert_completion(payload, request_body)


def encode(body: object) -> bytes:
    """JSON text the way a lenient client writes it (NaN and Infinity included)."""
    return json.dumps(body).encode("utf-8")


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


@BUDGET
@given(body=json_values | st.dictionaries(st.sampled_from(["model", "messages", "stream", "tools"]) | texts, json_values))
async def test_any_json_body_gets_a_completion_or_an_openai_error(client: Client, body: object) -> None:
    """Any JSON value as the body gets a valid completion or a 4xx with the exact OpenAI error envelope."""
    check_answer(*await post(client, encode(body)), body)


@BUDGET
@given(body=chat_bodies)
@example(body={"messages": [{"role": "user", "content": "hi"}], "stream": True,
               "stream_options": {"include_usage": True}})
@example(body={"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function",
               "function": {"name": "f"}}], "tool_choice": "required", "stream": True})
@example(body={"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "data:image/png;base64,"
               + base64.b64encode(_PNG).decode()}]}]})
async def test_near_valid_chat_body_gets_a_completion_or_an_openai_error(client: Client, body: dict[str, Any]) -> None:
    """A chat body with random field types and shapes gets a valid completion or stream, or a 4xx OpenAI error."""
    check_answer(*await post(client, encode(body)), body)


@BUDGET
@given(
    headers=st.dictionaries(header_names, header_texts, max_size=5),
    keep_auth=st.booleans(),
    stream=st.booleans(),
)
async def test_random_openclaw_headers_get_a_completion_or_an_openai_error(
    client: Client, headers: dict[str, str], keep_auth: bool, stream: bool
) -> None:
    """Random agent, session, model, channel, scopes and Authorization headers never break the answer."""
    if keep_auth:
        headers.pop("Authorization", None)
    body = {**VALID_BODY, "stream": stream}
    status, content_type, payload = await post(client, encode(body), headers)
    check_answer(status, content_type, payload, body)
    if not keep_auth and "Authorization" in headers:
        # Only the exact token (any-case scheme, padding trimmed) may get through.
        credential = headers["Authorization"].strip()
        scheme, _, secret = credential.partition(" ")
        if status == 200:
            assert scheme.lower() == "bearer" and secret.strip() == TOKEN


@BUDGET
@given(data=raw_bodies)
async def test_raw_bytes_body_gets_a_completion_or_an_openai_error(client: Client, data: bytes) -> None:
    """Arbitrary bytes, invalid UTF-8, truncated or corrupted JSON get a completion or a 4xx OpenAI error."""
    status, content_type, payload = await post(client, data)
    if status == 200:
        body = json.loads(data.decode("utf-8").strip() or "{}")
        check_answer(status, content_type, payload, body)
    else:
        check_answer(status, content_type, payload, None)


@SMALL_BUDGET
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
    path=st.sampled_from(["/v1/chat/completions", "/v1/models", "/v1/models/openclaw", "/v1/models/openclaw/main"])
    | st.builds(lambda p: "/v1/models/" + quote(p, safe=""), texts)
    | st.builds(lambda p: "/v1/" + quote(p, safe="/"), texts),
)
async def test_any_method_and_path_under_v1_gets_json_or_an_openai_error(client: Client, method: str, path: str) -> None:
    """Every method on every path under /v1 gets a JSON answer or a 4xx OpenAI error (404, 405), never a 5xx."""
    async with asyncio.timeout(REQUEST_TIMEOUT_S):
        async with client.request(method, path, headers=AUTH, data=encode(VALID_BODY)) as resp:
            status, content_type, payload = resp.status, resp.content_type, await resp.read()
    assert status < 500 and b"Traceback" not in payload
    if status != 200:
        assert_error_envelope(status, content_type, payload)
        return
    answer = json.loads(payload)
    if method == "POST":
        assert_completion(payload, VALID_BODY)
    elif answer["object"] == "list":
        assert all(m["object"] == "model" for m in answer["data"])
    else:
        assert answer["object"] == "model" and isinstance(answer["id"], str)


# --------------------------------------------------------------------------------------------
# Inputs outside what the general strategies draw
# --------------------------------------------------------------------------------------------

# Text with at least one lone surrogate somewhere in it.
surrogate_texts = st.builds(
    lambda before, surrogate, after: before + surrogate + after,
    st.text(max_size=5),
    st.characters(categories=["Cs"]),
    st.text(max_size=5),
)


@BUDGET
@given(
    where=st.sampled_from(["content", "user", "tool_name", "tool_choice_type", "model", "stop", "part_text"]),
    text=surrogate_texts,
    stream=st.booleans(),
)
@example(where="content", text="\ud800", stream=False)
@example(where="tool_choice_type", text="\ud800", stream=False)
async def test_lone_surrogate_escapes_get_a_completion_or_an_openai_error(
    client: Client, where: str, text: str, stream: bool
) -> None:
    """A JSON string holding a lone surrogate escape (``"\\ud800"``) is answered like any other string."""
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "stream": stream}
    if where == "content":
        body["messages"] = [{"role": "user", "content": text}]
    elif where == "part_text":
        body["messages"] = [{"role": "user", "content": [{"type": "text", "text": text}]}]
    elif where == "user":
        body["user"] = text
    elif where == "model":
        body["model"] = text
    elif where == "stop":
        body["stop"] = [text]
    elif where == "tool_name":
        body["tools"] = [{"type": "function", "function": {"name": text}}]
    else:
        body["tools"] = [{"type": "function", "function": {"name": "f"}}]
        body["tool_choice"] = {"type": text}
    # ensure_ascii (the default) writes the surrogate as a \\udXXX escape: valid JSON syntax.
    check_answer(*await post(client, encode(body)), body)


@BUDGET
@given(
    field=st.sampled_from(["temperature", "top_p", "frequency_penalty", "presence_penalty", "seed", "n",
                           "max_tokens", "max_completion_tokens"]),
    value=st.integers(min_value=2**1024, max_value=10**400) | st.integers(min_value=-(10**400), max_value=-(2**1024)),
)
@example(field="temperature", value=2**1024)
@example(field="seed", value=10**309)
async def test_integers_beyond_float_range_get_an_openai_error(client: Client, field: str, value: int) -> None:
    """An integer too large for a float (``1e400`` written out) in a numeric field is a 4xx, not a 500."""
    body = {**VALID_BODY, field: value}
    check_answer(*await post(client, encode(body)), body)


@SMALL_BUDGET
@given(
    # Python's JSON reader gives up past ~1,000 levels; bodies stay under aiohttp's 1 MiB
    # "large raw body" warning.
    depth=st.integers(min_value=1_000, max_value=50_000),
    opener=st.sampled_from([b"[", b'{"a":', b'{"messages":[']),
    closed=st.booleans(),
)
@example(depth=50_000, opener=b"[", closed=False)
async def test_deeply_nested_json_gets_an_openai_error(client: Client, depth: int, opener: bytes, closed: bool) -> None:
    """JSON nested deeper than the parser's recursion limit is a 4xx OpenAI error, not a 500."""
    closer = {b"[": b"]", b'{"a":': b"}", b'{"messages":[': b"]}"}[opener]
    data = opener * depth + (b"1" + closer * depth if closed else b"")
    status, content_type, payload = await post(client, data)
    check_answer(status, content_type, payload, None)


async def raw_exchange(client: Client, request: bytes) -> tuple[int, str, bytes]:
    """Send one raw HTTP/1.1 request (``Connection: close``) and parse the answer."""
    server = client.server
    async with asyncio.timeout(REQUEST_TIMEOUT_S):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(request)
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    if headers.get("transfer-encoding") == "chunked":
        decoded, rest = b"", payload
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            decoded, rest = decoded + rest[:size], rest[size + 2 :]
        payload = decoded
    return status, headers.get("content-type", "").partition(";")[0], payload


@SMALL_BUDGET
@given(
    name=header_names.filter(lambda n: n != "Authorization"),
    value=st.binary(min_size=1, max_size=20).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F) or b"\xff"),
)
@example(name="x-openclaw-agent-id", value=b"\xff")
async def test_obs_text_header_bytes_get_a_completion_or_an_openai_error(client: Client, name: str, value: bytes) -> None:
    """Header values with obs-text bytes (0x80-0xFF, legal in HTTP/1.1) get a completion or a 4xx OpenAI error."""
    data = encode(VALID_BODY)
    request = (
        f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    ).encode() + name.encode() + b": " + value + b"\r\n\r\n" + data
    check_answer(*await raw_exchange(client, request), VALID_BODY)

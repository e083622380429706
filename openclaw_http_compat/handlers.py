"""The HTTP handlers: parse, route, flatten, run, answer."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import suppress
from typing import Final

from aiohttp import web

from .config import AgentsConfig, ChatCompletionsConfig, HttpCompatConfig, ModelRef
from .errors import INTERNAL_ERROR, ApiError, InvalidRequestError, UpstreamError
from .host import (
    AgentEvent,
    AgentRunRequest,
    ClientTool,
    Host,
    RunEnd,
    RunError,
    RunUsage,
    StopReason,
    TextDelta,
    ToolCall,
)
from .keys import CONFIG_KEY, HOST_KEY, IMAGES_KEY, PRINCIPAL_KEY, RUNS_KEY
from .images import collect_images
from .log import log
from .prompt import active_turn, flatten_messages
from .registry import Outcome
from .request import ChatRequest, parse_chat_request
from .routing import random_uuid, resolve_agent_id, resolve_session_key
from .stream import ChatEventStream, prepare_stream
from .wire import ChunkEncoder, completion_body, json_response

__all__ = ("chat_completions", "get_model", "list_models")

NO_RESPONSE: Final = "No response from OpenClaw."
MISSING_USER_MESSAGE: Final = "Missing user message in `messages`."
SHUTTING_DOWN: Final = "The gateway is shutting down."
_TOOL_ARGS_CHUNK: Final = 256
REQUEST_ID: Final = "x-request-id"

# OpenClaw's provider failure reasons -> (OpenAI error type, default status).
_REASONS: Final[dict[str, tuple[str, int]]] = {
    "auth": ("authentication_error", 401),
    "auth_permanent": ("permission_error", 403),
    "billing": ("insufficient_quota", 402),
    "format": ("invalid_request_error", 400),
    "model_not_found": ("invalid_request_error", 404),
    "session_expired": ("invalid_request_error", 410),
    "overloaded": ("api_error", 503),
    "server_error": ("api_error", 502),
    "timeout": ("api_error", 504),
    "rate_limit": ("rate_limit_error", 429),
}
_FIXED_MESSAGES: Final = {
    "server_error": "upstream provider error",
    "timeout": "upstream provider timeout",
    "overloaded": "upstream provider overloaded",
}


def map_run_error(error: RunError) -> ApiError:
    """The client-facing error for a failed run (OpenClaw's ``openai-compat-errors``)."""
    mapped = _REASONS.get(error.reason or "")
    if mapped is None:
        return UpstreamError(INTERNAL_ERROR)
    error_type, default_status = mapped
    status = default_status
    if error.status is not None and 400 <= error.status <= 599:
        if error.reason in ("server_error", "timeout"):
            status = error.status if error.status < 500 else default_status
        else:
            status = error.status
    message = _FIXED_MESSAGES.get(error.reason or "") or error.message or "request failed"
    return UpstreamError(message, status=status, type=error_type, code=error.code)


def _shutting_down() -> UpstreamError:
    return UpstreamError(SHUTTING_DOWN, status=503, code="shutting_down")


def client_closed() -> web.Response:
    """The answer to a client that left: nobody reads it, its status only tells access logs."""
    return web.Response(status=499, reason="Client Closed Request")


class ShuttingDown(Exception):
    """Set on a request body still arriving when the gateway shuts down."""


async def _read_body(request: web.Request, *, max_bytes: int, timeout_s: float) -> bytes:
    length = request.content_length
    if length is not None and length > max_bytes:
        raise InvalidRequestError("Payload too large", status=413)
    content = request.content
    if content.is_eof():
        # The whole body came with the headers (the usual small request): no waiting.
        body = content.read_nowait()
        if len(body) > max_bytes:
            raise InvalidRequestError("Payload too large", status=413)
        return body
    readers = request.app[RUNS_KEY].readers
    readers.add(request.content)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > max_bytes:
                    raise InvalidRequestError("Payload too large", status=413)
                chunks.append(chunk)
    except TimeoutError:
        raise InvalidRequestError("Request body timeout", status=408) from None
    except ShuttingDown:
        raise _shutting_down() from None
    finally:
        readers.discard(request.content)
    return b"".join(chunks)


async def _read_json(request: web.Request, *, max_bytes: int, timeout_s: float) -> object:
    body = await _read_body(request, max_bytes=max_bytes, timeout_s=timeout_s)
    try:
        text = body.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidRequestError("Request body is not valid UTF-8.") from None
    if not text:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        # The parser's own message (line and column), as OpenClaw answers it.
        raise InvalidRequestError(str(exc)) from None
    except ValueError:
        # Python's limit on integer digits: its message names sys internals, so not echoed.
        raise InvalidRequestError("Request body has a number too long to parse.") from None
    except RecursionError:
        raise InvalidRequestError("Request body is nested too deeply.") from None


def _header(request: web.Request, *names: str) -> str | None:
    for name in names:
        value = request.headers.get(name)
        if value is not None and value.strip():
            return value.strip()
    return None


def _message_channel(request: web.Request) -> str:
    value = _header(request, "x-openclaw-message-channel")
    return value.lower() if value else "webchat"


def _tools_for_run(chat: ChatRequest) -> tuple[tuple[ClientTool, ...], str | None]:
    choice = chat.tool_choice
    if choice.mode == "none":
        return (), None
    if choice.mode == "required":
        return chat.tools, "You must call one of the available tools before responding."
    if choice.mode == "function":
        return tuple(t for t in chat.tools if t.name == choice.name), (
            f"You must call the {choice.name} tool before responding."
        )
    return chat.tools, None


def _model_override(request: web.Request, agents: AgentsConfig, agent_id: str) -> str | None:
    """The ``x-openclaw-model`` header, checked against the agents' model allow-list.

    ``provider/model`` or a bare model id (the agent's provider). The agent's own model is
    always allowed; others must be in ``agents.defaults.models`` when that is set.
    """
    raw = _header(request, "x-openclaw-model")
    if raw is None:
        return None
    agent_model = agents.get(agent_id).model or agents.default_model
    if "/" in raw:
        ref = ModelRef.parse(raw)
        if ref is None:
            raise InvalidRequestError("Invalid `x-openclaw-model`.", param="x-openclaw-model")
        allowed = ref == agent_model or ref in agents.allowed_models
        shown = str(ref)
    else:
        # A bare id: the gateway's runner picks the provider; match the allow-list by id.
        allowed = (agent_model is not None and agent_model.model == raw) or any(
            m.model == raw for m in agents.allowed_models
        )
        shown = f"{agent_model.provider}/{raw}" if agent_model else raw
    if agents.allowed_models and not allowed:
        raise InvalidRequestError(f"Model '{shown}' is not allowed for agent '{agent_id}'.", param="x-openclaw-model")
    # The raw header goes to the run, as OpenClaw does; the runner resolves bare ids.
    return raw


async def _build_run(
    request: web.Request, chat: ChatRequest, host: Host, config: HttpCompatConfig, run_id: str
) -> AgentRunRequest:
    agents = config.agents
    agent_id = resolve_agent_id(
        chat.model, _header(request, "x-openclaw-agent-id", "x-openclaw-agent"), host.roster
    )
    session_header = _header(request, "x-openclaw-session-key")
    session_key = resolve_session_key(agent_id, session_header, chat.user)
    # Cheap refusals first: an image fetch may take seconds.
    model_override = _model_override(request, agents, agent_id)
    images = await collect_images(active_turn(chat.messages), config.chat_completions, request.app[IMAGES_KEY])
    prompt = flatten_messages(chat.messages, active_has_images=bool(images))
    if not prompt.message:
        raise InvalidRequestError(MISSING_USER_MESSAGE, param="messages")
    tools, tool_line = _tools_for_run(chat)
    extra = prompt.extra_system_prompt
    if tool_line is not None:
        extra = f"{extra}\n\n{tool_line}" if extra else tool_line
    principal = request.get(PRINCIPAL_KEY)
    return AgentRunRequest(
        run_id=run_id,
        agent_id=agent_id,
        session_key=session_key,
        message=prompt.message,
        new_session=session_header is None and not (chat.user or "").strip(),
        extra_system_prompt=extra,
        images=images,
        client_tools=tools,
        model_override=model_override,
        message_channel=_message_channel(request),
        sender_is_owner=principal.sender_is_owner if principal is not None else True,
        options=chat.options,
        stream=chat.stream,
    )


def _unsatisfied_tool_choice(chat: ChatRequest, calls: list[ToolCall]) -> ApiError | None:
    choice = chat.tool_choice
    if choice.mode == "required" and not calls:
        return UpstreamError("tool_choice=required was not satisfied by the agent response", status=502)
    if choice.mode == "function" and not any(c.name == choice.name for c in calls):
        return UpstreamError(
            f"tool_choice required a {choice.name} tool call, but the agent did not produce one", status=502
        )
    return None


class _Run:
    """One agent run feeding one response.

    ``async with run.events() as events`` reads the runner's events; leaving the block, for
    any reason, closes the iterator, which is how the runner learns a run is aborted.
    """

    def __init__(self, host: Host, run: AgentRunRequest) -> None:
        self.host = host
        self.run = run
        self.text: list[str] = []
        self.calls: list[ToolCall] = []
        self.usage: RunUsage | None = None
        self.stop_reason: StopReason = "stop"

    def events(self) -> _Events:
        return _Events(self.host.runner.run(self.run))


class _Events:
    # A plain context manager rather than a wrapping generator: no extra frame per event.
    __slots__ = ("_first", "_iterator")

    def __init__(self, iterator: AsyncIterator[AgentEvent]) -> None:
        self._iterator = iterator
        self._first: asyncio.Task[AgentEvent] | None = None

    def start(self) -> None:
        """Run the run's first step in a task of its own, from the next loop iteration.

        For a model call the first step sends the model its request and then waits; what
        the handler does meanwhile (opening the stream) no longer delays the model.
        """
        self._first = asyncio.ensure_future(_first_event(self._iterator))

    def __aiter__(self) -> AsyncIterator[AgentEvent]:
        # Not started: the runner's own iterator, with nothing of ours per event.
        return self if self._first is not None else self._iterator

    def __anext__(self) -> Awaitable[AgentEvent]:
        first = self._first
        if first is not None:
            self._first = None
            return first
        return self._iterator.__anext__()

    async def __aenter__(self) -> _Events:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        first, self._first = self._first, None
        if first is not None:
            if not first.done():
                # The iterator cannot be closed while the first step still runs it. wait()
                # rather than await: the step's own end (cancelled) is not ours to raise.
                first.cancel()
                await asyncio.wait((first,))
            if not first.cancelled():
                first.exception()  # nobody reads it now: mark it read, not "never retrieved"
        aclose = getattr(self._iterator, "aclose", None)
        if aclose is not None:
            await aclose()


async def _first_event(iterator: AsyncIterator[AgentEvent]) -> AgentEvent:
    return await iterator.__anext__()


async def _collect(run: _Run, chat: ChatRequest) -> ApiError | None:
    # Leaving the block closes the runner's iterator: an exception or cancellation here
    # aborts the run now, not at garbage collection.
    async with run.events() as events:
        async for event in events:
            if isinstance(event, TextDelta):
                run.text.append(event.text)
            elif isinstance(event, ToolCall):
                run.calls.append(event)
            elif isinstance(event, RunUsage):
                run.usage = event
            elif isinstance(event, RunEnd):
                run.stop_reason = event.stop_reason
                break
            else:
                return map_run_error(event)
    return _unsatisfied_tool_choice(chat, run.calls)


def _split_arguments(arguments: str) -> list[str]:
    # Fragments of at most 256 UTF-16 code units, never splitting a surrogate pair.
    if not arguments:
        return [""]
    pieces: list[str] = []
    current: list[str] = []
    units = 0
    for char in arguments:
        width = 2 if ord(char) > 0xFFFF else 1
        if units + width > _TOOL_ARGS_CHUNK:
            pieces.append("".join(current))
            current, units = [], 0
        current.append(char)
        units += width
    pieces.append("".join(current))
    return pieces


async def _stream(
    run: _Run, chat: ChatRequest, stream: ChatEventStream, encoder: ChunkEncoder, events: _Events
) -> None:
    # Forced tool choice: everything is held back until the required call shows up, so
    # prose (or a wrong tool call) is never sent when the choice ends up unsatisfied.
    hold = chat.tool_choice.mode in ("required", "function")
    held: list[bytes] = []
    sent_any = False
    async for event in events:
        frame: bytes | None = None
        if isinstance(event, TextDelta):
            if event.text:
                run.text.append(event.text)
                frame = encoder.content(event.text)
        elif isinstance(event, ToolCall):
            index = len(run.calls)
            run.calls.append(event)
            frame = encoder.tool_call_start(index, event) + b"".join(
                encoder.tool_call_arguments(index, f) for f in _split_arguments(event.arguments)
            )
            if hold and _unsatisfied_tool_choice(chat, run.calls) is None:
                hold = False
                held.append(frame)
                frame = b"".join(held)
                held.clear()
        elif isinstance(event, RunUsage):
            run.usage = event
        elif isinstance(event, RunEnd):
            run.stop_reason = event.stop_reason
            break
        else:
            await stream.write_frame(encoder.error(map_run_error(event)))
            return
        if frame is None:
            continue
        if hold:
            held.append(frame)
        else:
            sent_any = True
            await stream.write_frame(frame)
    unsatisfied = _unsatisfied_tool_choice(chat, run.calls)
    if unsatisfied is not None:
        await stream.write_frame(encoder.error(unsatisfied))
        return
    tail = []
    if not sent_any:
        tail.append(encoder.content(NO_RESPONSE))
    tail.append(encoder.finish("tool_calls" if run.calls else run.stop_reason))
    if chat.include_usage:
        tail.append(encoder.usage(run.usage))
    await stream.write_frame(b"".join(tail))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``."""
    gateway_config = request.app[CONFIG_KEY]
    config = gateway_config.chat_completions
    host = request.app[HOST_KEY]
    body = await _read_json(request, max_bytes=config.max_body_bytes, timeout_s=config.body_timeout_ms / 1000)
    chat = parse_chat_request(body)
    run_id = f"chatcmpl_{random_uuid()}"
    agent_run = await _build_run(request, chat, host, gateway_config, run_id)
    created = int(time.time())
    registry = request.app[RUNS_KEY]
    if not registry.try_acquire():
        raise ApiError(
            "Too many agent runs in flight. Please retry shortly.",
            status=429,
            type="rate_limit_error",
            code="concurrency_limit",
            headers={"Retry-After": "1"},
        )
    run = _Run(host, agent_run)
    try:
        if chat.stream:
            return await _answer_stream(request, chat, run, config, created)
        return await _answer_json(request, chat, run, created)
    finally:
        registry.release()


async def _answer_json(request: web.Request, chat: ChatRequest, run: _Run, created: int) -> web.StreamResponse:
    run_id = run.run.run_id
    outcome: list[ApiError | None] = []

    async def collect() -> None:
        outcome.append(await _collect(run, chat))

    ended = await request.app[RUNS_KEY].watch(request, collect())
    if ended is Outcome.CLIENT_GONE:
        log.debug("client went away during run %s", run_id)
        return client_closed()
    if ended is Outcome.SHUTDOWN:
        raise _shutting_down()
    if outcome[0] is not None:
        raise outcome[0]
    content = "".join(run.text)
    if not content and not run.calls:
        content = NO_RESPONSE
    body = completion_body(
        completion_id=run_id,
        created=created,
        model=chat.model,
        content=content,
        finish_reason="tool_calls" if run.calls else run.stop_reason,
        tool_calls=run.calls,
        usage=run.usage,
    )
    return json_response(body, headers={REQUEST_ID: run_id})


async def _answer_stream(
    request: web.Request, chat: ChatRequest, run: _Run, config: ChatCompletionsConfig, created: int
) -> web.StreamResponse:
    run_id = run.run.run_id
    encoder = ChunkEncoder(completion_id=run_id, created=created, model=chat.model)
    async with run.events() as events:
        # The run starts first and the stream opens while it waits on its model: time to
        # first content is the model's plus ours, not plus the stream's set-up as well.
        events.start()
        await asyncio.sleep(0)
        stream = await prepare_stream(request, keepalive_s=config.keepalive_ms / 1000, headers={REQUEST_ID: run_id})
        async with stream:
            try:
                await stream.write_frame(encoder.role())
                ended = await request.app[RUNS_KEY].watch(request, _stream(run, chat, stream, encoder, events))
                if ended is Outcome.CLIENT_GONE:
                    log.debug("client went away during run %s", run_id)
                    return stream
                if ended is Outcome.SHUTDOWN:
                    await stream.write_frame(encoder.error(_shutting_down()))
                await stream.write_done()
            except ConnectionResetError:
                log.debug("client went away during run %s", run_id)
            except Exception:
                log.exception("agent run %s failed", run_id)
                with suppress(ConnectionResetError):
                    await stream.write_frame(ChunkEncoder.error(UpstreamError(INTERNAL_ERROR)))
                    await stream.write_done()
    return stream


def _model_ids(host: Host) -> list[str]:
    return ["openclaw", "openclaw/default", *(f"openclaw/{a}" for a in host.roster.agent_ids)]


def _model_object(model_id: str) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "openclaw", "permission": []}


async def list_models(request: web.Request) -> web.StreamResponse:
    """``GET /v1/models``: the agent targets a client may put in ``model``."""
    host = request.app[HOST_KEY]
    return json_response({"object": "list", "data": [_model_object(m) for m in _model_ids(host)]})


async def get_model(request: web.Request) -> web.StreamResponse:
    """``GET /v1/models/{id}``."""
    host = request.app[HOST_KEY]
    model_id = request.match_info.get("model_id", "").strip()
    if not model_id:
        raise InvalidRequestError("Missing model id.")
    if model_id not in _model_ids(host):
        raise InvalidRequestError(f"Model '{model_id}' not found.", status=404, code="model_not_found")
    return json_response(_model_object(model_id))

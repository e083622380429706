"""The contract between this plugin and the gateway that hosts it.

A gateway provides these, bundled in :class:`Host`:

* an :class:`AgentRunner`, which performs one agent run and streams its events;
* an :class:`Authenticator`, the same object its own auth middleware uses, so HTTP,
  WebSocket and our routes share one auth and one source of truth;
* an :class:`AgentRoster`, which names the configured agents and the default;
* optionally, a :class:`~openclaw_http_compat.stored.CompletionStore` for completions created
  with ``store: true`` (without one they are kept in the process's memory);
* optionally, a :class:`~openclaw_http_compat.metrics.Metrics` that counts what the plugin
  sees (by default nothing is counted).

Everything that crosses the boundary is a frozen attrs value. The gateway never subclasses
anything of ours; structural typing is enough.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

import attrs

from .idempotency import IdempotencyStore
from .metrics import NO_METRICS, Metrics

if TYPE_CHECKING:
    # Only a type here: stored.py imports errors.py, which imports this module.
    from .stored import CompletionStore

__all__ = (
    "AgentEvent",
    "AgentRoster",
    "AgentRunRequest",
    "AgentRunner",
    "Authenticator",
    "ChatMessage",
    "ClientTool",
    "ContentPart",
    "GenerationOptions",
    "Host",
    "ImageInput",
    "ImagePart",
    "MessageRole",
    "Principal",
    "RunEnd",
    "RunError",
    "RunUsage",
    "StopReason",
    "TextDelta",
    "TextPart",
    "ToolCall",
    "ToolChoice",
)

StopReason = Literal["stop", "length", "tool_calls"]


@attrs.frozen
class ImageInput:
    """An image on the active turn, as base64 text with its checked MIME type."""

    mime_type: str
    data: str = attrs.field(repr=lambda d: f"<{len(d)} base64 chars>")


@attrs.frozen(kw_only=True)
class ClientTool:
    """A function tool the client offers; the agent may end its run by calling it."""

    name: str
    description: str | None = None
    parameters: Mapping[str, Any] | None = attrs.field(default=None, hash=False)
    strict: bool | None = None


@attrs.frozen(kw_only=True)
class GenerationOptions:
    """Sampling and output options the client asked for; ``None`` means not given."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] | None = None
    response_format: Mapping[str, Any] | None = attrs.field(default=None, hash=False)


MessageRole = Literal["system", "developer", "user", "assistant", "tool"]


@attrs.frozen(kw_only=True)
class ToolCall:
    """The agent calls a client tool; ``arguments`` is JSON text.

    Also an assistant turn's call in :attr:`ChatMessage.tool_calls`.
    """

    id: str
    name: str
    arguments: str = ""


@attrs.frozen(kw_only=True)
class ToolChoice:
    """How the client wants its tools used, as it sent ``tool_choice``.

    ``mode`` is ``auto`` (also when the client sent none), ``none``, ``required``, or
    ``function`` with the tool's ``name``.
    """

    mode: Literal["auto", "none", "required", "function"] = "auto"
    name: str | None = None


@attrs.frozen
class TextPart:
    """A text part of a message's content."""

    text: str


@attrs.frozen
class ImagePart:
    """An image part of the active turn, checked like :attr:`AgentRunRequest.images`."""

    image: ImageInput


ContentPart: TypeAlias = TextPart | ImagePart


@attrs.frozen(kw_only=True)
class ChatMessage:
    """One entry of the client's conversation, in OpenAI's own structure.

    Attributes:
        role: ``system``, ``developer``, ``user``, ``assistant`` or ``tool``.
        content: the text when the client sent a string; the parts when it sent an array
            (text parts, and the active turn's checked images; images of earlier turns are
            not carried, they were never checked); ``None`` when there is none (an assistant
            turn that only called tools).
        tool_calls: the tools an assistant turn called.
        tool_call_id: the call a ``tool`` turn answers.
        name: the participant or tool name the client gave, if any.
    """

    role: MessageRole
    content: str | tuple[ContentPart, ...] | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@attrs.frozen(kw_only=True)
class AgentRunRequest:
    """One agent run, as the gateway's ``agent`` command would perform it.

    Attributes:
        run_id: unique id of the run; also the response id (``chatcmpl_<uuid>``).
        agent_id: the normalised agent id.
        session_key: the session whose transcript the run continues.
        new_session: the key was minted for this request (no ``user``, no session header), so
            the session has no history: a runner may skip looking for one.
        message: the flattened user message to respond to (OpenClaw's one-message form).
        messages: the same conversation in OpenAI's structure, as the client sent it (its
            system and developer entries included), for a runner that sends a model native
            messages; empty when the gateway built the run from one message (its CLI, its
            WebSocket).
        extra_system_prompt: system and developer text from the request, appended to the
            agent's own system prompt; ``None`` when there is none.
        images: images of the active turn.
        client_tools: the tools the client offers, as it sent them.
        tool_choice: how the client wants them used. A runner should forward it to its model
            (``none`` keeps the tools but forbids calling them); the plugin answers 502 when a
            ``required`` or named choice was not met.
        model_override: a ``provider/model`` (or bare model) the run should use instead of
            the agent's configured model.
        message_channel: the ingress channel (``webchat`` by default).
        sender_is_owner: whether the caller holds owner rights.
        options: sampling and output options; ``None`` when the client sent none.
        stream: the caller takes the reply as it is generated. When false only the finished
            reply is used, so a runner may fetch it in one piece (a non-streaming model call
            costs the gateway and the provider less); it must still yield the same events.
    """

    run_id: str
    agent_id: str
    session_key: str
    message: str
    messages: tuple[ChatMessage, ...] = ()
    new_session: bool = False
    extra_system_prompt: str | None = None
    images: tuple[ImageInput, ...] = ()
    client_tools: tuple[ClientTool, ...] = ()
    tool_choice: ToolChoice = ToolChoice()
    model_override: str | None = None
    message_channel: str = "webchat"
    sender_is_owner: bool = True
    options: GenerationOptions | None = None
    stream: bool = True


@attrs.frozen
class TextDelta:
    """A piece of assistant text, appended to what came before."""

    text: str


@attrs.frozen(kw_only=True)
class RunUsage:
    """Token usage of the run so far (each event replaces the previous one)."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    total: int | None = None
    reasoning: int | None = None


@attrs.frozen
class RunEnd:
    """The run finished; ``stop_reason`` says why."""

    stop_reason: StopReason = "stop"


@attrs.frozen(kw_only=True)
class RunError:
    """The run failed.

    ``reason`` classifies provider failures the way OpenClaw does (``auth``, ``billing``,
    ``rate_limit``, ``overloaded``, ``server_error``, ``timeout``, ``format``,
    ``model_not_found``, ``unreachable``, …; ``unavailable`` when a dependency of the gateway
    itself, such as its session store, is down for now: a 503 with ``Retry-After``);
    ``status`` and ``code`` are the provider's, when
    known, and ``retry_after`` the seconds its ``Retry-After`` asked for. Unclassified failures
    leave ``reason`` as ``None`` and are answered as a 500.
    """

    message: str
    reason: str | None = None
    status: int | None = None
    code: str | None = None
    retry_after: float | None = None


AgentEvent: TypeAlias = TextDelta | ToolCall | RunUsage | RunEnd | RunError


class AgentRunner(Protocol):
    """Performs agent runs.

    Where the events are read: the plugin reads a run's events with a plain ``async for``
    in one task, from the first event to the last, streamed or not: the task that serves the
    HTTP request, or, for a run that may outlive its client (an ``Idempotency-Key``, an SDK
    retry, ``onDisconnect: finish``), a task of its own started from that request's task with
    a copy of its context. So a runner may set a ``contextvars.ContextVar`` (as logging and OpenTelemetry
    carry their context) or enter ``asyncio.timeout()`` before its first ``yield`` and rely
    on both after it. One limit, shared by every async generator whose consumer awaits
    between items (PEP 789): a deadline that spans a ``yield`` also runs while the plugin
    writes a frame to the client. If it expires there (a client slow to read), the
    cancellation lands in the plugin's write, the runner gets ``GeneratorExit`` at its
    ``yield`` instead of ``TimeoutError``, and the stream ends cut short.

    How a run ends: after ``RunEnd`` or ``RunError`` the iterator should end; the plugin
    stops reading at either, closes the iterator with ``aclose()`` when it has one (so
    ``GeneratorExit`` arrives at the ``yield`` of that last event), and treats an iterator
    that ends without one as ``RunEnd("stop")``. A runner should report failures, its own
    timeouts among them, as ``RunError``; an exception escaping the iterator is logged and
    answered as ``internal error`` (a 500, also on a stream while its head is still held for
    the first event; an error frame once the head went out). A failure before the first
    event keeps its real status on a stream too (``chatCompletions.streamHoldMs``), so report
    provider errors with their ``status``, ``code`` and ``retry_after``.

    How a run is aborted (the client went away, the gateway shuts down): the request's task
    is cancelled, by the plugin's run registry (which polls the client's connection every
    0.25 s and cancels on shutdown) or by aiohttp itself when the gateway enabled
    ``handler_cancellation``. If the runner is awaiting something at that moment it gets
    the ``CancelledError`` there; if it is suspended at a ``yield`` (the plugin was busy
    writing) it is not touched by the cancellation. Either way the plugin then closes the
    iterator with ``aclose()``, which throws ``GeneratorExit`` in at that ``yield`` and
    does nothing to an iterator that already ended. So an abort is a ``CancelledError`` at
    an ``await`` and/or ``GeneratorExit`` at a ``yield``: stop the work, release what the
    run holds (upstream requests, session locks) in ``finally``, and re-raise; never
    swallow ``CancelledError``. Both arrive in the task that reads the events, so a
    ``ContextVar`` set by the run is still visible in its ``finally``.
    """

    def run(self, request: AgentRunRequest) -> AsyncIterator[AgentEvent]:
        """Start the run and return its events."""
        ...


@attrs.frozen(kw_only=True)
class Principal:
    """Who a request authenticated as."""

    subject: str
    sender_is_owner: bool = True


class Authenticator(Protocol):
    """Decides whether a credential may use the gateway.

    The gateway's own auth middleware and this plugin call the same object.
    """

    async def authenticate(self, credential: str | None, *, client_ip: str | None) -> Principal:
        """Check a bearer credential (``None`` when the caller sent none).

        Raises:
            AuthenticationError: missing or wrong credential.
            RateLimitedError: the client is locked out after repeated failures.
        """
        ...


class AgentRoster(Protocol):
    """The configured agents."""

    @property
    def agent_ids(self) -> Sequence[str]:
        """Every configured agent id (normalised)."""
        ...

    @property
    def default_agent_id(self) -> str:
        """The agent that runs when a request names none."""
        ...


@attrs.frozen(kw_only=True)
class Host:
    """What the gateway hands to :func:`~openclaw_http_compat.setup`.

    ``completions`` keeps completions created with ``store: true`` (see
    :class:`~openclaw_http_compat.stored.CompletionStore`); ``None``: in this process's memory.
    ``idempotency`` keeps the records of ``Idempotency-Key`` runs; a fleet of processes must
    share one (the reference gateway's is its session store). ``None``: in this process only.
    """

    runner: AgentRunner
    authenticator: Authenticator
    roster: AgentRoster
    completions: CompletionStore | None = None
    #: Where the plugin counts what it sees (see :mod:`openclaw_http_compat.metrics`);
    #: by default nothing is counted.
    metrics: Metrics = NO_METRICS
    #: Records of ``Idempotency-Key`` runs (see :mod:`openclaw_http_compat.idempotency`).
    idempotency: IdempotencyStore | None = None

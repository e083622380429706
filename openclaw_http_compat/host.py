"""The contract between this plugin and the gateway that hosts it.

A gateway provides three things, bundled in :class:`Host`:

* an :class:`AgentRunner`, which performs one agent run and streams its events;
* an :class:`Authenticator`, the same object its own auth middleware uses, so HTTP,
  WebSocket and our routes share one auth and one source of truth;
* an :class:`AgentRoster`, which names the configured agents and the default.

Everything that crosses the boundary is a frozen attrs value. The gateway never subclasses
anything of ours; structural typing is enough.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal, Protocol, TypeAlias

import attrs

__all__ = (
    "AgentEvent",
    "AgentRoster",
    "AgentRunRequest",
    "AgentRunner",
    "Authenticator",
    "ClientTool",
    "GenerationOptions",
    "Host",
    "ImageInput",
    "Principal",
    "RunEnd",
    "RunError",
    "RunUsage",
    "StopReason",
    "TextDelta",
    "ToolCall",
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


@attrs.frozen(kw_only=True)
class AgentRunRequest:
    """One agent run, as the gateway's ``agent`` command would perform it.

    Attributes:
        run_id: unique id of the run; also the response id (``chatcmpl_<uuid>``).
        agent_id: the normalised agent id.
        session_key: the session whose transcript the run continues.
        new_session: the key was minted for this request (no ``user``, no session header), so
            the session has no history: a runner may skip looking for one.
        message: the flattened user message to respond to.
        extra_system_prompt: system and developer text from the request, appended to the
            agent's own system prompt; ``None`` when there is none.
        images: images of the active turn.
        client_tools: tools the client offers for this run.
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
    new_session: bool = False
    extra_system_prompt: str | None = None
    images: tuple[ImageInput, ...] = ()
    client_tools: tuple[ClientTool, ...] = ()
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
class ToolCall:
    """The agent calls a client tool; ``arguments`` is JSON text."""

    id: str
    name: str
    arguments: str = ""


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
    ``model_not_found``, …); ``status`` and ``code`` are the provider's, when known.
    Unclassified failures leave ``reason`` as ``None`` and are answered as a 500.
    """

    message: str
    reason: str | None = None
    status: int | None = None
    code: str | None = None


AgentEvent: TypeAlias = TextDelta | ToolCall | RunUsage | RunEnd | RunError


class AgentRunner(Protocol):
    """Performs agent runs.

    Cancellation: the plugin iterates the events in the request's task, except for a
    streamed run's first event, which is awaited in a task of its own so that the run can
    start while the stream opens (so don't carry an ``asyncio.timeout()`` or context
    variables across the first ``yield``). To abort a run (the client went away, the gateway
    shuts down) it cancels the task waiting for the next event and then closes the iterator
    with ``aclose()``. A runner must treat either as an
    abort: stop its work and release what it holds (upstream requests, session locks) in
    ``finally``. After ``RunEnd`` or ``RunError`` the iterator should end; the plugin stops
    reading at either, and treats an iterator that ends without one as ``RunEnd("stop")``.
    A runner should report failures as ``RunError``; an exception escaping the iterator is
    answered as a 500 ``internal error`` and logged.
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
    """What the gateway hands to :func:`~openclaw_http_compat.setup`."""

    runner: AgentRunner
    authenticator: Authenticator
    roster: AgentRoster

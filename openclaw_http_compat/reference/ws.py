"""The gateway's WebSocket protocol at ``GET /``: JSON text frames, one connection per client.

Frames (every frame is one JSON object in one text message)::

    client -> {"type": "req", "id": "1", "method": "connect", "params": {"auth": {"token": "..."}}}
    server <- {"type": "res", "id": "1", "ok": true, "payload": {"protocol": 1}}
    server <- {"type": "res", "id": "1", "ok": false, "error": {"code": "...", "message": "..."}}
    server <- {"type": "event", "event": "agent", "payload": {"runId": "...", "stream": "assistant",
                                                               "data": {"delta": "..."}}}

The first request must be ``connect``, with ``auth.token`` or ``auth.password``; the secret is
checked by the same authenticator as HTTP bearer credentials. A refused ``connect``, or any
other request before a successful one, is answered ``unauthorized`` and the socket is closed.
After ``connect``:

* ``health``: ``{"ok": true, "agents": [...], "defaultAgentId": "..."}``;
* ``agent`` (params ``message``, optional ``agentId``, ``sessionKey``, ``extraSystemPrompt``):
  one agent run through the gateway's runner, the same one ``/v1/chat/completions`` uses.
  Text arrives as ``agent`` events, then the response carries ``runId``, ``text`` and
  ``usage``. Runs proceed concurrently; closing the socket aborts the runs it started.

While the gateway drains (SIGTERM), runs already going finish within its grace period and a new
``agent`` request is answered ``shutting_down`` with ``retryAfterMs``; shutdown then closes
every socket with ``1001 going away``.

A frame that is not JSON, or not a request, is answered with an error response (``id`` null
when it cannot be read) and the socket stays open.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from typing import Any, Final

from aiohttp import WSCloseCode, WSMsgType, web

from openclaw_http_compat import (
    AgentRunner,
    AgentRunRequest,
    Authenticator,
    HttpCompatConfig,
    Principal,
    RateLimitedError,
    RunEnd,
    RunError,
    RunUsage,
    StopReason,
    TextDelta,
)
from openclaw_http_compat.auth import client_ip
from openclaw_http_compat.config import normalize_agent_id
from openclaw_http_compat.errors import ApiError, shutting_down_error

__all__ = ("HANDSHAKE_TIMEOUT_S", "PROTOCOL_VERSION", "SOCKETS_KEY", "WebSockets", "close_sockets", "websocket_handler")

log = logging.getLogger(__name__)

#: The protocol version ``connect`` answers with.
PROTOCOL_VERSION: Final = 1

#: How long a client may take to send a successful ``connect``.
HANDSHAKE_TIMEOUT_S: Final = 10.0


class WebSockets:
    """The gateway's open WebSockets and the agent runs they started (root app, :data:`SOCKETS_KEY`).

    A drain refuses new runs (:meth:`start_draining`) and waits for those going
    (:meth:`wait_runs`); shutdown closes every socket (:func:`close_sockets`), so that none
    holds it up.
    """

    def __init__(self) -> None:
        self.sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
        #: Runs going on any socket (each also belongs to its connection, which aborts it
        #: when the client goes away).
        self.runs: set[asyncio.Task[None]] = set()
        #: True from the start of a drain on: new ``agent`` requests are refused.
        self.draining = False

    def start_draining(self) -> None:
        """Refuse new runs from now on; those going carry on."""
        self.draining = True

    async def wait_runs(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the runs going to end; true when none is left."""
        runs = set(self.runs)
        if not runs:
            return True
        _, pending = await asyncio.wait(runs, timeout=timeout)
        return not pending


#: The gateway's WebSockets and their runs (root app).
SOCKETS_KEY: Final = web.AppKey("openclaw_http_compat.reference.sockets", WebSockets)

_UNAUTHORIZED: Final = {"code": "unauthorized", "message": "Unauthorized"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _FrameError(Exception):
    """A request that cannot be served; answered as ``ok: false`` with ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _encode(frame: Mapping[str, object]) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


def _usage(usage: RunUsage | None) -> dict[str, int]:
    if usage is None:
        usage = RunUsage()
    total = usage.total
    if total is None:
        total = usage.input + usage.output + usage.cache_read + usage.cache_write
    return {
        "input": usage.input,
        "output": usage.output,
        "cacheRead": usage.cache_read,
        "cacheWrite": usage.cache_write,
        "total": total,
    }


def _optional_string(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _FrameError("invalid_params", f"`{name}` must be a string")
    return value.strip() or None


class _Connection:
    """One client's WebSocket: the handshake state, its runs, and serialised sends."""

    def __init__(
        self,
        sock: web.WebSocketResponse,
        *,
        config: HttpCompatConfig,
        authenticator: Authenticator,
        runner: AgentRunner,
        client_ip: str | None,
        gateway: WebSockets,
    ) -> None:
        self.sock = sock
        self.gateway = gateway
        self.config = config
        self.authenticator = authenticator
        self.runner = runner
        self.client_ip = client_ip
        self.principal: Principal | None = None
        self.runs: set[asyncio.Task[None]] = set()
        self._send_lock = asyncio.Lock()

    async def send(self, frame: Mapping[str, object]) -> None:
        # Runs send from their own tasks: one frame at a time on the wire.
        async with self._send_lock:
            await self.sock.send_str(_encode(frame))

    async def respond(self, request_id: object, payload: Mapping[str, object]) -> None:
        await self.send({"type": "res", "id": request_id, "ok": True, "payload": payload})

    async def refuse(self, request_id: object, code: str, message: str) -> None:
        await self.send({"type": "res", "id": request_id, "ok": False, "error": {"code": code, "message": message}})

    async def serve(self) -> None:
        """Read frames until the socket closes; then abort the runs still going."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HANDSHAKE_TIMEOUT_S
        try:
            while not self.sock.closed:
                timeout = None if self.principal is not None else max(0.001, deadline - loop.time())
                try:
                    msg = await self.sock.receive(timeout=timeout)
                except TimeoutError:
                    await self.sock.close(code=WSCloseCode.POLICY_VIOLATION, message=b"handshake timeout")
                    return
                if msg.type is WSMsgType.TEXT:
                    await self.on_text(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    await self.refuse(None, "invalid_request", "Frames must be JSON text messages")
                else:
                    # CLOSE, CLOSING, CLOSED or ERROR: the connection is over.
                    return
        except ConnectionResetError:
            log.debug("WebSocket client went away")
        finally:
            await self.abort_runs()

    async def abort_runs(self) -> None:
        runs = list(self.runs)
        for task in runs:
            task.cancel()
        for task in runs:
            with suppress(asyncio.CancelledError):
                await task

    async def on_text(self, text: str) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            await self.refuse(None, "invalid_json", "Malformed JSON frame")
            return
        request_id = frame.get("id") if isinstance(frame, dict) else None
        if not isinstance(request_id, (str, int)) or isinstance(request_id, bool):
            request_id = None
        method = frame.get("method") if isinstance(frame, dict) else None
        params = frame.get("params") if isinstance(frame, dict) else None
        if params is None:
            params = {}
        if (
            not isinstance(frame, dict)
            or frame.get("type") != "req"
            or request_id is None
            or not isinstance(method, str)
            or not isinstance(params, dict)
        ):
            await self.refuse(
                request_id, "invalid_request", 'Expected {"type": "req", "id", "method", "params"?}'
            )
            return
        if self.principal is None:
            await self.handshake(request_id, method, params)
            return
        try:
            if method == "connect":
                raise _FrameError("already_connected", "This connection is already authenticated")
            if method == "health":
                await self.respond(request_id, self.health())
            elif method == "agent":
                await self.start_run(request_id, self.agent_request(params))
            else:
                raise _FrameError("unknown_method", f"Unknown method '{method}'")
        except _FrameError as exc:
            await self.refuse(request_id, exc.code, exc.message)

    async def handshake(self, request_id: object, method: str, params: Mapping[str, Any]) -> None:
        if method != "connect":
            await self.reject(request_id, _UNAUTHORIZED)
            return
        auth = params.get("auth")
        credential: str | None = None
        if isinstance(auth, dict):
            # HTTP bearer auth does not tell a token from a password either: the one secret
            # given is checked against the configured mode's.
            for name in ("token", "password"):
                value = auth.get(name)
                if isinstance(value, str) and value.strip():
                    credential = value.strip()
                    break
        try:
            self.principal = await self.authenticator.authenticate(credential, client_ip=self.client_ip)
        except RateLimitedError as exc:
            await self.reject(
                request_id, {"code": "rate_limited", "message": exc.message, "retryAfterMs": exc.retry_after_s * 1000}
            )
            return
        except ApiError as exc:
            if exc.status == 503:
                # The limiter's shared state cannot be reached (onStoreError "closed"): the
                # secret was not judged, so the client should come back, not give up.
                retry_s = float(exc.headers.get("Retry-After", "1"))
                error = {"code": "unavailable", "message": exc.message, "retryAfterMs": int(retry_s * 1000)}
                await self.reject(request_id, error, close=WSCloseCode.TRY_AGAIN_LATER)
                return
            await self.reject(request_id, _UNAUTHORIZED)
            return
        await self.respond(request_id, {"protocol": PROTOCOL_VERSION})

    async def reject(
        self, request_id: object, error: Mapping[str, object], *, close: WSCloseCode = WSCloseCode.POLICY_VIOLATION
    ) -> None:
        await self.send({"type": "res", "id": request_id, "ok": False, "error": error})
        await self.sock.close(code=close, message=b"unauthorized" if close is WSCloseCode.POLICY_VIOLATION else b"")

    def health(self) -> dict[str, object]:
        agents = self.config.agents
        return {"ok": True, "agents": list(agents.agent_ids), "defaultAgentId": agents.default_agent_id}

    def agent_request(self, params: Mapping[str, Any]) -> AgentRunRequest:
        message = params.get("message")
        if not isinstance(message, str) or not message.strip():
            raise _FrameError("invalid_params", "`message` must be a non-empty string")
        agents = self.config.agents
        raw_agent = _optional_string(params, "agentId")
        agent_id = normalize_agent_id(raw_agent) if raw_agent else agents.default_agent_id
        if agent_id not in agents.agent_ids:
            raise _FrameError("unknown_agent", f"Unknown agent '{agent_id}'")
        principal = self.principal
        return AgentRunRequest(
            run_id=str(uuid.uuid4()),
            agent_id=agent_id,
            session_key=_optional_string(params, "sessionKey") or f"agent:{agent_id}:main",
            message=message,
            extra_system_prompt=_optional_string(params, "extraSystemPrompt"),
            sender_is_owner=principal.sender_is_owner if principal is not None else True,
        )

    async def start_run(self, request_id: object, run: AgentRunRequest) -> None:
        if self.gateway.draining:
            # As an HTTP request is answered 503 shutting_down: go elsewhere, or come back.
            refusal = shutting_down_error()
            retry_ms = int(float(refusal.headers["Retry-After"]) * 1000)
            error = {"code": refusal.code, "message": refusal.message, "retryAfterMs": retry_ms}
            await self.send({"type": "res", "id": request_id, "ok": False, "error": error})
            return
        task = asyncio.create_task(self.run_agent(request_id, run))
        for runs in (self.runs, self.gateway.runs):
            runs.add(task)
            task.add_done_callback(runs.discard)

    async def run_agent(self, request_id: object, run: AgentRunRequest) -> None:
        """One run: stream its text as events, then answer the request."""
        text: list[str] = []
        usage: RunUsage | None = None
        stop_reason: StopReason = "stop"
        events = None
        try:
            events = self.runner.run(run)
            async for event in events:
                if isinstance(event, TextDelta):
                    if not event.text:
                        continue
                    text.append(event.text)
                    await self.send(
                        {
                            "type": "event",
                            "event": "agent",
                            "payload": {"runId": run.run_id, "stream": "assistant", "data": {"delta": event.text}},
                        }
                    )
                elif isinstance(event, RunUsage):
                    usage = event
                elif isinstance(event, RunEnd):
                    stop_reason = event.stop_reason
                    break
                elif isinstance(event, RunError):
                    await self.refuse(request_id, event.reason or "agent_error", event.message)
                    return
                # ToolCall: a WebSocket run offers no client tools, so there is none to relay.
            await self.respond(
                request_id,
                {
                    "runId": run.run_id,
                    "agentId": run.agent_id,
                    "sessionKey": run.session_key,
                    "text": "".join(text),
                    "stopReason": stop_reason,
                    "usage": _usage(usage),
                },
            )
        except ConnectionResetError:
            log.debug("WebSocket client went away during run %s", run.run_id)
        except Exception:
            log.exception("agent run %s failed", run.run_id)
            with suppress(ConnectionResetError):
                await self.refuse(request_id, "internal_error", "internal error")
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()


def websocket_handler(config: HttpCompatConfig, authenticator: Authenticator, runner: AgentRunner) -> Handler:
    """The ``GET /`` handler speaking the protocol above.

    Args:
        config: the plugin's part of the config (agents, trusted proxies).
        authenticator: the gateway's authenticator, the one its HTTP auth middleware uses.
        runner: the gateway's agent runner, the one its plugins were given.
    """

    async def handler(request: web.Request) -> web.StreamResponse:
        sock = web.WebSocketResponse(heartbeat=30.0)
        await sock.prepare(request)
        gateway = request.config_dict[SOCKETS_KEY]
        gateway.sockets.add(sock)
        connection = _Connection(
            sock,
            config=config,
            authenticator=authenticator,
            runner=runner,
            client_ip=client_ip(
                request, config.trusted_proxies, allow_real_ip_fallback=config.allow_real_ip_fallback
            ),
            gateway=gateway,
        )
        try:
            await connection.serve()
        finally:
            gateway.sockets.discard(sock)
        return sock

    return handler


async def close_sockets(app: web.Application) -> None:
    """``on_shutdown``: close every open WebSocket (``1001 going away``)."""
    sockets = app[SOCKETS_KEY].sockets
    # Concurrently: each close waits (up to its timeout) for the client's close frame.
    await asyncio.gather(
        *(sock.close(code=WSCloseCode.GOING_AWAY, message=b"Server shutdown") for sock in tuple(sockets)),
        return_exceptions=True,
    )

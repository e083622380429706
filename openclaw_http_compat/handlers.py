"""The ``POST /v1/chat/completions`` handler: read, parse, build the run, answer as JSON or SSE."""

from __future__ import annotations

import time
from typing import Final

from aiohttp import web

from .body import read_json
from .config import ChatCompletionsConfig
from .errors import INTERNAL_ERROR, ApiError, UpstreamError, shutting_down_error
from .held import HeldStream
from .keys import CONFIG_KEY, HOST_KEY, LIVE_RUNS_KEY, PRINCIPAL_KEY, RUN_KEY, RUNS_KEY
from .log import log
from .observe import observe_run
from .registry import Outcome
from .request import parse_chat_request
from .routing import random_uuid
from .run import Run
from .run_request import build_run_request
from .stored_routes import completion_of, keep_completion
from .wire import ChunkEncoder, json_response

__all__ = ("REQUEST_ID", "chat_completions", "client_closed")

#: The response header naming the request (a completion's id, or ``req_<hex>``).
REQUEST_ID: Final = "x-request-id"


def client_closed() -> web.Response:
    """The answer to a client that left: nobody reads it, its status only tells access logs."""
    return web.Response(status=499, reason="Client Closed Request")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``."""
    gateway_config = request.app[CONFIG_KEY]
    config = gateway_config.chat_completions
    host = request.app[HOST_KEY]
    body = await read_json(request, max_bytes=config.max_body_bytes, timeout_s=config.body_timeout_ms / 1000)
    chat = parse_chat_request(body)
    # A repeat (Idempotency-Key, SDK retry) is answered from its run; see .attach.
    ticket = await request.app[LIVE_RUNS_KEY].admit(request, body, request.get(PRINCIPAL_KEY))
    if isinstance(ticket, web.StreamResponse):
        return ticket
    run_id = f"chatcmpl_{random_uuid()}"
    agent_run = await build_run_request(request, chat, host, gateway_config, run_id)
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
    run = Run(host.runner, agent_run, chat)
    request[RUN_KEY] = run  # for access logs (facts.run_facts)
    if ticket is not None:
        # The run may outlive this request: it holds the slot until it ends.
        return await request.app[LIVE_RUNS_KEY].start(request, ticket, run, created)
    try:
        with observe_run(host.metrics, run, request):
            if chat.stream:
                return await _answer_stream(request, run, config, created)
            return await _answer_json(request, run, created)
    finally:
        registry.release()


async def _answer_json(request: web.Request, run: Run, created: int) -> web.StreamResponse:
    run_id = run.request.run_id
    ended = await request.app[RUNS_KEY].watch(request, run.collect())
    if ended is Outcome.CLIENT_GONE:
        log.debug("client went away during run %s", run_id)
        run.outcome = "client_gone"
        return client_closed()
    if ended is Outcome.SHUTDOWN:
        run.outcome = "aborted"
        raise shutting_down_error()
    if run.error is not None:
        raise run.error
    body = completion_of(run, created)
    if run.chat.store:
        await keep_completion(request, run.chat, body)
    return json_response(body, headers={REQUEST_ID: run_id})


def _left(held: HeldStream, run: Run) -> web.StreamResponse:
    run.outcome = "client_gone"
    log.debug("client went away during run %s", run.request.run_id)
    # A head already out cannot be taken back: aiohttp finishes that response.
    return held.response if held.response.prepared else client_closed()


async def _answer_stream(
    request: web.Request, run: Run, config: ChatCompletionsConfig, created: int
) -> web.StreamResponse:
    """The SSE answer, its head held until the run's first event or ``streamHoldMs``.

    Until the head goes out, nothing is promised: a run that fails first (its first event is
    a ``RunError``, the runner raises, shutdown comes) is answered like the JSON path, with
    the real status, the error envelope and ``Retry-After`` when the upstream gave one. Any
    other first event (text, a tool call, usage, the run's end) sends the head and the role
    chunk from this task, then that event. When ``streamHoldMs`` passes first, a timer sends
    the head and the role chunk, with keep-alives from then on, and every later failure is
    an in-band error frame, as it was before the hold. ``streamHoldMs: 0`` sends the head at
    once.

    Two outcomes can be known before the head went out, because a run's first event can be
    its last: a run that ends at once (``RunEnd`` first, or no event at all) is streamed in
    one go, head, role chunk, its stand-in text, finish; a forced ``tool_choice`` it did not
    meet is then, as in the JSON path, a 502 HTTP error. Once any event arrived the head
    went out, so an unmet choice found later, even with all the prose held back for it, is
    an in-band error frame.
    """
    run_id = run.request.run_id
    encoder = ChunkEncoder(completion_id=run_id, created=created, model=run.chat.model)
    held = HeldStream(
        request,
        hold_s=config.stream_hold_ms / 1000,
        keepalive_s=config.keepalive_ms / 1000,
        headers={REQUEST_ID: run_id},
        first_frame=encoder.role(),
    )
    async with held:
        try:
            ended = await request.app[RUNS_KEY].watch(request, run.stream(held, encoder))
            failure = run.error
        except ConnectionResetError:
            return _left(held, run)
        except Exception:
            log.exception("agent run %s failed", run_id)
            ended, failure, run.outcome = Outcome.DONE, UpstreamError(INTERNAL_ERROR), "error"
        if ended is Outcome.CLIENT_GONE:
            return _left(held, run)
        if ended is Outcome.SHUTDOWN:
            failure, run.outcome = shutting_down_error(), "aborted"
        if failure is not None and not held.committed:
            # Nothing went out: the failure is answered as the JSON path answers it.
            raise failure
        try:
            stream = await held.open()
            if failure is not None:
                await stream.write_frame(encoder.error(failure))
            elif run.chat.store:
                # Stored before [DONE], so a client that saw [DONE] can retrieve it at once.
                await keep_completion(request, run.chat, completion_of(run, created))
            await stream.write_done()
        except ConnectionResetError:
            return _left(held, run)
    return held.response

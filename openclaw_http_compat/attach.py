"""Runs that may outlive their client: ``Idempotency-Key``, SDK retries and ``onDisconnect``.

A request takes this path when its run may have to survive its client: it carries an
``Idempotency-Key``, or ``x-stainless-retry-count`` (the ``openai`` SDKs announce every
attempt so), or ``chatCompletions.onDisconnect`` is ``finish``. Any other request is served as
before, its run read in its own task (:mod:`.handlers`).

Such a run is a :class:`LiveRun`: its events are read in a task of its own, started from the
request's task (so it runs in a copy of the request's context, as the runner contract wants:
every event read in one task, a ``ContextVar`` set before the first ``yield`` still seen after
it). The run records its answer as it is produced, the stream's frames or the JSON body, and
any number of requests follow it: the one that started it, a repeat with the same key, an SDK
retry. Each follower writes what was recorded so far, then what comes, to its own response;
so an attached stream is byte for byte the stream of the one run.

When the last follower leaves before the end: a request that announced SDK retries keeps its
run ``chatCompletions.reattachMs`` for a retry to attach; then (or at once, for any other
request) ``onDisconnect`` decides: ``abort`` cancels the run, ``finish`` lets it complete and
keeps its answer for replay. Such runs keep their slot of ``maxConcurrentRuns`` until they end,
and shutdown ends them like any other run (they are watched by the run registry).

A keyed run's record lives in the host's :class:`~.idempotency.IdempotencyStore`, shared by the
fleet: a repeat served by another process waits for the answer (``idempotency.waitMs``) and
replays it, or is answered 409 ``idempotency_request_in_progress`` with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Final

import attrs
from aiohttp import web

from .config import ChatCompletionsConfig
from .errors import INTERNAL_ERROR, ApiError, InvalidRequestError, UpstreamError, shutting_down_error
from .held import HeldStream
from .host import AgentRoster, Principal
from .idempotency import (
    IDEMPOTENCY_KEY_HEADER,
    LEASE_S,
    REPLAYED_HEADER,
    Answer,
    IdempotencyRecord,
    IdempotencyStore,
    fingerprint,
    key_digest,
    valid_key,
)
from .log import log
from .metrics import NO_METRICS, Metrics
from .observe import observe_run
from .registry import Outcome, RunRegistry
from .run import Run
from .routing import resolve_agent_id
from .stored_routes import completion_of, keep_completion
from .stream import ChatEventStream
from .wire import DONE_FRAME, ChunkEncoder, dumps

__all__ = ("RETRY_COUNT_HEADER", "LiveRun", "LiveRuns", "Ticket")

#: Sent by the openai SDKs on every attempt: ``0`` on the first, then 1, 2, ...
RETRY_COUNT_HEADER: Final = "x-stainless-retry-count"
# The names handlers.py answers with; not imported from there, which imports this module.
_REQUEST_ID: Final = "x-request-id"
# A follower's head waits for the run's own hold, never for a timer of its own.
_NEVER: Final = 86_400.0
# Polling a record held by another process: from 50 ms, doubling, up to 500 ms.
_POLL_FIRST_S: Final = 0.05
_POLL_MAX_S: Final = 0.5
_INVALID_KEY: Final = "`Idempotency-Key` must be 1 to 255 visible ASCII characters."


def _retry_count(request: web.BaseRequest) -> int | None:
    value = request.headers.get(RETRY_COUNT_HEADER)
    if value is None:
        return None
    try:
        count = int(value.strip())
    except ValueError:
        return None
    return count if count >= 0 else None


def _agent_of(body: object, request: web.BaseRequest, roster: AgentRoster) -> str:
    # The agent label of a replayed request: the agent its first run resolved the same way.
    model = body.get("model") if isinstance(body, dict) else None
    header = request.headers.get("x-openclaw-agent-id") or request.headers.get("x-openclaw-agent")
    try:
        return resolve_agent_id(model if isinstance(model, str) else None, header, roster)
    except ApiError:
        return roster.default_agent_id


def _final(answer: Answer | None) -> bool:
    """Whether an answer is the run's for good: a client would retry 408, 409, 429 and 5xx,
    and a retry must run again rather than get the same failure back."""
    return answer is not None and answer.status not in (408, 409, 429) and answer.status < 500


def _reused() -> ApiError:
    return InvalidRequestError(
        "This Idempotency-Key was used with a different request.",
        status=422,
        param=IDEMPOTENCY_KEY_HEADER,
        code="idempotency_key_reused",
    )


def _in_progress() -> ApiError:
    return InvalidRequestError(
        "A request with this Idempotency-Key is still running. Retry shortly.",
        status=409,
        param=IDEMPOTENCY_KEY_HEADER,
        code="idempotency_request_in_progress",
        headers={"Retry-After": "1"},
    )


def _store_down() -> ApiError:
    # Worded as the session store's outage is (errors.map_run_error, reason "unavailable").
    return UpstreamError("idempotency store unavailable", status=503, headers={"Retry-After": "1"})


def _headers(answer: Answer, replayed: bool) -> dict[str, str]:
    headers = dict(answer.headers)
    if replayed:
        headers[REPLAYED_HEADER] = "true"
    return headers


def _client_closed() -> web.Response:
    return web.Response(status=499, reason="Client Closed Request")


def _left(held: HeldStream) -> web.StreamResponse:
    return held.response if held.response.prepared else _client_closed()


async def replay(request: web.BaseRequest, answer: Answer, *, replayed: bool = True) -> web.StreamResponse:
    """Answer ``request`` with a recorded answer, as it was first sent."""
    headers = _headers(answer, replayed)
    if not answer.stream:
        return web.Response(
            body=answer.body, status=answer.status, headers=headers, content_type="application/json", charset="utf-8"
        )
    response = ChatEventStream(keepalive_s=0, headers=headers)
    try:
        await response.prepare(request)
        await response.write_frame(answer.body)
    except ConnectionResetError:
        pass
    finally:
        if response.prepared:
            response.stop_streaming()
            await response.wait()
    return response


@attrs.frozen(kw_only=True)
class Ticket:
    """A request whose run may outlive its client, and what it is known by.

    Attributes:
        key: the ``Idempotency-Key``'s digest, or ``None``.
        subject: the principal that sent it.
        fingerprint: the request's fingerprint (body and run headers).
        retryable: it announced SDK retries (``x-stainless-retry-count``).
    """

    key: str | None
    subject: str
    fingerprint: str
    retryable: bool


class LiveRun:
    """One run in a task of its own, its answer recorded for every request that follows it."""

    def __init__(self, runs: LiveRuns, ticket: Ticket, run: Run, created: int, owner: str, origin: web.Request) -> None:
        self.ticket = ticket
        # The request that started the run: its app and principal keep a ``store: true``
        # completion after its client has gone.
        self._origin = origin
        self.run = run
        self.owner = owner
        self.run_id = run.request.run_id
        self.stream = run.chat.stream
        self.encoder = ChunkEncoder(completion_id=self.run_id, created=created, model=run.chat.model)
        self.role = self.encoder.role()
        #: The stream's frames after the role chunk, ``[DONE]`` last once it ended.
        self.frames: list[bytes] = []
        #: The stream's head may go out: the run answered, or its hold ran out.
        self.committed = False
        self.ended = False
        #: The answer, once ended; ``None`` when the run was aborted.
        self.answer: Answer | None = None
        #: The answer may be replayed (shutdown's is for the followers of the moment only).
        self.recordable = False
        self.clients = 0
        self.task: asyncio.Task[None] | None = None
        self._created = created
        self._runs = runs
        self._changed = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._hold: asyncio.TimerHandle | None = None
        self._aborting = False
        self._detached = False
        #: A follower left before the end: a retry may come for the answer.
        self.lost_client = False
        #: Set once the run's record is settled in the store and the indexes.
        self.settled = asyncio.Event()

    # --- the run's side --------------------------------------------------------------------

    def start(self) -> None:
        """Start the run's task; it runs in a copy of the current (the request's) context."""
        self.task = asyncio.get_running_loop().create_task(self._produce(), name=f"run {self.run_id}")

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _commit(self) -> None:
        if not self.committed:
            self.committed = True
            self._notify()

    async def open(self) -> LiveRun:
        """:class:`~.run.StreamOut`: the run answers, so its head may go out."""
        self._commit()
        return self

    async def write_frame(self, frame: bytes) -> None:
        """:class:`~.run.FrameWriter`: record a frame for every follower."""
        self.frames.append(frame)
        self._notify()

    async def _produce(self) -> None:
        runs = self._runs
        heartbeat = None
        if self.ticket.key is not None:
            heartbeat = asyncio.get_running_loop().create_task(self._heartbeat(self.ticket.key))
        try:
            with observe_run(runs.metrics, self.run, None):
                await self._answer()
        finally:
            if self._hold is not None:
                self._hold.cancel()
            if heartbeat is not None:
                heartbeat.cancel()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if not self.ended:
                self._end(None, None)
            runs.registry.release()
            try:
                await runs.settle(self)
            finally:
                self.settled.set()

    async def _answer(self) -> None:
        # The run, start to end, and its answer; in the run's own task.
        runs = self._runs
        ended: Outcome | None
        failure: ApiError | None = None
        try:
            if self.stream:
                hold_s = runs.config.stream_hold_ms / 1000
                if hold_s > 0:
                    self._hold = asyncio.get_running_loop().call_later(hold_s, self._commit)
                else:
                    self._commit()
                ended = await runs.registry.watch(None, self.run.stream(self, self.encoder))
            else:
                ended = await runs.registry.watch(None, self.run.collect())
            failure = self.run.error
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._aborting or (task is not None and task.uncancel() > 0):
                raise
            ended = None
        except Exception:
            log.exception("agent run %s failed", self.run_id)
            ended, failure = Outcome.DONE, UpstreamError(INTERNAL_ERROR)
        if ended is Outcome.SHUTDOWN:
            failure = shutting_down_error()
            self.run.outcome = "aborted"
        elif ended is None:
            # Ended because nobody was left to answer (onDisconnect "abort").
            self.run.outcome = "client_gone"
        elif self._detached and failure is None:
            self.run.outcome = "detached"
        completion = None
        if ended is Outcome.DONE and failure is None and self.run.chat.store:
            # Kept before the answer is complete, as a run answered in its request's task.
            completion = completion_of(self.run, self._created)
            await keep_completion(self._origin, self.run.chat, completion)
        self._end(ended, failure, completion)

    def _end(self, ended: Outcome | None, failure: ApiError | None, completion: dict[str, Any] | None = None) -> None:
        headers: tuple[tuple[str, str], ...] = ((_REQUEST_ID, self.run_id),)
        if ended is None:
            answer = None
        elif failure is not None and not (self.stream and self.committed):
            answer = Answer(
                status=failure.status, body=dumps(failure.body()), headers=(*headers, *failure.headers.items())
            )
        elif self.stream:
            if failure is not None:
                self.frames.append(self.encoder.error(failure))
            self.frames.append(DONE_FRAME)
            answer = Answer(status=200, body=self.role + b"".join(self.frames), stream=True, headers=headers)
        else:
            body = completion if completion is not None else completion_of(self.run, self._created)
            answer = Answer(status=200, body=dumps(body), headers=headers)
        self.answer = answer
        self.recordable = ended is Outcome.DONE
        self.ended = True
        if self._detached:
            log.info("detached run %s %s", self.run_id, "finished" if answer is not None else "was aborted")
        self._notify()

    async def _heartbeat(self, key: str) -> None:
        while True:
            await asyncio.sleep(LEASE_S / 3)
            try:
                if not await self._runs.store.renew(key, self.owner, lease_s=LEASE_S):
                    log.warning("run %s lost its Idempotency-Key lease", self.run_id)
                    return
            except Exception:
                log.warning("cannot renew the Idempotency-Key lease of run %s", self.run_id, exc_info=True)

    # --- the followers' side ---------------------------------------------------------------

    def _attach(self) -> None:
        self.clients += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _detach(self) -> None:
        self.clients -= 1
        if self.ended:
            return
        self.lost_client = True
        if self.clients:
            return
        reattach_s = self._runs.config.reattach_ms / 1000
        if self.ticket.retryable and reattach_s > 0:
            log.info("run %s lost its client; kept %.1f s for a retry to attach", self.run_id, reattach_s)
            self._timer = asyncio.get_running_loop().call_later(reattach_s, self._unclaimed)
        else:
            self._unclaimed()

    def _unclaimed(self) -> None:
        self._timer = None
        if self.clients or self.ended:
            return
        self._detached = True
        if self._runs.config.on_disconnect == "finish":
            log.info("run %s continues without its client (onDisconnect: finish)", self.run_id)
            return
        log.info("run %s aborted: its client went away", self.run_id)
        self._aborting = True
        if self.task is not None:
            self.task.cancel()

    async def _until_ended(self) -> None:
        while not self.ended:
            await self._changed.wait()

    async def follow(self, request: web.BaseRequest, *, replayed: bool) -> web.StreamResponse:
        """Answer ``request`` with this run's answer: recorded so far, then live."""
        self._attach()
        try:
            if self.stream:
                return await self._follow_stream(request, replayed)
            return await self._follow_json(request, replayed)
        finally:
            self._detach()

    async def _follow_json(self, request: web.BaseRequest, replayed: bool) -> web.StreamResponse:
        ended = await self._runs.registry.watch(request, self._until_ended())
        if ended is Outcome.CLIENT_GONE:
            return _client_closed()
        if self.answer is None:
            raise shutting_down_error()
        return await replay(request, self.answer, replayed=replayed)

    async def _pump(self, held: HeldStream, cursor: list[int]) -> None:
        # cursor[0]: how many frames this follower wrote, kept across calls.
        while True:
            changed = self._changed
            answer = self.answer
            if self.committed and (answer is None or answer.stream):
                stream = await held.open()
                if cursor[0] < len(self.frames):
                    chunk = b"".join(self.frames[cursor[0] :])
                    cursor[0] = len(self.frames)
                    await stream.write_frame(chunk)
                    continue
            if self.ended:
                return
            await changed.wait()

    async def _follow_stream(self, request: web.BaseRequest, replayed: bool) -> web.StreamResponse:
        headers = {_REQUEST_ID: self.run_id}
        if replayed:
            headers[REPLAYED_HEADER] = "true"
        config = self._runs.config
        held = HeldStream(
            request, hold_s=_NEVER, keepalive_s=config.keepalive_ms / 1000, headers=headers, first_frame=self.role
        )
        cursor = [0]
        async with held:
            try:
                ended = await self._runs.registry.watch(request, self._pump(held, cursor))
                if ended is Outcome.CLIENT_GONE:
                    return _left(held)
                if ended is Outcome.SHUTDOWN and self.ended:
                    # Shutdown ended the run too, and its answer says so: write the rest.
                    await self._pump(held, cursor)
                answer = self.answer
                if answer is not None and not answer.stream:
                    # The run failed before it answered: its real status, as the JSON path.
                    return await replay(request, answer, replayed=replayed)
                if answer is None:
                    if not held.committed:
                        raise shutting_down_error()
                    stream = await held.open()
                    await stream.write_frame(self.encoder.error(shutting_down_error()) + DONE_FRAME)
            except ConnectionResetError:
                return _left(held)
        return held.response


class LiveRuns:
    """The runs of one sub-application that may outlive their clients, by key and by retry."""

    def __init__(
        self,
        config: ChatCompletionsConfig,
        registry: RunRegistry,
        store: IdempotencyStore,
        *,
        roster: AgentRoster,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self.config = config
        self.roster = roster
        self.metrics = metrics
        self.registry = registry
        self.store = store
        self.by_key: dict[str, LiveRun] = {}
        self.by_retry: dict[tuple[str, str], LiveRun] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def admit(
        self, request: web.BaseRequest, body: object, principal: Principal | None
    ) -> Ticket | web.StreamResponse | None:
        """What a request is: a repeat answered here (the response), a run that may outlive
        its client (a :class:`Ticket`), or a plain run (``None``).

        Raises:
            ApiError: 400 for a malformed key, 422 for a key reused with another request,
                409 while another process runs the key's request, 503 when the store is down.
        """
        raw_key = request.headers.get(IDEMPOTENCY_KEY_HEADER)
        if raw_key is not None and not valid_key(raw_key):
            raise InvalidRequestError(_INVALID_KEY, param=IDEMPOTENCY_KEY_HEADER, code="invalid_idempotency_key")
        retries = _retry_count(request)
        if raw_key is None and retries is None and self.config.on_disconnect != "finish":
            return None
        subject = principal.subject if principal is not None else ""
        ticket = Ticket(
            key=key_digest(subject, raw_key) if raw_key is not None else None,
            subject=subject,
            fingerprint=fingerprint(body, request.headers),
            retryable=retries is not None,
        )
        if ticket.key is not None:
            repeat = await self._repeat_of_key(request, ticket)
            if repeat is not None:
                self._count_replay(_agent_of(body, request, self.roster))
                return repeat
        elif retries:
            # A first attempt (0) is never merged: two identical questions both run.
            live = self.by_retry.get((subject, ticket.fingerprint))
            if live is not None and live.ended and live.answer is None:
                # Aborted, on its way out of the index: the retry runs it again.
                await live.settled.wait()
                live = self.by_retry.get((subject, ticket.fingerprint))
            if live is not None:
                log.info("retry attached to run %s", live.run_id)
                self._count_replay(live.run.request.agent_id)
                return await live.follow(request, replayed=True)
        return ticket

    def _count_replay(self, agent: str) -> None:
        # A request answered by a run it did not start: no agent ran for it.
        self.metrics.idempotent_replay()
        self.metrics.run_started(agent=agent, stream=False)
        self.metrics.run_finished(agent=agent, stream=False, outcome="replayed")

    async def _get(self, key: str) -> IdempotencyRecord | None:
        try:
            return await self.store.get(key)
        except Exception:
            log.warning("the idempotency store cannot be read", exc_info=True)
            raise _store_down() from None

    async def _repeat_of_key(self, request: web.BaseRequest, ticket: Ticket) -> web.StreamResponse | None:
        assert ticket.key is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.idempotency.wait_ms / 1000
        delay = _POLL_FIRST_S
        while True:
            live = self.by_key.get(ticket.key)
            if live is not None and live.ended and live.answer is None:
                # Aborted: its key is on its way to being released.
                await live.settled.wait()
                continue
            if live is not None:
                if live.ticket.fingerprint != ticket.fingerprint:
                    raise _reused()
                return await live.follow(request, replayed=True)
            record = await self._get(ticket.key)
            if record is None:
                return None
            if record.fingerprint != ticket.fingerprint:
                raise _reused()
            if record.answer is not None:
                return await replay(request, record.answer)
            # Running in another process of the fleet: wait for its answer, a while.
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise _in_progress()
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, _POLL_MAX_S)

    async def start(self, request: web.Request, ticket: Ticket, run: Run, created: int) -> web.StreamResponse:
        """Start ``run`` in a task of its own and answer ``request`` from it.

        The caller took a slot of the run registry; from here the run gives it back when it
        ends, however long after its client that is.
        """
        owner = os.urandom(16).hex()
        if ticket.key is not None:
            try:
                claimed = await self.store.claim(ticket.key, ticket.fingerprint, owner, lease_s=LEASE_S)
            except Exception:
                self.registry.release()
                log.warning("the idempotency store cannot be written", exc_info=True)
                raise _store_down() from None
            if not claimed:
                # Another request with the key came first, in this process or another.
                self.registry.release()
                repeat = await self._repeat_of_key(request, ticket)
                if repeat is None:
                    raise _in_progress()
                self._count_replay(run.request.agent_id)
                return repeat
        live = LiveRun(self, ticket, run, created, owner, request)
        if ticket.key is not None:
            self.by_key[ticket.key] = live
        if ticket.retryable:
            self.by_retry[(ticket.subject, ticket.fingerprint)] = live
        live.start()
        assert live.task is not None
        self._tasks.add(live.task)
        live.task.add_done_callback(self._tasks.discard)
        return await live.follow(request, replayed=False)

    async def settle(self, live: LiveRun) -> None:
        """A run ended: keep its answer for replay (or free its key), drop it from the indexes."""
        ticket = live.ticket
        answer = live.answer
        keep = _final(answer) and live.recordable
        if ticket.key is not None:
            try:
                if keep and answer is not None:
                    ttl_s = self.config.idempotency.ttl_ms / 1000
                    if not await self.store.complete(ticket.key, live.owner, answer, ttl_s=ttl_s):
                        log.warning("run %s finished after losing its Idempotency-Key lease", live.run_id)
                else:
                    await self.store.release(ticket.key, live.owner)
            except Exception:
                log.warning("cannot record the answer of run %s", live.run_id, exc_info=True)
            finally:
                if self.by_key.get(ticket.key) is live:
                    del self.by_key[ticket.key]
        if ticket.retryable:
            index = (ticket.subject, ticket.fingerprint)
            if keep and live.lost_client and self.config.reattach_ms > 0:
                # A retry that comes after the answer (its client had left) still gets it;
                # a run whose clients all got their answer expects no retry.
                asyncio.get_running_loop().call_later(self.config.reattach_ms / 1000, self._forget, index, live)
            else:
                self._forget(index, live)

    def _forget(self, index: tuple[str, str], live: LiveRun) -> None:
        if self.by_retry.get(index) is live:
            del self.by_retry[index]

    @property
    def tasks(self) -> frozenset[asyncio.Task[None]]:
        """The tasks of the runs alive."""
        return frozenset(self._tasks)

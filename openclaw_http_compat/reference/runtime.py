"""The reference gateway's agent runtime: one agent run, from request to persisted turn.

A run picks its model (the agent's, the defaults', a per-run override, or the built-in
``echo/echo``), builds the conversation as native OpenAI messages (system prompt, the newest
part of the session's transcript or the client's history that fits the model's context, the
new entries with their images), streams the provider's reply and, when the run completes,
appends the new entries and the reply (with its tool calls) to the session. Runs on one
session key take turns (the store's ``take_turn``, across processes on a shared store): each
holds the session from start to end, so the next one sees the whole transcript, and whether the
session is new or goes on is decided by what it reads there, inside its turn.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Final

import aiohttp

from openclaw_http_compat import (
    AgentEvent,
    AgentRunRequest,
    RunEnd,
    RunError,
    TextDelta,
    ToolCall,
)
from openclaw_http_compat.config import ModelRef

from .budget import Budget, context_budget, fit_history, history_tokens, is_context_overflow, load_history
from .config import GatewayConfig
from .metrics import UpstreamMetrics
from .openai_api import Message
from .providers import IDLE_TIMEOUT_S, Provider, make_provider
from .storage import STORE_ERRORS, LeaseLost, SessionBusy, TranscriptStore, unshared_turn
from .transcript import Exchange, Turn, exchange

__all__ = ("ECHO_MODEL", "AgentRuntime")

log = logging.getLogger(__name__)

ECHO_MODEL: Final = ModelRef("echo", "echo")
"""The model of an agent nobody configured one for."""

#: A store that cannot be read or written is a temporary failure: the client may retry shortly
#: (an engine reconnects by itself), so it is answered 503 with Retry-After, never a 500.
_STORE_DOWN: Final = RunError(message="session store unavailable", reason="unavailable", retry_after=1.0)
_NO_RESULT: Final = RunError(message="the provider ended the run without a result")
#: A run whose lease on its session was taken over (its process stalled past the lease) must
#: not write; what it had is dropped, and the client may retry on the session as it now is.
_LEASE_LOST: Final = RunError(
    message="the run lost its turn on the session; retry", reason="unavailable", code="session_lease_lost",
    retry_after=1.0,
)


def _session_busy(exc: SessionBusy) -> RunError:
    return RunError(
        message="Another run on this session is still in progress; retry later.",
        reason="session_busy", code="session_busy", retry_after=exc.retry_after_s,
    )  # fmt: skip


class AgentRuntime:
    """Performs agent runs for the reference gateway; an ``openclaw_http_compat.AgentRunner``.

    Args:
        config: the gateway config (agents, defaults, providers).
        store: the opened session store.
        session: the client session provider calls go through; the caller owns and closes it.
        idle_timeout_s: the longest an upstream provider may stay silent mid-response.
        upstream_metrics: where provider calls are measured, if anywhere.
    """

    def __init__(
        self,
        config: GatewayConfig,
        store: TranscriptStore,
        session: aiohttp.ClientSession,
        *,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        upstream_metrics: UpstreamMetrics | None = None,
    ) -> None:
        self.config = config
        self.upstream_metrics = upstream_metrics
        self.store = store
        self.session = session
        self.idle_timeout_s = idle_timeout_s
        # Providers hold no per-run state and the config is frozen: one per provider id.
        self._providers: dict[str, Provider | RunError] = {}

    def resolve_model(self, request: AgentRunRequest) -> ModelRef | RunError:
        """The model the run uses, or why the requested override cannot be used.

        A bare override model id takes the provider of the agent's own model. When
        ``agents.defaults.models`` is set it is an allowlist for overrides (the agent's own
        model is always allowed), as in OpenClaw.
        """
        agents = self.config.plugin.agents
        agent = agents.get(request.agent_id)
        base = agent.model or agents.default_model or ECHO_MODEL
        raw = (request.model_override or "").strip()
        if not raw:
            return base
        ref = ModelRef.parse(raw, default_provider=base.provider)
        if ref is None:
            return RunError(message=f"Invalid model override '{raw}'.", reason="format")
        allowed = agents.allowed_models
        if allowed and ref != base and ref not in allowed:
            return RunError(message=f"Model '{ref}' is not allowed for agent '{agent.id}'.", reason="format")
        return ref

    def system_prompt(self, request: AgentRunRequest) -> str | None:
        """The agent's system prompt, then the request's extra system prompt after a blank line."""
        agents = self.config.plugin.agents
        agent = agents.get(request.agent_id)
        base = agent.system_prompt or agents.default_system_prompt
        parts = [p for p in (base, request.extra_system_prompt) if p and p.strip()]
        return "\n\n".join(parts) if parts else None

    def system_messages(self, request: AgentRunRequest) -> list[Message]:
        """The leading system message, when there is a system prompt."""
        system = self.system_prompt(request)
        return [] if system is None else [{"role": "system", "content": system}]

    def _provider(self, ref: ModelRef) -> Provider | RunError:
        provider = self._providers.get(ref.provider)
        if provider is None:
            provider = make_provider(
                self.config, ref.provider, self.session, idle_timeout_s=self.idle_timeout_s, metrics=self.upstream_metrics
            )
            self._providers[ref.provider] = provider
        return provider

    async def run(self, request: AgentRunRequest) -> AsyncIterator[AgentEvent]:
        """Perform the run and stream its events; the last one is ``RunEnd`` or ``RunError``.

        The run's turn on its session (a lease, on a shared store) is held from before the
        transcript is read until the outcome is known; a session that stays busy past the
        store's wait ends the run with ``RunError`` reason ``session_busy`` (429), a store
        that cannot be reached with reason ``unavailable`` (503). The upstream gets the system prompt, the newest part of the earlier
        conversation that fits the model's context budget, and the run's new entries
        (:mod:`.transcript`, :mod:`.budget`). A completed run's new turns and its reply are
        committed before ``RunEnd`` is yielded; a failed or aborted run (the consumer cancels
        or calls ``aclose()``) persists nothing, and an abort closes the upstream response.
        """
        ref = self.resolve_model(request)
        if isinstance(ref, RunError):
            yield ref
            return
        provider = self._provider(ref)
        if isinstance(provider, RunError):
            yield provider
            return
        log.debug("run %s: agent %s, session %s, model %s", request.run_id, request.agent_id, request.session_key, ref)
        budget = context_budget(self.config, ref, request.options)
        outcome: RunEnd | RunError = _NO_RESULT
        # The run's turn on its session: every read and write of the transcript goes through it,
        # so a store that fences stale turns (run leases) needs no change here.
        async with contextlib.AsyncExitStack() as held:
            try:
                # A key minted for this request (no user, no session header) is this run's alone.
                taking = (
                    unshared_turn(self.store, request.session_key)
                    if request.new_session
                    else self.store.take_turn(request.session_key)
                )
                turn = await held.enter_async_context(taking)
            except SessionBusy as exc:
                log.info("run %s: session %s stayed busy", request.run_id, request.session_key)
                outcome = _session_busy(exc)
                turn = None
            except STORE_ERRORS:
                log.exception("run %s: cannot take session %s", request.run_id, request.session_key)
                outcome = _STORE_DOWN
                turn = None
            # Everything below reads the session inside the turn: two concurrent first requests
            # on one key never both see it empty.
            history: list[Turn] | None = None
            if turn is not None:
                try:
                    # A key minted for this request has no transcript: skip the thread hop. With
                    # a budget, only the newest turns that could fit are read.
                    history = [] if request.new_session else await load_history(turn, budget)
                except STORE_ERRORS:
                    log.exception("run %s: cannot load session %s", request.run_id, request.session_key)
                    outcome = _STORE_DOWN
            if turn is not None and history is not None:
                conversation = exchange(request, history)
                text: list[str] = []
                calls: list[ToolCall] = []
                events = self._attempts(provider, ref.model, request, conversation, budget)
                async with contextlib.aclosing(events):
                    async for event in events:
                        if isinstance(event, (RunEnd, RunError)):
                            outcome = event
                            break
                        if isinstance(event, TextDelta):
                            text.append(event.text)
                        elif isinstance(event, ToolCall):
                            calls.append(event)
                        yield event
                if isinstance(outcome, RunEnd):
                    reply = Turn("assistant", "".join(text), tool_calls=tuple(calls))
                    try:
                        await turn.append((*conversation.turns, reply), last=True)
                    except LeaseLost:
                        log.warning("run %s: lost its lease on session %s; nothing saved", request.run_id,
                                    request.session_key)
                        outcome = _LEASE_LOST
                    except STORE_ERRORS:
                        log.exception("run %s: cannot save session %s", request.run_id, request.session_key)
                        outcome = _STORE_DOWN
        # The upstream response and the session lock are released before the outcome is told.
        yield outcome

    async def _attempts(
        self,
        provider: Provider,
        model: str,
        request: AgentRunRequest,
        conversation: Exchange,
        budget: Budget | None,
    ) -> AsyncGenerator[AgentEvent, None]:
        """The provider's events for the run, the last one ``RunEnd`` or ``RunError``.

        The estimate behind the budget can be wrong (a tokenizer that splits finer, a budget
        configured too loose). If the upstream refuses the call as exceeding its context before
        sending anything, the run tries once more with the newer half of that history; nothing
        of the refused call reached the client, and nothing of it is stored.
        """
        system = self.system_messages(request)
        available = budget.for_history(system, request.client_tools) if budget is not None else None
        earlier = fit_history(conversation.earlier, conversation.new, available)
        for attempt in range(2):
            outcome: RunEnd | RunError = _NO_RESULT
            started = False
            events = provider.stream(model, [*system, *earlier, *conversation.new], request)
            async with contextlib.aclosing(events):
                async for event in events:
                    if isinstance(event, (RunEnd, RunError)):
                        outcome = event
                        break
                    started = True
                    yield event
            if attempt or started or not isinstance(outcome, RunError) or not is_context_overflow(outcome):
                break
            half = history_tokens(earlier) // 2 + history_tokens(conversation.new)
            halved = fit_history(earlier, conversation.new, half)
            if len(halved) == len(earlier):
                break  # nothing left to drop: the new entries alone are too long
            log.info(
                "run %s: upstream context exceeded with %d earlier messages; retrying with %d",
                request.run_id, len(earlier), len(halved),
            )
            earlier = halved
        yield outcome

"""What the endpoint knows about one request's agent run, for a gateway's access log.

The handler keeps the request's :class:`~.run.Run` on the request and the run registry
records how its watch ended; :func:`run_facts` turns both into a :class:`RunFacts` that
holds nothing a log must not: the session key only as a short hash, no message text.
"""

from __future__ import annotations

import hashlib
from typing import Final, Literal, TypeAlias

import attrs
from aiohttp import web

from .keys import RUN_KEY
from .registry import OUTCOME_KEY, Outcome
from .wire import usage_body

__all__ = ("RunFacts", "RunOutcome", "run_facts", "session_hash")

RunOutcome: TypeAlias = Literal["completed", "error", "aborted", "client_gone"]
"""How a request's run ended: it finished; it failed (the runner's error, an unmet tool
choice, a bug); shutdown ended it; its client left first."""

_HASH_CHARS: Final = 12


def session_hash(session_key: str) -> str:
    """A short stable stand-in for a session key in logs: 12 hex digits of its SHA-256.

    Enough to follow one session through a log, useless for guessing or replaying the key.
    """
    return hashlib.sha256(session_key.encode("utf-8")).hexdigest()[:_HASH_CHARS]


@attrs.frozen(kw_only=True)
class RunFacts:
    """One request's agent run as an access log sees it."""

    agent_id: str
    #: :func:`session_hash` of the run's session key.
    session: str
    outcome: RunOutcome
    #: Token counts as the response's ``usage`` gives them; ``None`` when the run reported none.
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int | None


def run_facts(request: web.BaseRequest) -> RunFacts | None:
    """The facts of the agent run ``request`` started; ``None`` when it started none
    (refused before its run, another route, another gateway route)."""
    run = request.get(RUN_KEY)
    if run is None:
        return None
    outcome: RunOutcome
    if run.outcome is not None:
        # Counted when the run ended (observe.observe_run), in this task or its own.
        outcome = run.outcome
    elif request.get(OUTCOME_KEY) is Outcome.SHUTDOWN:
        outcome = "aborted"
    else:
        # A run in a task of its own (attach.py) still going when its request ended: the
        # client left it, to a retry or to the disconnect policy.
        outcome = "client_gone"
    usage = usage_body(run.usage)
    cached = None
    if usage is not None:
        cached = usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
    return RunFacts(
        agent_id=run.request.agent_id,
        session=session_hash(run.request.session_key),
        outcome=outcome,
        prompt_tokens=None if usage is None else usage["prompt_tokens"],
        completion_tokens=None if usage is None else usage["completion_tokens"],
        cached_tokens=cached,
    )

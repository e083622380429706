"""What the plugin counts, through an interface the gateway backs with its own registry.

The plugin never imports a metrics library. It reports what it sees (requests, runs, streams,
tokens, refused credentials) to the :class:`Metrics` given as :attr:`Host.metrics
<openclaw_http_compat.host.Host.metrics>`; the default, :data:`NO_METRICS`, does nothing. The
reference gateway backs it with ``prometheus-client``
(:mod:`openclaw_http_compat.reference.metrics`); another gateway may back it with its own.

Every argument is bounded and safe to use as a label: a route template (never the path with
its ids), a method, a status, a configured agent id, an outcome, a token kind. No call ever
carries a session key, a user, a credential or message text.
"""

from __future__ import annotations

from typing import Final, Literal, Protocol

__all__ = ("NO_METRICS", "RUN_OUTCOMES", "TOKEN_KINDS", "Metrics", "NoMetrics", "RunOutcome", "TokenKind")

#: How an agent run ended, as :meth:`Metrics.run_finished` reports it:
#:
#: * ``completed``: answered in full (a JSON body, or a stream up to ``[DONE]`` without an error frame);
#: * ``error``: the run failed (a provider error, an unmet ``tool_choice``, a runner that raised);
#: * ``aborted``: the gateway ended it (shutdown) or its task was cancelled from outside;
#: * ``client_gone``: the client left before the answer was complete;
#: * ``detached``: the run went on without its client (reserved for detached runs);
#: * ``replayed``: the answer was a stored one, replayed for a repeated idempotency key (reserved).
RunOutcome = Literal["completed", "error", "aborted", "client_gone", "detached", "replayed"]
RUN_OUTCOMES: Final[tuple[RunOutcome, ...]] = ("completed", "error", "aborted", "client_gone", "detached", "replayed")

#: The kinds of tokens counted: the prompt (input), the completion (output), and the part of
#: the prompt served from the provider's cache.
TokenKind = Literal["prompt", "completion", "cached"]
TOKEN_KINDS: Final[tuple[TokenKind, ...]] = ("prompt", "completion", "cached")


class Metrics(Protocol):
    """Receives the plugin's counts. Every method is called on the event loop and must not block."""

    def request_finished(self, *, route: str, method: str, status: int, duration_s: float) -> None:
        """An HTTP request on one of the plugin's routes was answered.

        ``route`` is the route's template (``/v1/models/{model_id}``), or ``unmatched`` for a
        path no route serves; ``duration_s`` runs to the end of the answer (a stream's last
        byte); ``status`` is 499 for a client that left before its answer.
        """
        ...

    def run_started(self, *, agent: str, stream: bool) -> None:
        """An agent run began; a streamed one also opened a stream."""
        ...

    def first_token(self, *, agent: str, seconds: float) -> None:
        """A streamed run produced its first content or tool call ``seconds`` after it began."""
        ...

    def tokens_used(self, *, agent: str, prompt: int, completion: int, cached: int) -> None:
        """The final token usage of a run that reported one."""
        ...

    def run_finished(self, *, agent: str, stream: bool, outcome: RunOutcome) -> None:
        """An agent run begun with :meth:`run_started` ended (its stream closed, when streamed)."""
        ...

    def auth_failed(self) -> None:
        """A request was refused for a missing or wrong credential (401)."""
        ...

    def auth_locked_out(self) -> None:
        """A request was refused because its client is locked out after repeated failures (429)."""
        ...

    def idempotent_replay(self) -> None:
        """A stored answer was replayed for a repeated idempotency key."""
        ...


class NoMetrics:
    """A :class:`Metrics` that counts nothing: the default when the gateway gives none."""

    __slots__ = ()

    def request_finished(self, *, route: str, method: str, status: int, duration_s: float) -> None:
        """Ignored."""

    def run_started(self, *, agent: str, stream: bool) -> None:
        """Ignored."""

    def first_token(self, *, agent: str, seconds: float) -> None:
        """Ignored."""

    def tokens_used(self, *, agent: str, prompt: int, completion: int, cached: int) -> None:
        """Ignored."""

    def run_finished(self, *, agent: str, stream: bool, outcome: RunOutcome) -> None:
        """Ignored."""

    def auth_failed(self) -> None:
        """Ignored."""

    def auth_locked_out(self) -> None:
        """Ignored."""

    def idempotent_replay(self) -> None:
        """Ignored."""


#: The shared do-nothing :class:`Metrics`.
NO_METRICS: Final = NoMetrics()

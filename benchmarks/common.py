"""What every benchmark process shares: request and reply bodies, statistics, process facts.

It imports no more than the standard library: a server under test that imports it carries
nothing it would not (the RSS per idle stream of scenario 4 moves with what a process imported).
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

#: The bearer token every benchmark server accepts (and every client sends).
TOKEN: Final = "bench-token"
AUTH_HEADER: Final = f"Bearer {TOKEN}"

#: The reply as the mock upstream streams it: a few deltas, like a real provider.
REPLY_PIECES: Final = ("Hello!", " How can I", " help you", " today?")
#: The reply the instant runner (and the raw handler, and the mock upstream) gives.
REPLY: Final = "".join(REPLY_PIECES)
#: The usage every benchmark server reports for :data:`REPLY`.
USAGE: Final = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
#: The text of one streamed delta in the throughput scenario.
DELTA: Final = " tok"

#: Messages that select what a benchmark server does (they reach the runner as the flattened
#: user message, and the raw handler reads them from the body).
MSG_INSTANT: Final = "Say hello."
MSG_IDLE: Final = "bench:idle"
MSG_STREAM_PREFIX: Final = "bench:stream:"

CHAT_PATH: Final = "/v1/chat/completions"
RELEASE_PATH: Final = "/_bench/release"
STATS_PATH: Final = "/_bench/stats"

ROOT: Final = Path(__file__).resolve().parent.parent


def chat_body(message: str, *, stream: bool, model: str = "openclaw") -> bytes:
    """A small, typical Chat Completions request body."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": message},
        ],
    }
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


# --- the OpenAI wire shapes the benchmark servers send --------------------------------------

#: Headers a provider sends with a stream (proxies must not buffer it).
SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
}


def completion_body(
    completion_id: str, created: int, model: str, content: str, usage: Mapping[str, Any]
) -> dict[str, Any]:
    """A whole ``chat.completion`` with one assistant message that stopped."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": usage,
    }


def chunk_body(
    completion_id: str, created: int, model: str, delta: Mapping[str, Any], finish_reason: str | None = None
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` with one choice."""
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def usage_chunk_body(completion_id: str, created: int, model: str, usage: Mapping[str, Any]) -> dict[str, Any]:
    """The ``chat.completion.chunk`` with ``choices: []`` that carries ``usage`` (``include_usage``)."""
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
    }


def dumps(value: object) -> str:
    """Compact JSON, as providers send it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def data_frame(value: object, newline: str = "\n") -> bytes:
    """One SSE event whose data is ``value`` as compact JSON (a ``str``, such as ``[DONE]``, as is)."""
    data = value if isinstance(value, str) else dumps(value)
    return f"data: {data}{newline}{newline}".encode()


# --- statistics and processes ----------------------------------------------------------------


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (nearest rank) of already sorted values; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def percentile_ms(sorted_seconds: Sequence[float], pct: float) -> float:
    """:func:`percentile` of durations in seconds, in milliseconds; NaN when empty."""
    return percentile(sorted_seconds, pct) * 1000


def rss_bytes(pid: int) -> int | None:
    """Resident set size of process ``pid`` (Linux ``/proc``); ``None`` elsewhere."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def raise_nofile_limit(wanted: int = 16384) -> None:
    """Lift the soft open-file limit (1,000 open streams need 1,000+ sockets a side)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def child_env() -> dict[str, str]:
    """The environment for benchmark child processes.

    The repo root is importable, and no ``OPENCLAW_*`` variable of the caller's reaches a
    gateway's config. (Children flush the line announcing their port themselves.)
    """
    env = {name: value for name, value in os.environ.items() if not name.startswith("OPENCLAW_")}
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + path if path else "")
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def python() -> str:
    """The interpreter running the benchmark (children use the same one)."""
    return sys.executable

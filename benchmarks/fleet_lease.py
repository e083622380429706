"""Lease hand-over latency between two gateway processes on one PostgreSQL database.

::

    python -m benchmarks.fleet_lease [--rounds N] [--hold-ms MS] [--url postgresql://…]

Two worker processes each open the PostgreSQL session store (:class:`PostgresStore`, as a
gateway process does) and take turns on one session key: a worker holds the session for
``--hold-ms``, releases it, and waits as long again before asking for it anew, so that the
other worker, already waiting, gets it. The hand-over latency is the time from the moment the
holder leaves its turn (its release statement not yet sent) to the moment the waiter's
``take_turn`` returns in the other process: the release's ``UPDATE`` and ``NOTIFY``, the
notification reaching the waiter's listening connection, and the waiter's taking statement.
Each turn's fencing token pairs a release with the acquisition after it; ``CLOCK_MONOTONIC``
is one clock for every process on Linux. Target: p50 ≤ 2 ms on loopback.

Without ``--url`` (or ``BENCH_PG_URL``) a throwaway cluster is started with ``initdb`` and
``pg_ctl`` (as the ``postgres`` user under root), as the tests do, and removed afterwards.
``python -m benchmarks`` runs this as scenario 9, with fewer rounds under ``--quick``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any, Final

import attrs

from .common import ROOT, child_env, percentile_ms, python
from .pg import HOW_TO_GET_POSTGRES, find_pg_bin, throwaway_cluster

__all__ = ("HandOver", "measure", "main")

_KEY: Final = "bench:lease"
_START_TIMEOUT_S: Final = 60
#: The hand-over target, p50 on loopback.
TARGET_P50_MS: Final = 2.0


@attrs.frozen
class HandOver:
    """Release → acquire latencies between the two processes, in seconds (sorted)."""

    latencies: tuple[float, ...]

    @property
    def p50_ms(self) -> float:
        """The median, in milliseconds."""
        return percentile_ms(self.latencies, 50)

    @property
    def p99_ms(self) -> float:
        """The 99th percentile, in milliseconds."""
        return percentile_ms(self.latencies, 99)


async def _worker(url: str, rounds: int, hold_s: float) -> list[dict[str, Any]]:
    """Take turns on the key ``rounds`` times; each turn's token, acquired and released times."""
    from openclaw_http_compat.reference.pgstore import PostgresStore

    store = PostgresStore(url, pool_size=2)
    await store.open()
    turns: list[dict[str, Any]] = []
    try:
        for _ in range(rounds):
            async with store.take_turn(_KEY) as turn:
                acquired = time.monotonic()
                await asyncio.sleep(hold_s)
                token: int = turn.token  # type: ignore[attr-defined]
                released = time.monotonic()
            turns.append({"token": token, "acquired": acquired, "released": released})
            await asyncio.sleep(hold_s)  # the other worker, waiting, takes it now
    finally:
        await store.close()
    return turns


async def _prepare(url: str) -> None:
    from openclaw_http_compat.reference.pgstore import PostgresStore

    store = PostgresStore(url)
    await store.open()  # migrates once, before the workers race for it
    await store.close()


def measure(*, rounds: int, hold_ms: float, url: str | None = None) -> HandOver:
    """Run the two workers on ``url`` (else a throwaway cluster) and collect the hand-overs.

    Raises:
        RuntimeError: no database (no URL and no server binaries), or a worker failed.
    """
    url = url or os.environ.get("BENCH_PG_URL")
    if url is None:
        bin_dir = find_pg_bin()
        if bin_dir is None:
            raise RuntimeError(f"no PostgreSQL server binaries (initdb, pg_ctl): {HOW_TO_GET_POSTGRES}")
        with throwaway_cluster(bin_dir) as cluster:
            return measure(rounds=rounds, hold_ms=hold_ms, url=cluster.url("postgres"))
    asyncio.run(_prepare(url))
    command = [python(), "-m", "benchmarks.fleet_lease", "--worker", "--url", url, "--rounds", str(rounds),
               "--hold-ms", str(hold_ms)]
    workers = [subprocess.Popen(command, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    turns: dict[int, tuple[int, dict[str, Any]]] = {}
    try:
        for index, worker in enumerate(workers):
            out, err = worker.communicate(timeout=60 + rounds * hold_ms / 100)
            if worker.returncode != 0:
                raise RuntimeError(f"a lease worker failed: {err[-2000:]}")
            for turn in json.loads(out):
                turns[turn["token"]] = (index, turn)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    latencies = []
    for token, (holder, turn) in turns.items():
        previous = turns.get(token - 1)
        if previous is not None and previous[0] != holder:
            latencies.append(turn["acquired"] - previous[1]["released"])
    return HandOver(tuple(sorted(latencies)))


def main(argv: list[str] | None = None) -> int:
    """The command line; see the module docs."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet_lease", description=__doc__)
    parser.add_argument("--rounds", type=int, default=500, help="turns per worker (default 500)")
    parser.add_argument("--hold-ms", type=float, default=5.0, help="how long a turn is held (default 5)")
    parser.add_argument("--url", help="a PostgreSQL database (default: BENCH_PG_URL, else a throwaway cluster)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(asyncio.run(_worker(args.url, args.rounds, args.hold_ms / 1000))))
        return 0
    result = measure(rounds=args.rounds, hold_ms=args.hold_ms, url=args.url)
    verdict = "pass" if result.p50_ms <= TARGET_P50_MS else "FAIL"
    print(f"lease hand-over between two processes: {len(result.latencies)} hand-overs, "
          f"p50 {result.p50_ms:.3f} ms, p99 {result.p99_ms:.3f} ms (target p50 <= {TARGET_P50_MS:g} ms: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Driving ``wrk`` (when installed) for the request/response scenarios.

A Lua script sets the POST body and headers and, in ``done()``, prints one JSON line with the
request count, duration, exact p50/p99 latency and the error counts; :func:`run_wrk` parses it.
wrk runs for a fixed duration; ``max_requests`` is not enforced by wrk itself, so the duration
is the bound.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from typing import Any, Final

from .common import AUTH_HEADER, CHAT_PATH

_SCRIPT: Final = r"""
wrk.method = "POST"
wrk.body = __BODY__
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = __AUTH__

expect = __EXPECT__
user_prefix = __USER_PREFIX__
bad = 0
id = 0
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

-- With a user prefix, each thread (one connection each) is user <prefix><thread number>.
function init(args)
  if user_prefix ~= "" then
    local first, last = string.find(wrk.body, "__USER__", 1, true)
    wrk.body = string.sub(wrk.body, 1, first - 1) .. user_prefix .. tostring(id) .. string.sub(wrk.body, last + 1)
  end
end

function response(status, headers, body)
  if status ~= 200 or (expect ~= "" and not string.find(body, expect, 1, true)) then
    bad = bad + 1
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  local wrong = 0
  for _, thread in ipairs(threads) do
    wrong = wrong + thread:get("bad")
  end
  io.write(string.format(
    '\nWRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"bad":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout, wrong))
end
"""


def wrk_path() -> str | None:
    """The ``wrk`` executable, if installed."""
    return shutil.which("wrk")


def wrk_version() -> str | None:
    path = wrk_path()
    if path is None:
        return None
    proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False)
    first = (proc.stdout or proc.stderr).strip().splitlines()
    return first[0].split(" [")[0] if first else "wrk"


def _lua_string(text: str) -> str:
    # Lua long brackets avoid every escape question; pick a level the text does not contain.
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


def run_wrk(spec: dict[str, Any]) -> dict[str, Any]:
    """Run wrk for a ``reqresp`` spec (see ``benchmarks.client``); same result keys.

    Note: wrk's ``response()`` callback disables its pipelining shortcut but keeps exact
    latency; both servers of a comparison pay the same. With ``spec["user_prefix"]`` wrk runs
    one thread per connection, and thread ``i`` sends the body with ``__USER__`` replaced by
    ``<prefix><i>`` (as the asyncio client does per connection).
    """
    path = wrk_path()
    if path is None:
        raise RuntimeError("wrk is not installed")
    user_prefix: str | None = spec.get("user_prefix")
    if spec.get("users") is not None:
        raise ValueError("wrk cannot send a different user per request: use the asyncio client")
    script = (
        _SCRIPT.replace("__BODY__", _lua_string(spec["body"]))
        .replace("__AUTH__", _lua_string(AUTH_HEADER))
        .replace("__EXPECT__", _lua_string(spec.get("expect", "")))
        .replace("__USER_PREFIX__", _lua_string(user_prefix or ""))
    )
    fd, script_path = tempfile.mkstemp(prefix="bench-wrk-", suffix=".lua")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(script)
        url = f"http://127.0.0.1:{spec['port']}{spec.get('path', CHAT_PATH)}"
        conns = int(spec["conns"])
        # A user per connection: a thread per connection, each thread one user.
        threads = conns if user_prefix else 1 if conns < 8 else 2
        duration = max(1, round(float(spec["duration"])))
        if spec.get("warmup"):
            subprocess.run(
                [path, f"-t{threads}", f"-c{conns}", "-d1s", "-s", script_path, url],
                capture_output=True, text=True, timeout=60, check=False,
            )
        proc = subprocess.run(
            [path, f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--timeout", "30s", "-s", script_path, url],
            capture_output=True, text=True, timeout=duration + 60, check=False,
        )
    finally:
        os.unlink(script_path)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk produced no result (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout}")
    raw = json.loads(line[len("WRKJSON "):])
    seconds = raw["duration_us"] / 1e6
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"] + raw["bad"]
    return {
        "requests": raw["requests"],
        "errors": errors,
        "seconds": seconds,
        "rps": raw["requests"] / seconds if seconds > 0 else 0.0,
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
    }

"""The gateway's access log: one line per request, exact fields, text or JSON, nothing secret.

Two tests read the real stderr of a real ``gateway`` process (``gateway.logging.format``
``text`` and ``json``); the others serve the gateway app in-process with the same access
logger class and read the ``aiohttp.access`` records pytest captures, to see each outcome
and the client IP behind a trusted proxy.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import pathlib
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import aiohttp
import attrs
import pytest
from aiohttp import web

from openclaw_http_compat.reference.accesslog import ACCESS_FIELDS, access_logger_class
from openclaw_http_compat.reference.app import build_gateway_app
from openclaw_http_compat.reference.config import GatewayConfig

from .mock_upstream import ErrorReply, MockUpstream, StreamReply
from .test_faults import TOKEN, make_config
from .test_shutdown import LISTENING, gateway_env, write_gateway_config

USAGE: Final = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9, "prompt_tokens_details": {"cached_tokens": 3}}
#: What the request says: none of it may reach the log.
MESSAGE: Final = "my very private question"
USER: Final = "alice@example.com"
SESSION_HASH: Final = hashlib.sha256(f"agent:main:openai-user:{USER}".encode()).hexdigest()[:12]
#: Fields whose values are timings (checked for shape, not value).
TIMINGS: Final = ("duration_ms", "ttfb_ms")


def chat(stream: bool) -> dict[str, Any]:
    return {"model": "openclaw", "user": USER, "stream": stream, "messages": [{"role": "user", "content": MESSAGE}]}


def completed_fields(request_id: str, *, route: str = "/v1/chat/completions") -> dict[str, Any]:
    """The exact fields (timings aside) of the completed chat request the tests send."""
    return {
        "request_id": request_id,
        "method": "POST",
        "route": route,
        "status": 200,
        "client_ip": "127.0.0.1",
        "agent": "main",
        "session": SESSION_HASH,
        "outcome": "completed",
        "prompt_tokens": 7,  # as the response's usage says (3 of them cache reads)
        "completion_tokens": 2,
        "cached_tokens": 3,
    }


def without_timings(fields: dict[str, Any]) -> dict[str, Any]:
    for key in TIMINGS:
        value = fields[key]
        assert isinstance(value, float) and value >= 0, (key, value)
    return {k: v for k, v in fields.items() if k not in TIMINGS}


@asynccontextmanager
async def gateway_process(config: pathlib.Path, state: pathlib.Path) -> AsyncIterator[tuple[int, asyncio.subprocess.Process]]:
    """``gateway --port 0`` with stderr piped; yields its port and the process; SIGTERMed (then killed) on exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "openclaw_http_compat", "gateway", "--config", str(config), "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=gateway_env(state),
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = await proc.stdout.readline()
        match = LISTENING.search(line)
        assert match is not None, line
        yield int(match.group(1)), proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def exercise(port: int) -> dict[str, str]:
    """A streamed completion, a JSON one, /health and a refused /v1/models; their request ids by name."""
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    ids: dict[str, str] = {}
    async with aiohttp.ClientSession() as session:
        for name, stream in (("stream", True), ("json", False)):
            async with session.post(f"{base}/v1/chat/completions", json=chat(stream), headers=auth) as resp:
                assert resp.status == 200
                await resp.read()
                ids[name] = resp.headers["x-request-id"]
        async with session.get(f"{base}/health?token={TOKEN}") as resp:
            ids["health"] = resp.headers["x-request-id"]
        async with session.get(f"{base}/v1/models", headers={"Authorization": "Bearer wrong-secret"}) as resp:
            assert resp.status == 401
            ids["refused"] = resp.headers["x-request-id"]
    return ids


async def run_and_stop(tmp_path: pathlib.Path, upstream: MockUpstream, log_format: str) -> tuple[dict[str, str], str]:
    upstream.default = StreamReply(deltas=("Hel", "lo"), usage=USAGE)
    config = write_gateway_config(
        tmp_path / "openclaw.json", tmp_path / "state", upstream.url, gateway={"logging": {"format": log_format}}
    )
    async with gateway_process(config, tmp_path / "state") as (port, proc):
        ids = await exercise(port)
        proc.terminate()
        async with asyncio.timeout(10):
            _, stderr = await proc.communicate()
    assert proc.returncode == 0
    log = stderr.decode()
    for secret in (TOKEN, "wrong-secret", MESSAGE, USER, "Hello"):
        assert secret not in log
    return ids, log


async def test_json_access_log_of_a_real_process(mock_upstream: MockUpstream, tmp_path: pathlib.Path) -> None:
    """gateway.logging.format "json": every stderr line is one JSON object; each request has one access line with exact fields."""
    ids, log = await run_and_stop(tmp_path, mock_upstream, "json")
    lines = [json.loads(line) for line in log.splitlines()]
    access = [line for line in lines if line["logger"] == "aiohttp.access"]
    assert len(access) == 4
    by_id = {line["request_id"]: line for line in access}
    for line in access:
        assert list(line) == ["time", "level", "logger", "pid", *ACCESS_FIELDS]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
        assert line["level"] == "info"
    meta = ("time", "level", "logger", "pid")
    fields = {name: without_timings({k: v for k, v in by_id[rid].items() if k not in meta}) for name, rid in ids.items()}
    assert fields["stream"] == completed_fields(ids["stream"])
    assert fields["json"] == completed_fields(ids["json"])
    no_run = {"client_ip": "127.0.0.1", "agent": None, "session": None, "outcome": None,
              "prompt_tokens": None, "completion_tokens": None, "cached_tokens": None}
    assert fields["health"] == {"request_id": ids["health"], "method": "GET", "route": "/health", "status": 200, **no_run}
    assert fields["refused"] == {
        "request_id": ids["refused"], "method": "GET", "route": "/v1/models", "status": 401, **no_run
    }
    others = [line for line in lines if line["logger"] != "aiohttp.access"]
    assert others and all(list(line) == ["time", "level", "logger", "pid", "message"] for line in others)


async def test_text_access_log_of_a_real_process(mock_upstream: MockUpstream, tmp_path: pathlib.Path) -> None:
    """gateway.logging.format "text" (the default): one key=value line per request, "-" for no value."""
    ids, log = await run_and_stop(tmp_path, mock_upstream, "text")
    access = [line for line in log.splitlines() if " INFO aiohttp.access: " in line]
    assert len(access) == 4
    timing = r"\d+\.\d"
    prefix = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO aiohttp\.access: "
    expected = {
        "stream": completed_fields(ids["stream"]),
        "health": {"request_id": ids["health"], "method": "GET", "route": "/health", "status": 200,
                   "client_ip": "127.0.0.1"},
    }
    for name, fields in expected.items():
        line = next(line for line in access if f"request_id={ids[name]} " in line)
        pattern = prefix + " ".join(
            f"{key}={timing}" if key in TIMINGS else f"{key}={re.escape(str(fields.get(key, '-')))}"
            for key in ACCESS_FIELDS
        )
        assert re.fullmatch(pattern, line), (pattern, line)


@asynccontextmanager
async def in_process(config: GatewayConfig) -> AsyncIterator[str]:
    """The gateway app served with the access logger class (text), as run_gateway serves it; yields its base URL."""
    runner = web.AppRunner(build_gateway_app(config), access_log_class=access_logger_class(config.plugin, "text"))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def access_records(caplog: pytest.LogCaptureFixture) -> dict[str, dict[str, Any]]:
    """The captured access records' fields, by request id (the mock upstream's own lines have none)."""
    fields = (getattr(r, "access", None) for r in caplog.records if r.name == "aiohttp.access")
    return {f["request_id"]: f for f in fields if isinstance(f, dict)}


async def test_client_ip_comes_through_trusted_proxies(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Behind a trusted proxy (127.0.0.1), client_ip is the X-Forwarded-For hop; without trust, the peer."""
    caplog.set_level(logging.INFO, "aiohttp.access")
    base_config = make_config(tmp_path / "state", mock_upstream.url)
    trusted = attrs.evolve(base_config, plugin=attrs.evolve(base_config.plugin, trusted_proxies=("127.0.0.1",)))
    seen = []
    for config in (trusted, base_config):
        async with in_process(config) as base, aiohttp.ClientSession() as session:
            async with session.get(f"{base}/health", headers={"X-Forwarded-For": "203.0.113.7"}) as resp:
                seen.append(resp.headers["x-request-id"])
    records = access_records(caplog)
    assert [records[rid]["client_ip"] for rid in seen] == ["203.0.113.7", "127.0.0.1"]


@pytest.mark.parametrize(
    ("reply", "stream", "status", "outcome"),
    [
        (ErrorReply(status=500, body={"error": {"message": "boom"}}), False, 502, "error"),
        (StreamReply(deltas=("x",), error={"message": "boom", "type": "server_error"}), True, 200, "error"),
    ],
    ids=["json-error", "stream-error"],
)
async def test_failed_run_is_logged_as_error(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture,
    reply: Any, stream: bool, status: int, outcome: str,
) -> None:
    """A run the upstream fails is outcome "error", with the status the client got and no token counts."""
    caplog.set_level(logging.INFO, "aiohttp.access")
    mock_upstream.default = reply
    async with in_process(make_config(tmp_path / "state", mock_upstream.url)) as base, aiohttp.ClientSession() as session:
        async with session.post(
            f"{base}/v1/chat/completions", json=chat(stream), headers={"Authorization": f"Bearer {TOKEN}"}
        ) as resp:
            await resp.read()
            request_id = resp.headers["x-request-id"]
    fields = without_timings(access_records(caplog)[request_id])
    assert fields == {
        **completed_fields(request_id), "status": status, "outcome": outcome,
        "prompt_tokens": None, "completion_tokens": None, "cached_tokens": None,
    }


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    "headers", [{"x-stainless-retry-count": "0"}, {"Idempotency-Key": "order-7"}], ids=["sdk-attempt", "idempotency-key"]
)
async def test_a_run_in_a_task_of_its_own_is_logged_like_any_other(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture,
    stream: bool, headers: dict[str, str],
) -> None:
    """What the openai SDK sends (``x-stainless-retry-count``) and an ``Idempotency-Key`` run the
    agent in a task of its own (so a retry can attach): the access line is the same, completed
    with its token counts."""
    caplog.set_level(logging.INFO, "aiohttp.access")
    mock_upstream.default = StreamReply(deltas=("Hel", "lo"), usage=USAGE)
    async with in_process(make_config(tmp_path / "state", mock_upstream.url)) as base, aiohttp.ClientSession() as session:
        async with session.post(
            f"{base}/v1/chat/completions", json=chat(stream), headers={"Authorization": f"Bearer {TOKEN}", **headers}
        ) as resp:
            assert resp.status == 200
            await resp.read()
            request_id = resp.headers["x-request-id"]
    assert without_timings(access_records(caplog)[request_id]) == completed_fields(request_id)


async def test_client_that_leaves_is_logged_as_client_gone(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that closes its stream mid-run: status 499 (nginx's "client closed request"), outcome
    "client_gone", the stream's request id, time to first byte that of the stream's head."""
    caplog.set_level(logging.INFO, "aiohttp.access")
    mock_upstream.default = StreamReply(deltas=("partial",), stall=True)
    async with in_process(make_config(tmp_path / "state", mock_upstream.url)) as base:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{base}/v1/chat/completions", json=chat(True), headers={"Authorization": f"Bearer {TOKEN}"}
            ) as resp:
                request_id = resp.headers["x-request-id"]
                await resp.content.readuntil(b"\n\n")
                await resp.content.readuntil(b"\n\n")  # "partial": the run is under way
        async with asyncio.timeout(5):
            while request_id not in access_records(caplog):
                await asyncio.sleep(0.02)
    fields = access_records(caplog)[request_id]
    assert (fields["status"], fields["outcome"], fields["agent"]) == (499, "client_gone", "main")
    assert fields["ttfb_ms"] < fields["duration_ms"]


async def test_run_ended_by_shutdown_is_logged_as_aborted(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream still running when the gateway shuts down (no drain): status 200, outcome "aborted"."""
    caplog.set_level(logging.INFO, "aiohttp.access")
    mock_upstream.default = StreamReply(deltas=("partial",), stall=True)
    async with aiohttp.ClientSession() as session:
        async with in_process(make_config(tmp_path / "state", mock_upstream.url)) as base:
            resp = await session.post(
                f"{base}/v1/chat/completions", json=chat(True), headers={"Authorization": f"Bearer {TOKEN}"}
            )
            request_id = resp.headers["x-request-id"]
            await resp.content.readuntil(b"\n\n")
            await resp.content.readuntil(b"\n\n")  # "partial": the run is under way
        text = (await resp.read()).decode()
        resp.release()
    assert text.endswith("data: [DONE]\n\n")
    fields = access_records(caplog)[request_id]
    assert (fields["status"], fields["outcome"], fields["agent"], fields["prompt_tokens"]) == (200, "aborted", "main", None)


@pytest.mark.parametrize(
    ("logging_section", "message"),
    [
        ({"format": "xml"}, "gateway.logging.format: expected one of 'text', 'json', got 'xml'"),
        ({"format": True}, "gateway.logging.format: expected one of 'text', 'json', got a boolean"),
    ],
)
def test_bad_log_format_is_refused(logging_section: dict[str, Any], message: str) -> None:
    """gateway.logging.format is "text" or "json"; anything else stops start-up naming the key."""
    from openclaw_http_compat import ConfigError

    with pytest.raises(ConfigError) as error:
        GatewayConfig.from_mapping({"gateway": {"auth": {"mode": "none"}, "logging": logging_section}}, env={})
    assert str(error.value) == message

"""The command line: ``agent`` in-process runs and ``gateway`` serving the seed's curl requests."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from openclaw_http_compat.__main__ import main

EXAMPLE_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "examples" / "openclaw.json5"

# The seed's two examples, verbatim; only "127.0.0.1:18789" is replaced by the test's address.
SEED_NON_STREAMING = """curl -sS http://127.0.0.1:18789/v1/chat/completions \\
  -H 'Authorization: Bearer YOUR_TOKEN' \\
  -H 'Content-Type: application/json' \\
  -H 'x-openclaw-agent-id: main' \\
  -d '{
    "model": "openclaw",
    "messages": [{"role":"user","content":"hi"}]
  }'"""

SEED_STREAMING = """curl -N http://127.0.0.1:18789/v1/chat/completions \\
  -H 'Authorization: Bearer YOUR_TOKEN' \\
  -H 'Content-Type: application/json' \\
  -H 'x-openclaw-agent-id: main' \\
  -d '{
    "model": "openclaw",
    "stream": true,
    "messages": [{"role":"user","content":"hi"}]
  }'"""


def clean_env(state_dir: pathlib.Path) -> dict[str, str]:
    """The test's environment without OPENCLAW_* settings, with the state in ``state_dir``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCLAW_")}
    env["OPENCLAW_STATE_DIR"] = str(state_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_config(path: pathlib.Path, state_dir: pathlib.Path, **agent: Any) -> pathlib.Path:
    config = {
        "gateway": {"auth": {"mode": "token", "token": "t"}, "stateDir": str(state_dir)},
        "agents": {"list": [{"id": "main", "default": True, **agent}, {"id": "beta"}]},
    }
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openclaw_http_compat", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_agent_json(tmp_path: pathlib.Path) -> None:
    """`agent --json` runs the echo agent in a subprocess and prints runId, agentId, sessionKey, text, usage."""
    state = tmp_path / "state"
    config = write_config(tmp_path / "openclaw.json", state)
    result = run_cli("agent", "--config", str(config), "--message", "hello there", "--json", env=clean_env(state))
    assert (result.returncode, result.stderr) == (0, "")
    out = json.loads(result.stdout)
    assert set(out) == {"runId", "agentId", "sessionKey", "text", "usage"}
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", out["runId"])
    assert (out["agentId"], out["sessionKey"], out["text"]) == ("main", "agent:main:main", "echo: hello there")
    assert set(out["usage"]) == {"input", "output", "cacheRead", "cacheWrite", "total"}
    assert (state / "sessions.sqlite").is_file()


def test_agent_text_and_options(tmp_path: pathlib.Path) -> None:
    """Without --json the reply text is printed; --agent and --session-key pick the run's target."""
    state = tmp_path / "state"
    config = write_config(tmp_path / "openclaw.json", state)
    env = clean_env(state)
    result = run_cli("agent", "--config", str(config), "--message", "hi", "--agent", "BETA", env=env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "echo: hi\n", "")
    result = run_cli(
        "agent", "--config", str(config), "-m", "yo", "--agent", "beta", "--session-key", "ops", "--json", env=env
    )
    assert result.returncode == 0
    assert {k: v for k, v in json.loads(result.stdout).items() if k in ("agentId", "sessionKey")} == {
        "agentId": "beta",
        "sessionKey": "ops",
    }


def test_agent_in_process(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """main(argv) runs the agent command in-process and returns the exit code."""
    state = tmp_path / "state"
    config = write_config(tmp_path / "openclaw.json", state)
    assert main(["agent", "--config", str(config), "--message", "inline"]) == 0
    assert capsys.readouterr().out == "echo: inline\n"


NO_AUTH: dict[str, Any] = {"auth": {"mode": "none"}}


@pytest.mark.parametrize(
    ("command", "raw", "key"),
    [
        ("agent", {"gateway": {**NO_AUTH, "port": "x"}}, "gateway.port"),
        ("agent", {"gateway": {"auth": {"mode": "token"}}}, "gateway.auth.token"),
        (
            "agent",
            {"gateway": {**NO_AUTH, "http": {"endpoints": {"chatCompletions": {"enabled": "yes"}}}}},
            "gateway.http.endpoints.chatCompletions.enabled",
        ),
        ("agent", {"gateway": NO_AUTH, "agents": {"list": [{"id": "main", "model": 5}]}}, "agents.list[0].model"),
        ("gateway", {"gateway": {**NO_AUTH, "bind": "moon"}}, "gateway.bind"),
    ],
    ids=("agent-port", "agent-token", "agent-enabled", "agent-model", "gateway-bind"),
)
def test_config_error_exits_2(tmp_path: pathlib.Path, command: str, raw: dict[str, Any], key: str) -> None:
    """A bad config value exits 2 with one `error: <dotted key>: ...` line on stderr."""
    config = tmp_path / "bad.json5"
    config.write_text(json.dumps(raw), encoding="utf-8")
    args = ["--message", "hi"] if command == "agent" else ["--port", "0"]
    result = run_cli(command, "--config", str(config), *args, env=clean_env(tmp_path / "state"))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(f"error: {key}: ")
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n")


def test_gateway_bad_port_exits_2(tmp_path: pathlib.Path) -> None:
    """A --port outside 0..65535 exits 2 before anything is bound."""
    result = run_cli("gateway", "--config", str(EXAMPLE_CONFIG), "--port", "70000", env=clean_env(tmp_path))
    assert (result.returncode, result.stdout, result.stderr) == (2, "", "error: --port: must be between 0 and 65535, got 70000\n")


def test_missing_config_file_exits_2(tmp_path: pathlib.Path) -> None:
    """An unreadable config file exits 2."""
    missing = tmp_path / "missing.json5"
    result = run_cli("agent", "--config", str(missing), "--message", "hi", env=clean_env(tmp_path))
    assert result.returncode == 2
    assert result.stderr == f"error: cannot read config file {str(missing)!r}: No such file or directory\n"


def test_unknown_agent_exits_2(tmp_path: pathlib.Path) -> None:
    """An --agent that is not configured exits 2 naming the configured agents."""
    state = tmp_path / "state"
    config = write_config(tmp_path / "openclaw.json", state)
    result = run_cli("agent", "--config", str(config), "--message", "hi", "--agent", "ghost", env=clean_env(state))
    assert (result.returncode, result.stderr) == (2, "error: unknown agent 'ghost' (configured: main, beta)\n")


def test_failed_run_exits_1(tmp_path: pathlib.Path) -> None:
    """A run that fails (here: an unknown provider) prints the error and exits 1."""
    state = tmp_path / "state"
    config = write_config(tmp_path / "openclaw.json", state, model="nowhere/model")
    result = run_cli("agent", "--config", str(config), "--message", "hi", "--json", env=clean_env(state))
    assert (result.returncode, result.stdout, result.stderr) == (1, "", "error: Unknown provider 'nowhere'\n")


def test_usage_error_exits_2(tmp_path: pathlib.Path) -> None:
    """A missing required option is a usage error (exit 2)."""
    result = run_cli("agent", "--message", "hi", env=clean_env(tmp_path))
    assert result.returncode == 2
    assert "--config" in result.stderr


@pytest.fixture
def gateway(tmp_path: pathlib.Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`gateway --config examples/openclaw.json5 --port 0` in a subprocess; yields it and its port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "openclaw_http_compat", "gateway", "--config", str(EXAMPLE_CONFIG), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=clean_env(tmp_path / "state"),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.fullmatch(
            r"openclaw gateway listening on http://127\.0\.0\.1:(\d+) "
            r"\(WebSocket on /, /v1/chat/completions enabled\)\n",
            line,
        )
        assert match, f"unexpected first line {line!r}"
        yield proc, int(match.group(1))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def wait_for_health(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, "the gateway exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                assert (resp.status, json.loads(resp.read())) == (200, {"ok": True})
                return
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed; the seed's examples need it")
def test_gateway_serves_the_seed_curl_examples(gateway: tuple[subprocess.Popen[str], int]) -> None:
    """The gateway command with the example config answers the seed's two curl commands, then exits on SIGTERM."""
    proc, port = gateway
    wait_for_health(port, proc)
    address = f"127.0.0.1:{port}"

    def curl(command: str) -> str:
        script = command.replace("127.0.0.1:18789", address)
        result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, check=False)
        # The streaming example has no -sS: curl's progress meter goes to stderr.
        assert result.returncode == 0, result.stderr
        return result.stdout

    body = json.loads(curl(SEED_NON_STREAMING))
    assert body["object"] == "chat.completion"
    assert body["model"] == "openclaw"
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "echo: hi"}, "finish_reason": "stop"}
    ]

    frames = [f for f in curl(SEED_STREAMING).split("\n\n") if f]
    assert frames[-1] == "data: [DONE]"
    chunks = [json.loads(f.removeprefix("data: ")) for f in frames[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "echo: hi"

    proc.terminate()
    assert proc.wait(timeout=15) == 0


def test_gateway_port_in_use_exits_1(tmp_path: pathlib.Path) -> None:
    """When the port is taken the gateway command says so and exits 1."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_cli("gateway", "--config", str(EXAMPLE_CONFIG), "--port", str(port), env=clean_env(tmp_path))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith("error: cannot listen: ")


WORKERS_REFUSED = (
    "error: --workers 2: the SQLite session store serves one process; set "
    "gateway.sessionStore.url to a PostgreSQL database to run several workers\n"
)


def test_gateway_workers_refused_on_sqlite(tmp_path: pathlib.Path) -> None:
    """--workers above 1 on the SQLite store is refused before anything starts, with one line
    pointing at sessionStore.url: SQLite runs take turns through in-process locks, which
    several processes would not share. (With PostgreSQL it runs: see test_fleet.py.)"""
    result = run_cli(
        "gateway", "--config", str(EXAMPLE_CONFIG), "--port", "0", "--workers", "2", env=clean_env(tmp_path)
    )
    assert (result.returncode, result.stdout, result.stderr) == (2, "", WORKERS_REFUSED)


@pytest.mark.parametrize("workers", ["0", "-1"])
def test_gateway_workers_below_1_exits_2(tmp_path: pathlib.Path, workers: str) -> None:
    """--workers must be at least 1."""
    result = run_cli("gateway", "--config", str(EXAMPLE_CONFIG), "--workers", workers, env=clean_env(tmp_path))
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"error: --workers: must be at least 1, got {workers}\n")


def test_gateway_workers_port_in_use_exits_1(tmp_path: pathlib.Path) -> None:
    """The supervisor reserves the port first: when another program holds it, it says so and exits 1."""
    env = clean_env(tmp_path) | {"OPENCLAW_STATELESS_WORKERS": "1"}
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_cli("gateway", "--config", str(EXAMPLE_CONFIG), "--port", str(port), "--workers", "2", env=env)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "error: cannot listen: Address already in use\n"


def test_gateway_with_an_unreachable_postgresql_store_exits_1(tmp_path: pathlib.Path) -> None:
    """A PostgreSQL session store that cannot be reached at start-up stops the gateway with one
    line naming the store (not a traceback, not "cannot listen"), and never the URL's password."""
    pytest.importorskip("asyncpg", reason="the PostgreSQL store needs asyncpg: pip install '.[postgres]'")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        closed = taken.getsockname()[1]
    raw = EXAMPLE_CONFIG.read_text(encoding="utf-8").replace(
        "    port: 18789,", f'    port: 18789,\n    sessionStore: {{ url: "postgresql://gw:hunter2@127.0.0.1:{closed}/db" }},', 1
    )
    config = tmp_path / "openclaw.json5"
    config.write_text(raw, encoding="utf-8")
    result = run_cli("gateway", "--config", str(config), "--port", "0", env=clean_env(tmp_path))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith("error: cannot open the PostgreSQL session store: ")
    assert result.stderr.count("\n") == 1 and "hunter2" not in result.stderr

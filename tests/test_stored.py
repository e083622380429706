"""Stored completions on the plugin: ``store: true`` and the five routes, over a real app.

The stand-in gateway authenticates two principals (``alice`` and ``bob``, one token each) so
that scoping is tested with two credentials; the host hands over an in-memory store the
tests can also reach directly (for records older than retention).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from openclaw_http_compat import (
    AuthenticationError,
    CompletionQuery,
    CompletionPage,
    CompletionStoreUnavailable,
    Host,
    InMemoryCompletionStore,
    Principal,
    RunEnd,
    RunUsage,
    StoredCompletion,
    TextDelta,
    ToolCall,
    auth_middleware,
    setup,
)
from openclaw_http_compat.stored_routes import RetentionPurger, StoredCompletions

from .conftest import (
    COMPLETIONS,
    DONE,
    GatewayClient,
    ScriptedRunner,
    chat_body,
    error_body,
    events_script,
    make_config,
)

ALICE: Final = {"Authorization": "Bearer alice-token"}
BOB: Final = {"Authorization": "Bearer bob-token"}
DAY: Final = 86_400


class TwoUsers:
    """An Authenticator with two credentials, each its own principal."""

    async def authenticate(self, credential: str | None, *, client_ip: str | None) -> Principal:
        subjects = {"alice-token": "alice", "bob-token": "bob"}
        if credential not in subjects:
            raise AuthenticationError()
        return Principal(subject=subjects[credential])


async def build(
    aiohttp_client: AiohttpClient,
    runner: ScriptedRunner,
    store: Any = None,
    endpoint: Mapping[str, Any] | None = None,
) -> GatewayClient:
    config = make_config(endpoint=endpoint)
    authenticator = TwoUsers()
    app = web.Application(middlewares=[auth_middleware(authenticator)])
    setup(app, config, Host(runner=runner, authenticator=authenticator, roster=config.agents, completions=store))
    return await aiohttp_client(app)


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, runner: ScriptedRunner) -> GatewayClient:
    return await build(aiohttp_client, runner)


async def create(client: GatewayClient, headers: Mapping[str, str] = ALICE, **fields: Any) -> dict[str, Any]:
    resp = await client.post(COMPLETIONS, json=chat_body(store=True, **fields), headers=headers)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert isinstance(body, dict)
    return body


def not_found(completion_id: str) -> dict[str, Any]:
    return error_body(f"No stored chat completion found with id '{completion_id}'.", code="not_found")


async def test_store_true_keeps_the_completion_as_answered(client: GatewayClient) -> None:
    """A completion created with store true is retrieved exactly as answered, plus its metadata."""
    body = await create(client, metadata={"team": "a", "run": "1"})
    resp = await client.get(f"{COMPLETIONS}/{body['id']}", headers=ALICE)
    assert resp.status == 200
    assert await resp.json() == {**body, "metadata": {"team": "a", "run": "1"}}
    assert "metadata" not in body


@pytest.mark.parametrize("fields", [{}, {"store": False}, {"store": None}], ids=("absent", "false", "null"))
async def test_without_store_nothing_is_kept(client: GatewayClient, fields: dict[str, Any]) -> None:
    """store absent, false or null: the completion is answered as before and nothing is kept."""
    resp = await client.post(COMPLETIONS, json=chat_body(**fields), headers=ALICE)
    completion_id = (await resp.json())["id"]
    resp = await client.get(f"{COMPLETIONS}/{completion_id}", headers=ALICE)
    assert (resp.status, await resp.json()) == (404, not_found(completion_id))
    listing = await client.get(COMPLETIONS, headers=ALICE)
    assert await listing.json() == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


async def test_metadata_is_ignored_without_store(client: GatewayClient) -> None:
    """Without store, metadata stays ignored as OpenClaw ignores it: even a malformed one is no 400."""
    resp = await client.post(COMPLETIONS, json=chat_body(metadata={"k": 1}), headers=ALICE)
    assert resp.status == 200


async def test_a_stream_with_store_keeps_the_assembled_completion(
    aiohttp_client: AiohttpClient, runner: ScriptedRunner
) -> None:
    """A streamed completion is stored as the JSON answer would have been: text joined, tool
    calls whole, usage and finish reason; it is retrievable once [DONE] arrived."""
    runner.script = events_script(
        TextDelta("Hel"), TextDelta("lo"), ToolCall(id="call_1", name="f", arguments='{"a":1}'),
        RunUsage(input=3, output=2), RunEnd("stop"),
    )
    client = await build(aiohttp_client, runner)
    body = chat_body(store=True, stream=True, tools=[{"type": "function", "function": {"name": "f"}}])
    resp = await client.post(COMPLETIONS, json=body, headers=ALICE)
    text = await resp.text()
    assert text.endswith(DONE)
    completion_id = resp.headers["x-request-id"]
    stored = await (await client.get(f"{COMPLETIONS}/{completion_id}", headers=ALICE)).json()
    assert stored == {
        "id": completion_id,
        "object": "chat.completion",
        "created": stored["created"],
        "model": "openclaw",
        "choices": [{"index": 0, "message": {
            "role": "assistant", "content": "Hello",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}],
        }, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        "metadata": {},
    }
    assert f'"created":{stored["created"]}' in text


async def test_a_failed_run_is_not_stored(aiohttp_client: AiohttpClient, runner: ScriptedRunner) -> None:
    """A run that fails mid-stream (an in-band error) leaves nothing stored."""
    from openclaw_http_compat import RunError

    runner.script = events_script(TextDelta("x"), RunError(message="boom", reason="server_error"))
    client = await build(aiohttp_client, runner)
    resp = await client.post(COMPLETIONS, json=chat_body(store=True, stream=True), headers=ALICE)
    assert (await resp.text()).endswith(DONE)
    listing = await (await client.get(COMPLETIONS, headers=ALICE)).json()
    assert listing["data"] == []


@pytest.mark.parametrize(
    ("fields", "message", "param"),
    [
        ({"metadata": {f"k{i}": "v" for i in range(17)}},
         "Invalid 'metadata': at most 16 key-value pairs, got 17.", "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "Invalid 'metadata': keys are at most 64 characters.", "metadata"),
        ({"metadata": {"k": "v" * 513}}, "Invalid 'metadata': values are at most 512 characters.", "metadata"),
        ({"metadata": {"k": 5}}, "Invalid 'metadata': the value of 'k' must be a string.", "metadata"),
        ({"metadata": ["k"]}, "Invalid 'metadata': expected an object of string values.", "metadata"),
        ({"store": "yes"}, "store: expected a boolean", "store"),
    ],
    ids=("17 pairs", "long key", "long value", "number value", "array", "store not a boolean"),
)
async def test_bad_store_or_metadata_is_a_named_400_before_the_run(
    client: GatewayClient, runner: ScriptedRunner, fields: dict[str, Any], message: str, param: str
) -> None:
    """Metadata past OpenAI's limits (with store true), or a store that is not a boolean, is a
    400 naming the field, and the agent does not run."""
    body = chat_body(**{"store": True, **fields})
    resp = await client.post(COMPLETIONS, json=body, headers=ALICE)
    assert (resp.status, await resp.json()) == (400, error_body(message, param=param))
    assert runner.requests == []


async def test_metadata_at_the_limits_is_accepted(client: GatewayClient) -> None:
    """16 pairs, 64-character keys and 512-character values are within the limits."""
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    body = await create(client, metadata=metadata)
    stored = await (await client.get(f"{COMPLETIONS}/{body['id']}", headers=ALICE)).json()
    assert stored["metadata"] == metadata


async def test_list_pages_in_both_orders(client: GatewayClient) -> None:
    """The list pages by created (then storage order) with limit and after, asc by default;
    first_id, last_id and has_more describe each page."""
    ids = [(await create(client))["id"] for _ in range(5)]
    seen: list[str] = []
    after: str | None = None
    pages = []
    while True:
        params = {"limit": "2", **({"after": after} if after else {})}
        page = await (await client.get(COMPLETIONS, params=params, headers=ALICE)).json()
        pages.append(page)
        seen += [c["id"] for c in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == ids
    assert [(p["first_id"], p["last_id"], p["has_more"]) for p in pages] == [
        (ids[0], ids[1], True), (ids[2], ids[3], True), (ids[4], ids[4], False)
    ]
    desc = await (await client.get(COMPLETIONS, params={"order": "desc", "limit": "3"}, headers=ALICE)).json()
    assert [c["id"] for c in desc["data"]] == ids[::-1][:3] and desc["has_more"] is True
    rest = await (await client.get(
        COMPLETIONS, params={"order": "desc", "after": desc["last_id"]}, headers=ALICE)).json()
    assert [c["id"] for c in rest["data"]] == ids[1::-1] and rest["has_more"] is False
    every = await (await client.get(COMPLETIONS, headers=ALICE)).json()
    assert [c["id"] for c in every["data"]] == ids
    assert all(c["object"] == "chat.completion" and c["metadata"] == {} for c in every["data"])


async def test_list_default_limit_is_20(client: GatewayClient) -> None:
    """Without limit a page holds 20 completions."""
    for _ in range(21):
        await create(client)
    page = await (await client.get(COMPLETIONS, headers=ALICE)).json()
    assert (len(page["data"]), page["has_more"]) == (20, True)


async def test_list_filters_by_model_and_metadata(client: GatewayClient) -> None:
    """model and metadata[key]=value filters; every metadata pair given must match."""
    a = await create(client, model="openclaw", metadata={"team": "a", "env": "prod"})
    b = await create(client, model="openclaw/beta", metadata={"team": "a", "env": "dev"})
    c = await create(client, model="openclaw", metadata={"team": "b"})

    async def ids(params: dict[str, str]) -> list[str]:
        page = await (await client.get(COMPLETIONS, params=params, headers=ALICE)).json()
        return [item["id"] for item in page["data"]]

    assert await ids({"model": "openclaw"}) == [a["id"], c["id"]]
    assert await ids({"model": "openclaw/beta"}) == [b["id"]]
    assert await ids({"metadata[team]": "a"}) == [a["id"], b["id"]]
    assert await ids({"metadata[team]": "a", "metadata[env]": "dev"}) == [b["id"]]
    assert await ids({"metadata[team]": "a", "model": "openclaw"}) == [a["id"]]
    assert await ids({"metadata[team]": "c"}) == []
    assert await ids({"model": "gpt-4o"}) == []


@pytest.mark.parametrize(
    ("query", "message", "param"),
    [
        ("limit=0", "Invalid 'limit': expected an integer from 1 to 100.", "limit"),
        ("limit=101", "Invalid 'limit': expected an integer from 1 to 100.", "limit"),
        ("limit=ten", "Invalid 'limit': expected an integer from 1 to 100.", "limit"),
        ("limit=-1", "Invalid 'limit': expected an integer from 1 to 100.", "limit"),
        ("limit=1&limit=2", "Invalid 'limit': given more than once.", "limit"),
        ("order=newest", "Invalid 'order': expected 'asc' or 'desc'.", "order"),
        ("after=chatcmpl_nope", "Invalid 'after': no stored chat completion found with id 'chatcmpl_nope'.", "after"),
        (f"metadata[{'k' * 65}]=v", "Invalid 'metadata': keys are at most 64 characters.", "metadata"),
    ],
    ids=("limit 0", "limit 101", "limit word", "limit negative", "limit twice", "order", "unknown after", "long key"),
)
async def test_bad_list_parameters_are_named_400s(client: GatewayClient, query: str, message: str, param: str) -> None:
    """A bad query parameter of the list is a 400 naming it."""
    resp = await client.get(f"{COMPLETIONS}?{query}", headers=ALICE)
    assert (resp.status, await resp.json()) == (400, error_body(message, param=param))


async def test_messages_lists_the_request_messages(client: GatewayClient) -> None:
    """/messages lists the request's messages in OpenAI's stored shape, ids <completion>-<index>;
    after, limit and order page them."""
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "name": "ann", "content": [
            {"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "user", "content": "and?"},
    ]
    resp = await client.post(COMPLETIONS, json={"model": "openclaw", "store": True, "messages": messages}, headers=ALICE)
    cid = (await resp.json())["id"]
    expected = [
        {"id": f"{cid}-0", "role": "system", "content": "Be brief.", "name": None, "content_parts": None},
        {"id": f"{cid}-1", "role": "user", "content": "look", "name": "ann", "content_parts": [
            {"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]},
        {"id": f"{cid}-2", "role": "assistant", "content": None, "name": None, "content_parts": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"id": f"{cid}-3", "role": "tool", "content": "42", "name": None, "content_parts": None, "tool_call_id": "c1"},
        {"id": f"{cid}-4", "role": "user", "content": "and?", "name": None, "content_parts": None},
    ]
    url = f"{COMPLETIONS}/{cid}/messages"
    assert await (await client.get(url, headers=ALICE)).json() == {
        "object": "list", "data": expected, "first_id": f"{cid}-0", "last_id": f"{cid}-4", "has_more": False}
    page = await (await client.get(url, params={"limit": "2", "after": f"{cid}-1"}, headers=ALICE)).json()
    assert page == {"object": "list", "data": expected[2:4], "first_id": f"{cid}-2", "last_id": f"{cid}-3",
                    "has_more": True}
    desc = await (await client.get(url, params={"order": "desc", "limit": "2"}, headers=ALICE)).json()
    assert [m["id"] for m in desc["data"]] == [f"{cid}-4", f"{cid}-3"] and desc["has_more"] is True
    bad = await client.get(url, params={"after": "nope"}, headers=ALICE)
    assert (bad.status, await bad.json()) == (
        400, error_body("Invalid 'after': no message found with id 'nope'.", param="after"))
    bad = await client.get(url, params={"limit": "500"}, headers=ALICE)
    assert (await bad.json())["error"]["param"] == "limit"


async def test_update_replaces_only_the_metadata(client: GatewayClient) -> None:
    """POST {metadata} replaces the metadata and answers the updated completion; null clears it."""
    body = await create(client, metadata={"a": "1"})
    url = f"{COMPLETIONS}/{body['id']}"
    resp = await client.post(url, json={"metadata": {"b": "2"}, "model": "ignored"}, headers=ALICE)
    assert (resp.status, await resp.json()) == (200, {**body, "metadata": {"b": "2"}})
    assert (await (await client.get(url, headers=ALICE)).json())["metadata"] == {"b": "2"}
    resp = await client.post(url, json={"metadata": None}, headers=ALICE)
    assert (await resp.json())["metadata"] == {}


@pytest.mark.parametrize(
    ("payload", "message", "param"),
    [
        ({}, "Missing required parameter: 'metadata'.", "metadata"),
        ({"metadata": {"k": ["v"]}}, "Invalid 'metadata': the value of 'k' must be a string.", "metadata"),
        ({"metadata": {str(i): "v" for i in range(17)}},
         "Invalid 'metadata': at most 16 key-value pairs, got 17.", "metadata"),
        ([1], "Request body must be a JSON object.", None),
    ],
    ids=("missing", "list value", "17 pairs", "not an object"),
)
async def test_bad_update_is_a_named_400(
    client: GatewayClient, payload: object, message: str, param: str | None
) -> None:
    """An update without metadata, or with metadata past the limits, is a 400 naming it; nothing changes."""
    body = await create(client, metadata={"a": "1"})
    url = f"{COMPLETIONS}/{body['id']}"
    resp = await client.post(url, json=payload, headers=ALICE)
    assert (resp.status, await resp.json()) == (400, error_body(message, param=param))
    assert (await (await client.get(url, headers=ALICE)).json())["metadata"] == {"a": "1"}


async def test_delete_removes_it_everywhere(client: GatewayClient) -> None:
    """DELETE answers chat.completion.deleted; afterwards every route 404s on that id."""
    body = await create(client)
    url = f"{COMPLETIONS}/{body['id']}"
    resp = await client.delete(url, headers=ALICE)
    assert (resp.status, await resp.json()) == (
        200, {"object": "chat.completion.deleted", "id": body["id"], "deleted": True})
    attempts: list[tuple[str, str, object]] = [
        ("GET", url, None), ("DELETE", url, None), ("GET", f"{url}/messages", None), ("POST", url, {"metadata": {}})]
    for method, path, payload in attempts:
        resp = await client.request(method, path, json=payload, headers=ALICE)
        assert (resp.status, await resp.json()) == (404, not_found(body["id"]))
    assert (await (await client.get(COMPLETIONS, headers=ALICE)).json())["data"] == []


async def test_one_principal_never_sees_anothers(client: GatewayClient) -> None:
    """Bob neither lists, reads, pages, updates nor deletes Alice's completion (404, as for an
    unknown id), and Alice's stays as it was."""
    mine = await create(client, headers=ALICE, metadata={"owner": "alice"})
    theirs = await create(client, headers=BOB)
    url = f"{COMPLETIONS}/{mine['id']}"
    bob_list = await (await client.get(COMPLETIONS, headers=BOB)).json()
    assert [c["id"] for c in bob_list["data"]] == [theirs["id"]]
    assert (await (await client.get(COMPLETIONS, params={"metadata[owner]": "alice"}, headers=BOB)).json())["data"] == []
    for method, path, payload in [("GET", url, None), ("GET", f"{url}/messages", None),
                                  ("POST", url, {"metadata": {"owner": "bob"}}), ("DELETE", url, None)]:
        resp = await client.request(method, path, json=payload, headers=BOB)
        assert (resp.status, await resp.json()) == (404, not_found(mine["id"]))
    resp = await client.get(COMPLETIONS, params={"after": mine["id"]}, headers=BOB)
    assert resp.status == 400
    alice = await (await client.get(url, headers=ALICE)).json()
    assert alice == {**mine, "metadata": {"owner": "alice"}}
    alice_list = await (await client.get(COMPLETIONS, headers=ALICE)).json()
    assert [c["id"] for c in alice_list["data"]] == [mine["id"]]


async def test_unauthenticated_routes_are_401(client: GatewayClient) -> None:
    """Every stored-completions route needs a credential."""
    for method, path in [("GET", COMPLETIONS), ("GET", f"{COMPLETIONS}/x"), ("POST", f"{COMPLETIONS}/x"),
                         ("DELETE", f"{COMPLETIONS}/x"), ("GET", f"{COMPLETIONS}/x/messages")]:
        resp = await client.request(method, path)
        assert resp.status == 401


async def test_other_methods_are_405_with_allow(client: GatewayClient) -> None:
    """PUT on the collection or on one completion is 405 naming the methods each accepts."""
    resp = await client.put(COMPLETIONS, headers=ALICE)
    assert (resp.status, resp.headers["Allow"]) == (405, "GET,POST")
    resp = await client.put(f"{COMPLETIONS}/x", headers=ALICE)
    assert (resp.status, resp.headers["Allow"]) == (405, "DELETE,GET,POST")


def record(completion_id: str, created: int, owner: str = "alice") -> StoredCompletion:
    completion = {"id": completion_id, "object": "chat.completion", "created": created, "model": "openclaw",
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "old"},
                               "finish_reason": "stop"}], "usage": None}
    return StoredCompletion(id=completion_id, owner=owner, created=created, model="openclaw", completion=completion)


async def test_completions_past_retention_are_gone(aiohttp_client: AiohttpClient, runner: ScriptedRunner) -> None:
    """With retentionDays 2, a completion created 3 days ago is neither read nor listed (404),
    even before a purge removed it; one created a day ago is."""
    store = InMemoryCompletionStore()
    now = int(time.time())
    await store.save(record("chatcmpl_old", now - 3 * DAY), [])
    await store.save(record("chatcmpl_new", now - DAY), [])
    client = await build(aiohttp_client, runner, store, endpoint={"store": {"retentionDays": 2}})
    resp = await client.get(f"{COMPLETIONS}/chatcmpl_old", headers=ALICE)
    assert (resp.status, await resp.json()) == (404, not_found("chatcmpl_old"))
    assert (await client.get(f"{COMPLETIONS}/chatcmpl_old/messages", headers=ALICE)).status == 404
    assert (await client.delete(f"{COMPLETIONS}/chatcmpl_old", headers=ALICE)).status == 404
    page = await (await client.get(COMPLETIONS, headers=ALICE)).json()
    assert [c["id"] for c in page["data"]] == ["chatcmpl_new"]
    assert (await client.get(f"{COMPLETIONS}/chatcmpl_new", headers=ALICE)).status == 200


async def test_purge_removes_what_retention_expired() -> None:
    """The purger removes, for every owner, the records its clock says are past retention, and
    nothing else; a later clock purges more."""
    store = InMemoryCompletionStore()
    clock = [1_000_000_000.0]
    stored = StoredCompletions(store, 30, clock=lambda: clock[0])
    base = int(clock[0])
    await store.save(record("a", base - 31 * DAY), [])
    await store.save(record("b", base - 31 * DAY, owner="bob"), [])
    await store.save(record("c", base - 29 * DAY), [])
    purger = RetentionPurger(stored)
    assert await purger.run_once() == 2
    assert await store.get("alice", "c", not_before=0) is not None
    assert await store.get("alice", "a", not_before=0) is None
    assert await store.get("bob", "b", not_before=0) is None
    clock[0] += 2 * DAY
    assert await purger.run_once() == 1
    assert await store.list("alice", CompletionQuery(not_before=0)) == CompletionPage(data=(), has_more=False)


async def test_in_memory_store_is_bounded() -> None:
    """Past max_records the record stored longest ago is dropped first."""
    store = InMemoryCompletionStore(max_records=2)
    for index, created in enumerate((10, 20, 30)):
        await store.save(record(f"id{index}", created), [])
    page = await store.list("alice", CompletionQuery(not_before=0))
    assert [r.id for r in page.data] == ["id1", "id2"]


class DownStore(InMemoryCompletionStore):
    """A store whose storage is unreachable."""

    async def save(self, record: StoredCompletion, messages: Sequence[Mapping[str, Any]]) -> None:
        raise CompletionStoreUnavailable("down")

    async def get(self, owner: str, completion_id: str, *, not_before: int) -> StoredCompletion | None:
        raise CompletionStoreUnavailable("down")

    async def list(self, owner: str, query: CompletionQuery) -> CompletionPage:
        raise CompletionStoreUnavailable("down")


async def test_a_store_that_is_down_is_a_temporary_503(aiohttp_client: AiohttpClient, runner: ScriptedRunner) -> None:
    """Reads from a store that is down are 503 with Retry-After; a create with store true still
    gets its completion (only the record is lost, and logged)."""
    client = await build(aiohttp_client, runner, DownStore())
    resp = await client.post(COMPLETIONS, json=chat_body(store=True), headers=ALICE)
    assert resp.status == 200 and (await resp.json())["object"] == "chat.completion"
    for path in (COMPLETIONS, f"{COMPLETIONS}/x"):
        resp = await client.get(path, headers=ALICE)
        assert (resp.status, resp.headers["Retry-After"]) == (503, "1")
        assert await resp.json() == error_body(
            "Stored completions are unavailable. Please retry shortly.", "api_error")


def test_retention_days_is_read_and_checked() -> None:
    """chatCompletions.store.retentionDays defaults to 30, is read from the file, and a wrong
    value is a ConfigError naming its dotted key."""
    from openclaw_http_compat import ConfigError, HttpCompatConfig
    from openclaw_http_compat.config import StoreConfig

    assert make_config().chat_completions.store == StoreConfig(retention_days=30)
    assert make_config(endpoint={"store": {"retentionDays": 7}}).chat_completions.store.retention_days == 7
    for value, problem in [(0, "must be at least 1, got 0"), ("7", "expected an integer, got the string '7'")]:
        raw = {"gateway": {"auth": {"mode": "none"}, "http": {"endpoints": {"chatCompletions": {
            "store": {"retentionDays": value}}}}}}
        with pytest.raises(ConfigError) as info:
            HttpCompatConfig.from_mapping(raw, env={})
        assert str(info.value) == f"gateway.http.endpoints.chatCompletions.store.retentionDays: {problem}"

"""Images on the active turn: data URIs, limits, MIME sniffing and the remote-URL guard."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from openclaw_http_compat import ChatCompletionsConfig
from openclaw_http_compat.config import ImagesConfig
from openclaw_http_compat.errors import InvalidRequestError
from openclaw_http_compat.images import ImageFetcher, collect_images, is_blocked_address, sniff_mime
from openclaw_http_compat.keys import IMAGES_KEY

from .conftest import ScriptedRunner

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
JPEG = b"\xff\xd8\xff\xe0" + b"\x01" * 20
PDF = b"%PDF-1.7\n" + b"\x02" * 20
INVALID = {"error": {"message": "Invalid image_url content in `messages`.", "type": "invalid_request_error",
                     "param": "messages", "code": None}}


def data_uri(data: bytes, mime: str = "image/png", params: str = "") -> str:
    return f"data:{mime}{params};base64,{base64.b64encode(data).decode()}"


def user(*parts: Any) -> dict[str, Any]:
    return {"role": "user", "content": list(parts)}


def image(url: Any) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


async def post(client: Any, messages: list[Any], headers: dict[str, str]) -> Any:
    return await client.post("/v1/chat/completions", json={"model": "openclaw", "messages": messages}, headers=headers)


async def test_data_uri_image_is_forwarded(gateway_client: Any, runner: ScriptedRunner, auth_headers: dict[str, str]) -> None:
    """Ports openai-http.test.ts: text + PNG data URI -> message text, one image with its MIME."""
    client = await gateway_client()
    resp = await post(client, [user({"type": "text", "text": "describe this"}, image(data_uri(PNG)))], auth_headers)
    assert resp.status == 200
    run = runner.requests[0]
    assert run.message == "describe this"
    assert [(i.mime_type, i.data) for i in run.images] == [("image/png", base64.b64encode(PNG).decode())]


async def test_charset_parameter_before_base64_is_accepted(
    gateway_client: Any, runner: ScriptedRunner, auth_headers: dict[str, str]
) -> None:
    """Ports openai-http.test.ts: `;charset=utf-8` before `;base64` is fine."""
    client = await gateway_client()
    resp = await post(client, [user(image(data_uri(PNG, params=";charset=utf-8")))], auth_headers)
    assert resp.status == 200
    assert runner.requests[0].images[0].mime_type == "image/png"


async def test_image_only_turn_gets_placeholder(gateway_client: Any, runner: ScriptedRunner, auth_headers: dict[str, str]) -> None:
    """Ports openai-http.test.ts: an image-only turn is sent with the placeholder text."""
    client = await gateway_client()
    resp = await post(client, [user(image(data_uri(JPEG, "image/jpeg")))], auth_headers)
    assert resp.status == 200
    assert runner.requests[0].message == "User sent image(s) with no text."
    assert runner.requests[0].images[0].mime_type == "image/jpeg"


async def test_only_latest_turn_images_are_forwarded(gateway_client: Any, runner: ScriptedRunner, auth_headers: dict[str, str]) -> None:
    """Ports openai-http.test.ts: two user turns with images forward only the latest one's."""
    client = await gateway_client()
    older = data_uri(PNG)
    newer_png = PNG + b"BBBB"
    messages = [
        user({"type": "text", "text": "first"}, image(older)),
        {"role": "assistant", "content": "ok"},
        user({"type": "text", "text": "second"}, image(data_uri(newer_png))),
    ]
    resp = await post(client, messages, auth_headers)
    assert resp.status == 200
    assert [i.data for i in runner.requests[0].images] == [base64.b64encode(newer_png).decode()]


async def test_older_image_only_turn_has_no_placeholder(
    gateway_client: Any, runner: ScriptedRunner, auth_headers: dict[str, str]
) -> None:
    """Ports openai-http.test.ts: an older image-only turn is dropped from history, no images forwarded."""
    client = await gateway_client()
    messages = [user(image(data_uri(PNG))), {"role": "assistant", "content": "nice"}, {"role": "user", "content": "and now?"}]
    resp = await post(client, messages, auth_headers)
    assert resp.status == 200
    run = runner.requests[0]
    assert run.images == ()
    assert "User sent image(s)" not in run.message


async def test_malformed_parts_in_history_are_ignored(gateway_client: Any, runner: ScriptedRunner, auth_headers: dict[str, str]) -> None:
    """Ports openai-http.test.ts: malformed image parts in older turns do not fail the request."""
    client = await gateway_client()
    messages = [user({"type": "text", "text": "old"}, {"type": "image_url"}), {"role": "user", "content": "new"}]
    resp = await post(client, messages, auth_headers)
    assert resp.status == 200


MALFORMED_PARTS = [
    {"type": "image_url"},
    {"type": "image_url", "image_url": {}},
    {"type": "image_url", "image_url": {"url": 5}},
    {"type": "image_url", "image_url": 7},
    {"type": "image_url", "image_url": ["x"]},
    {"type": "image_url", "image_url": ""},
    {"type": "image_url", "image_url": {"url": "   "}},
    {"type": "image_url", "image_url": None},
]


@pytest.mark.parametrize("part", MALFORMED_PARTS, ids=[str(i) for i in range(len(MALFORMED_PARTS))])
@pytest.mark.parametrize("placement", ["alone", "after-text", "before-text"])
async def test_malformed_active_image_part_is_400(
    gateway_client: Any, auth_headers: dict[str, str], part: dict[str, Any], placement: str
) -> None:
    """Ports openai-http.test.ts: 8 malformed shapes x 3 placements in the active turn -> 400."""
    client = await gateway_client()
    text = {"type": "text", "text": "hi"}
    parts = {"alone": [part], "after-text": [text, part], "before-text": [part, text]}[placement]
    resp = await post(client, [user(*parts)], auth_headers)
    assert resp.status == 400
    assert await resp.json() == INVALID


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png;base64,%%%",
        "data:image/png;base64,",
        "data:image/png,aGVsbG8=",
        data_uri(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
        data_uri(PDF, "image/png"),
        data_uri(PDF, "application/pdf"),
    ],
    ids=["not-base64", "empty", "no-base64-token", "svg", "pdf-labelled-png", "pdf"],
)
async def test_bad_data_uri_is_400(gateway_client: Any, auth_headers: dict[str, str], url: str) -> None:
    """Ports openai-http.test.ts: bad payloads, SVG and PDF bytes are refused."""
    client = await gateway_client()
    resp = await post(client, [user({"type": "text", "text": "x"}, image(url))], auth_headers)
    assert resp.status == 400
    assert await resp.json() == INVALID


async def test_nine_image_parts_exceed_the_limit(gateway_client: Any, auth_headers: dict[str, str]) -> None:
    """Ports openai-http.test.ts: 9 image parts in the active turn -> 400 (limit 8)."""
    client = await gateway_client()
    resp = await post(client, [user(*[image(data_uri(PNG))] * 9)], auth_headers)
    assert resp.status == 400
    assert await resp.json() == INVALID


async def test_total_image_budget(gateway_client: Any, runner: ScriptedRunner, auth_headers: dict[str, str]) -> None:
    """Ports openai-http.image-budget.test.ts: decoded bytes over maxTotalImageBytes -> 400."""
    client = await gateway_client(endpoint={"maxTotalImageBytes": len(PNG) * 2})
    ok = await post(client, [user(image(data_uri(PNG)), image(data_uri(PNG)))], auth_headers)
    assert ok.status == 200
    too_much = await post(client, [user(*[image(data_uri(PNG))] * 3)], auth_headers)
    assert too_much.status == 400
    assert (await too_much.json())["error"]["message"] == "Total image payload too large"


async def test_per_image_size_limit(gateway_client: Any, auth_headers: dict[str, str]) -> None:
    """An image larger than images.maxBytes is refused."""
    client = await gateway_client(endpoint={"images": {"maxBytes": 16}})
    resp = await post(client, [user(image(data_uri(PNG)))], auth_headers)
    assert resp.status == 400
    assert await resp.json() == INVALID


async def test_remote_url_refused_when_not_allowed(gateway_client: Any, auth_headers: dict[str, str]) -> None:
    """Ports openai-http.test.ts: an https image URL with allowUrl false -> 400."""
    client = await gateway_client()
    resp = await post(client, [user({"type": "text", "text": "x"}, image("https://example.com/a.png"))], auth_headers)
    assert resp.status == 400
    assert await resp.json() == INVALID


async def test_tool_active_turn_forwards_no_images(gateway_client: Any, runner: ScriptedRunner, auth_headers: dict[str, str]) -> None:
    """Ports openai-http.test.ts: when a tool message is the active turn, no images are sent."""
    client = await gateway_client()
    messages = [
        user({"type": "text", "text": "look"}, image("https://example.com/a.png")),
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "done"},
    ]
    resp = await post(client, messages, auth_headers)
    assert resp.status == 200
    assert runner.requests[0].images == ()
    assert runner.requests[0].message.endswith("Tool:call_1: done")


@pytest.mark.parametrize(
    ("data", "mime"),
    [(PNG, "image/png"), (JPEG, "image/jpeg"), (b"GIF89a....", "image/gif"), (b"RIFF\0\0\0\0WEBPVP8 ", "image/webp"),
     (b"\0\0\0\x18ftypheic\0\0", "image/heic"), (b"\0\0\0\x18ftypmif1\0\0", "image/heif"), (PDF, None), (b"", None)],
    ids=["png", "jpeg", "gif", "webp", "heic", "heif", "pdf", "empty"],
)
def test_sniff_mime(data: bytes, mime: str | None) -> None:
    """Magic numbers decide the image type."""
    assert sniff_mime(data) == mime


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
     "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::",
     "224.0.0.1", "ff02::1"],
)
def test_blocked_addresses(address: str) -> None:
    """Loopback, private, link-local, CGNAT, metadata, multicast and embedded forms are blocked."""
    assert is_blocked_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    """Public addresses are not blocked."""
    assert not is_blocked_address(ipaddress.ip_address(address))


class _Recorder:
    def __init__(self) -> None:
        self.hits: list[str] = []


async def _image_server(aiohttp_server: AiohttpServer, host: str, redirect_to: str | None = None) -> tuple[Any, _Recorder]:
    seen = _Recorder()

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.hits.append(request.path)
        if redirect_to is not None:
            raise web.HTTPFound(redirect_to)
        return web.Response(body=PNG, content_type="image/png")

    app = web.Application()
    app.router.add_get("/{name}", handler)
    server = await aiohttp_server(app, host=host)
    return server, seen


def _url_config(**images: Any) -> ChatCompletionsConfig:
    return ChatCompletionsConfig(enabled=True, images=ImagesConfig(allow_url=True, **images))


Policy = Callable[[ipaddress.IPv4Address | ipaddress.IPv6Address], bool]
FetcherFactory = Callable[..., ImageFetcher]


def only_loopback_one(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """The tests' widened policy: 127.0.0.1 is allowed, everything else stays blocked."""
    return str(ip) != "127.0.0.1"


@pytest.fixture
async def fetchers() -> AsyncIterator[FetcherFactory]:
    """Makes image fetchers (the real guard, or ``blocked=``); closes them at the end."""
    made: list[ImageFetcher] = []

    def make(blocked: Policy = is_blocked_address) -> ImageFetcher:
        fetcher = ImageFetcher(blocked=blocked)
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        await fetcher.close()


async def test_loopback_url_is_never_requested(aiohttp_server: AiohttpServer, fetchers: FetcherFactory) -> None:
    """With allowUrl on, a loopback URL is refused and the server there sees no request."""
    server, seen = await _image_server(aiohttp_server, "127.0.0.1")
    url = f"http://127.0.0.1:{server.port}/a.png"
    with pytest.raises(InvalidRequestError):
        await collect_images(user(image(url)), _url_config(), fetchers())
    assert seen.hits == []


@pytest.mark.parametrize(
    "host",
    # Loopback and name spellings only: a guard regression must not send traffic off this machine.
    # Private, link-local and metadata addresses are checked without a connection below.
    ["localhost", "LOCALHOST.", "LocalHost", "foo.localhost", "localhost.localdomain", "2130706433", "0177.0.0.1",
     "0x7f.0.0.1", "0x7f000001", "0x7f.0x0.0x0.0x1", "017700000001", "127.1", "127.000.000.001", "127.1.2.3",
     "0", "0.0.0.0", "[::1]", "[0:0:0:0:0:0:0:1]", "[::]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::127.0.0.1]",
     "metadata.google.internal", "metadata", "printer.local", "db.internal"],
)
async def test_tricky_loopback_and_metadata_spellings_are_refused(
    aiohttp_server: AiohttpServer, fetchers: FetcherFactory, host: str
) -> None:
    """Decimal, octal, hex, short, IPv6 and name forms of private targets are all refused."""
    server, seen = await _image_server(aiohttp_server, "127.0.0.1")
    with pytest.raises(InvalidRequestError):
        await collect_images(user(image(f"http://{host}:{server.port}/a.png")), _url_config(), fetchers())
    assert seen.hits == []


async def test_allowed_url_is_fetched_and_sniffed(aiohttp_server: AiohttpServer, fetchers: FetcherFactory) -> None:
    """A URL the policy allows is fetched with the gateway's User-Agent and checked like a data URI."""
    server, seen = await _image_server(aiohttp_server, "127.0.0.1")
    images = await collect_images(
        user(image(f"http://127.0.0.1:{server.port}/a.png")), _url_config(), fetchers(only_loopback_one)
    )
    assert [(i.mime_type, i.data) for i in images] == [("image/png", base64.b64encode(PNG).decode())]
    assert seen.hits == ["/a.png"]


async def test_redirect_into_blocked_space_is_refused(aiohttp_server: AiohttpServer, fetchers: FetcherFactory) -> None:
    """Every redirect hop is checked: a redirect to a blocked address is never followed."""
    target, target_seen = await _image_server(aiohttp_server, "127.0.0.2")
    front, front_seen = await _image_server(aiohttp_server, "127.0.0.1", redirect_to=f"http://127.0.0.2:{target.port}/b.png")
    with pytest.raises(InvalidRequestError):
        await collect_images(
            user(image(f"http://127.0.0.1:{front.port}/a.png")), _url_config(), fetchers(only_loopback_one)
        )
    assert front_seen.hits == ["/a.png"]
    assert target_seen.hits == []


async def test_redirects_are_capped(aiohttp_server: AiohttpServer, fetchers: FetcherFactory) -> None:
    """More redirects than images.maxRedirects fail the request."""
    server, seen = await _image_server(aiohttp_server, "127.0.0.1", redirect_to="/again.png")
    with pytest.raises(InvalidRequestError):
        await collect_images(
            user(image(f"http://127.0.0.1:{server.port}/a.png")), _url_config(max_redirects=2), fetchers(only_loopback_one)
        )
    assert len(seen.hits) == 3


async def test_url_allowlist(aiohttp_server: AiohttpServer, fetchers: FetcherFactory) -> None:
    """Hosts outside images.urlAllowlist are refused before any request."""
    server, seen = await _image_server(aiohttp_server, "127.0.0.1")
    with pytest.raises(InvalidRequestError):
        await collect_images(
            user(image(f"http://127.0.0.1:{server.port}/a.png")),
            _url_config(url_allowlist=("*.example.com",)),
            fetchers(lambda ip: False),
        )
    assert seen.hits == []


async def test_name_resolving_to_private_address_is_refused(aiohttp_server: AiohttpServer, fetchers: FetcherFactory) -> None:
    """A host name whose DNS answer is private is refused after resolution, before connecting."""
    name = socket.gethostname()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    except OSError:
        pytest.skip("this machine's host name does not resolve")
    if not all(is_blocked_address(ipaddress.ip_address(a)) for a in addresses):
        pytest.skip("this machine's host name resolves to a public address")
    server, seen = await _image_server(aiohttp_server, "127.0.0.1")
    with pytest.raises(InvalidRequestError):
        await collect_images(user(image(f"http://{name}:{server.port}/a.png")), _url_config(), fetchers())
    assert seen.hits == []


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_environment_proxy_is_never_used(
    aiohttp_server: AiohttpServer, fetchers: FetcherFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy would resolve names beyond the guard: with HTTP_PROXY set (to a dead port), images still go direct."""
    for name in ("no_proxy", "NO_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_closed_port()}")
    server, seen = await _image_server(aiohttp_server, "127.0.0.1")
    images = await collect_images(
        user(image(f"http://127.0.0.1:{server.port}/a.png")), _url_config(), fetchers(only_loopback_one)
    )
    assert [i.mime_type for i in images] == ["image/png"]
    assert seen.hits == ["/a.png"]


async def _stall(request: web.Request) -> web.Response:
    await asyncio.sleep(30)
    return web.Response(body=PNG, content_type="image/png")  # pragma: no cover - the client gave up


async def _cut(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "image/png", "Content-Length": str(len(PNG) * 2)})
    await response.prepare(request)
    await response.write(PNG)
    assert request.transport is not None
    request.transport.close()
    return response


@pytest.mark.parametrize(
    ("handler", "logged"),
    [
        (None, "cannot connect (ClientConnectorError)"),
        (_stall, "timed out (TimeoutError)"),
        (_cut, "connection failed (ClientPayloadError)"),
    ],
    ids=["refused", "timeout", "body-cut"],
)
async def test_fetch_failures_are_mapped_to_400(
    aiohttp_server: AiohttpServer,
    fetchers: FetcherFactory,
    caplog: pytest.LogCaptureFixture,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]] | None,
    logged: str,
) -> None:
    """A fetch failing below HTTP (refused, timed out, cut short) goes through the one transport mapping to 400."""
    port = _closed_port()
    if handler is not None:
        app = web.Application()
        app.router.add_get("/a.png", handler)
        server = await aiohttp_server(app, host="127.0.0.1")
        assert server.port is not None
        port = server.port
    caplog.set_level(logging.INFO, logger="openclaw_http_compat")
    with pytest.raises(InvalidRequestError) as refused:
        await collect_images(
            user(image(f"http://127.0.0.1:{port}/a.png")), _url_config(timeout_ms=200), fetchers(only_loopback_one)
        )
    assert refused.value.body() == INVALID
    assert [r.getMessage() for r in caplog.records if r.name == "openclaw_http_compat"] == [
        f"refused image input: fetching the image failed: {logged}"
    ]


async def test_gateway_fetcher_is_guarded_and_closed_with_the_plugin(
    gateway_client: Any, auth_headers: dict[str, str], aiohttp_server: AiohttpServer
) -> None:
    """Through the gateway, remote URLs go to the sub-app's guarded fetcher: a loopback URL is 400 and
    never requested; the fetcher's pool, opened by that first remote fetch, closes with the app."""
    server, seen = await _image_server(aiohttp_server, "127.0.0.1")
    client = await gateway_client(endpoint={"images": {"allowUrl": True}})
    subapp = next(r.get_info()["app"] for r in client.app.router.resources() if "app" in r.get_info())
    fetcher = subapp[IMAGES_KEY]
    assert not fetcher.opened
    resp = await post(client, [user(image(f"http://localhost:{server.port}/a.png"))], auth_headers)
    assert (resp.status, await resp.json()) == (400, INVALID)
    assert seen.hits == []
    assert fetcher.opened
    await client.close()
    assert not fetcher.opened

"""Images on the active turn: data URIs, and remote URLs behind an SSRF guard (section 4.5, 8).

Only the active turn's ``image_url`` parts count. Each image is decoded, its bytes sniffed
(the label alone is never trusted), checked against the MIME allow-list and the size
limits, and handed to the run as base64 text. Any problem fails the whole request with
400 ``Invalid image_url content in `messages`.``; the detail goes to the log only.

Remote URLs are fetched by an :class:`ImageFetcher`, on a guarded connection pool that is
never the providers' (:mod:`openclaw_http_compat.client` says why).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from .client import open_client_session, transport_errors
from .config import ChatCompletionsConfig, ImagesConfig
from .errors import ImageError, InvalidRequestError, TransportError
from .host import ImageInput
from .log import log

__all__ = ("ImageFetcher", "collect_images", "is_blocked_address", "sniff_mime")

INVALID_IMAGE: Final = "Invalid image_url content in `messages`."
TOTAL_TOO_LARGE: Final = "Total image payload too large"
USER_AGENT: Final = "OpenClaw-Gateway/1.0"
_REQUEST_HEADERS: Final = {"User-Agent": USER_AGENT, "Accept": "image/*"}
# Decoding big payloads is CPU work; past this size it goes to a thread.
_THREAD_DECODE_BYTES: Final = 256 * 1024
_BLOCKED_HOST_SUFFIXES: Final = (".localhost", ".local", ".internal")
_BLOCKED_HOSTS: Final = frozenset({"localhost", "metadata.google.internal", "metadata"})

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def sniff_mime(data: bytes) -> str | None:
    """The image type the bytes really are, from their magic numbers."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if len(data) >= 12 and data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis"):
            return "image/heic"
        if brand in (b"mif1", b"msf1", b"heif"):
            return "image/heif"
    return None


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    if addr in ipaddress.IPv6Network("64:ff9b::/96"):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr in ipaddress.IPv6Network("::/96") and int(addr) > 1:
        # Deprecated IPv4-compatible form ::a.b.c.d.
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def is_blocked_address(addr: _Address) -> bool:
    """Whether an address is off limits: loopback, private, link-local, metadata, reserved…"""
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(addr)
        if embedded is not None and is_blocked_address(embedded):
            return True
    return not addr.is_global or addr.is_multicast


def _literal_ipv4(host: str) -> ipaddress.IPv4Address | None:
    # inet_aton takes the legacy forms too (decimal 2130706433, octal 0177.0.0.1, hex 0x7f.1),
    # which browsers and libcurl resolve to real addresses.
    if not host or any(c not in "0123456789abcdefxABCDEFX." for c in host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _host_allowed(host: str, allowlist: Sequence[str]) -> bool:
    if not allowlist:
        return True
    for entry in allowlist:
        if entry.startswith("*."):
            if host.endswith(entry[1:]) and host != entry[2:]:
                return True
        elif host == entry:
            return True
    return False


class _GuardedResolver(AbstractResolver):
    """Resolves a host, and refuses it when any of its addresses is blocked.

    The connector connects to exactly the addresses checked here, so a second DNS answer
    cannot point the connection elsewhere (no rebinding).
    """

    def __init__(self, blocked: Callable[[_Address], bool]) -> None:
        self._blocked = blocked

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=socket.AF_UNSPEC)
        results: list[ResolveResult] = []
        for fam, _, proto, _, sockaddr in infos:
            ip = ipaddress.ip_address(sockaddr[0])
            if self._blocked(ip):
                raise ImageError(f"host {host!r} resolves to a blocked address")
            results.append(
                ResolveResult(
                    hostname=host, host=str(ip), port=port, family=fam, proto=proto, flags=socket.AI_NUMERICHOST
                )
            )
        if not results:
            raise ImageError(f"host {host!r} did not resolve")
        return results

    async def close(self) -> None:
        return None


def _check_url(url: str, config: ImagesConfig, blocked: Callable[[_Address], bool]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ImageError(f"scheme {parts.scheme!r} is not allowed")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise ImageError("URL has no host")
    if host in _BLOCKED_HOSTS or host.endswith(_BLOCKED_HOST_SUFFIXES):
        raise ImageError(f"host {host!r} is blocked")
    if not _host_allowed(host, config.url_allowlist):
        raise ImageError(f"host {host!r} is not in the allow-list")
    literal: _Address | None = _literal_ipv4(host)
    if literal is None:
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
    if literal is not None and blocked(literal):
        raise ImageError(f"address {host!r} is blocked")


class ImageFetcher:
    """Fetches user-supplied image URLs under the SSRF guard, on a connection pool of its own.

    The pool comes from :func:`~openclaw_http_compat.client.open_client_session` with a
    resolver that refuses blocked addresses and no DNS cache, and uses no proxy; it is opened
    on the first remote fetch. The module docstring of :mod:`openclaw_http_compat.client` says
    why it is never the providers' pool. Close it with :meth:`close` (or ``async with``).

    Args:
        blocked: the address policy, for names and literal addresses alike; tests may widen it.
    """

    def __init__(self, *, blocked: Callable[[_Address], bool] = is_blocked_address) -> None:
        self.blocked = blocked
        self._session: aiohttp.ClientSession | None = None

    @property
    def opened(self) -> bool:
        """Whether the pool is open: from the first remote fetch until :meth:`close`."""
        return self._session is not None

    def _pool(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Opened here, not at start-up: a gateway that never fetches a URL holds no pool.
            self._session = open_client_session(resolver=_GuardedResolver(self.blocked))
        return self._session

    async def fetch(self, url: str, config: ImagesConfig) -> tuple[bytes, str | None]:
        """Fetch a remote image under ``config``: every hop checked, redirects, time and size capped.

        Returns:
            The bytes and the declared ``Content-Type``.

        Raises:
            ImageError: the URL or a redirect is refused, the answer is no usable image.
            TransportError: the fetch failed (mapped by :func:`~.client.transport_errors`).
        """
        session = self._pool()
        timeout = aiohttp.ClientTimeout(total=config.timeout_ms / 1000)
        current = url
        with transport_errors():
            for _ in range(config.max_redirects + 1):
                _check_url(current, config, self.blocked)
                async with session.get(
                    current, allow_redirects=False, timeout=timeout, headers=_REQUEST_HEADERS
                ) as resp:
                    if resp.status in (301, 302, 303, 307, 308):
                        location = resp.headers.get("Location")
                        if not location:
                            raise ImageError("redirect without Location")
                        current = urljoin(current, location)
                        continue
                    if resp.status // 100 != 2:
                        raise ImageError(f"image URL answered {resp.status}")
                    if resp.content_length is not None and resp.content_length > config.max_bytes:
                        raise ImageError("image is larger than maxBytes")
                    data = bytearray()
                    async for chunk in resp.content.iter_chunked(64 * 1024):
                        data.extend(chunk)
                        if len(data) > config.max_bytes:
                            raise ImageError("image is larger than maxBytes")
                    return bytes(data), resp.headers.get("Content-Type")
        raise ImageError("too many redirects")

    async def close(self) -> None:
        """Close the pool, if one was opened."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> ImageFetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _image_parts(message: Mapping[str, object]) -> list[object]:
    content = message.get("content")
    if not isinstance(content, list):
        return []
    return [p for p in content if isinstance(p, Mapping) and p.get("type") == "image_url"]


def _part_url(part: Any) -> str:
    value = part.get("image_url")
    if isinstance(value, Mapping):
        value = value.get("url")
    if not isinstance(value, str) or not value.strip():
        raise ImageError("image_url part has no URL")
    return value.strip()


def _decode_data_uri(url: str) -> tuple[bytes, str, str]:
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise ImageError("data URI has no payload")
    tokens = [t.strip().lower() for t in header.split(";")]
    if "base64" not in tokens:
        raise ImageError("data URI is not base64")
    mime = next((t for t in tokens if "/" in t), "image/png")
    text = "".join(payload.split())
    if not text:
        raise ImageError("data URI payload is empty")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("data URI payload is not valid base64") from None
    if not data:
        raise ImageError("data URI payload is empty")
    return data, mime, text


def _checked_mime(data: bytes, declared: str | None, config: ImagesConfig) -> str:
    declared_type = (declared or "").partition(";")[0].strip().lower()
    if declared_type and declared_type not in config.allowed_mimes:
        raise ImageError(f"MIME type {declared_type!r} is not allowed")
    actual = sniff_mime(data)
    if actual is None or actual not in config.allowed_mimes:
        raise ImageError(f"bytes are not an allowed image (sniffed {actual!r})")
    return actual


async def _load(url: str, config: ImagesConfig, fetcher: ImageFetcher) -> tuple[ImageInput, int]:
    if url[:5].lower() == "data:":
        if len(url) > _THREAD_DECODE_BYTES:
            data, declared, text = await asyncio.to_thread(_decode_data_uri, url)
        else:
            data, declared, text = _decode_data_uri(url)
    elif not config.allow_url:
        raise ImageError("remote image URLs are not allowed (images.allowUrl is false)")
    else:
        try:
            data, declared_header = await fetcher.fetch(url, config)
        except TransportError as exc:
            raise ImageError(f"fetching the image failed: {exc}") from None
        declared = declared_header or ""
        text = base64.b64encode(data).decode("ascii")
    if len(data) > config.max_bytes:
        raise ImageError("image is larger than maxBytes")
    return ImageInput(mime_type=_checked_mime(data, declared, config), data=text), len(data)


async def collect_images(
    active: Mapping[str, object] | None, config: ChatCompletionsConfig, fetcher: ImageFetcher
) -> tuple[ImageInput, ...]:
    """The images of the active turn (a user message), checked and limited.

    Args:
        active: the active turn; tool turns and ``None`` carry no images.
        config: the endpoint config (part count, sizes, MIME list, URL policy).
        fetcher: fetches remote URLs (the sub-app's, under ``IMAGES_KEY``).

    Raises:
        InvalidRequestError: any image part is malformed, too large, of a wrong type, or
            refused by the URL policy.
    """
    if active is None or str(active.get("role", "")).strip().lower() != "user":
        return ()
    parts = _image_parts(active)
    if not parts:
        return ()
    try:
        if len(parts) > config.max_image_parts:
            raise ImageError(f"{len(parts)} image parts exceed maxImageParts {config.max_image_parts}")
        images: list[ImageInput] = []
        total = 0
        for part in parts:
            image, size = await _load(_part_url(part), config.images, fetcher)
            total += size
            if total > config.max_total_image_bytes:
                raise InvalidRequestError(TOTAL_TOO_LARGE, param="messages")
            images.append(image)
    except ImageError as exc:
        log.info("refused image input: %s", exc)
        raise InvalidRequestError(INVALID_IMAGE, param="messages") from None
    return tuple(images)

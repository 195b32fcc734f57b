"""Fetching one feed over HTTP, within limits, and saying exactly what happened.

`fetch_feed` never raises for the web's failures: every outcome (304, 410, 429, a body over the
cap, a redirect loop, a timeout, a refused connection) comes back as a `FetchResult` with a short
human-readable `error`. Redirects are followed here rather than by httpx so that we know whether
the whole chain was permanent (only then may the stored URL change).

The body cap counts decompressed bytes and holds while streaming: gzip and deflate are inflated
here with zlib's `max_length`, because httpx inflates each network read in one go and a 64 KiB
read of a gzip bomb can become 64 MiB before any cap could look at it.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum
from urllib.parse import urlsplit

import httpx

from store.models import ETAG_MAX_LENGTH, LAST_MODIFIED_MAX_LENGTH

__all__ = ["FetchLimits", "FetchOutcome", "FetchResult", "fetch_feed", "make_http_client"]

USER_AGENT = "Storywire/0.1 (+https://github.com/storywire/storywire)"
ACCEPT = (
    "application/rss+xml, application/atom+xml, application/rdf+xml;q=0.9, "
    "application/xml;q=0.9, text/xml;q=0.9, */*;q=0.5"
)
ACCEPT_ENCODING = "gzip, deflate"  # what _read_capped can inflate within the cap
MAX_RETRY_AFTER = timedelta(hours=24)
REDIRECTS = (301, 302, 303, 307, 308)
PERMANENT = (301, 308)


@dataclass(frozen=True, slots=True)
class FetchLimits:
    timeout: float = 15.0  # whole request, connect to last byte
    max_bytes: int = 2 * 1024 * 1024  # decompressed body
    max_redirects: int = 5
    user_agent: str = USER_AGENT


class FetchOutcome(StrEnum):
    OK = "ok"
    NOT_MODIFIED = "not_modified"
    GONE = "gone"
    RATE_LIMITED = "rate_limited"
    HTTP_ERROR = "http_error"
    TOO_LARGE = "too_large"
    TIMEOUT = "timeout"
    NETWORK_ERROR = "network_error"
    REDIRECT_LOOP = "redirect_loop"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    INVALID_URL = "invalid_url"


@dataclass(frozen=True, slots=True)
class FetchResult:
    outcome: FetchOutcome
    status: int | None
    final_url: str
    body: bytes | None = None
    etag: str | None = None
    last_modified: str | None = None
    permanent_url: str | None = None  # every redirect was 301/308 and the target answered 2xx/304
    retry_after: timedelta | None = None
    content_type: str | None = None
    error: str | None = None
    elapsed: float = 0.0


def make_http_client(limits: FetchLimits) -> httpx.AsyncClient:
    """The one client the poller shares: our User-Agent, timeouts, no automatic redirects."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(limits.timeout),
        follow_redirects=False,
        headers={
            "User-Agent": limits.user_agent,
            "Accept": ACCEPT,
            "Accept-Encoding": ACCEPT_ENCODING,
        },
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
    )


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> timedelta | None:
    """Retry-After as delta-seconds or an HTTP-date, clamped to [0, 24 h]."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        # Clamp before building the timedelta: "99999999999999" would overflow it.
        delay = timedelta(seconds=min(int(value), int(MAX_RETRY_AFTER.total_seconds())))
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        delay = when - (now or datetime.now(UTC))
    return max(timedelta(0), min(delay, MAX_RETRY_AFTER))


def _http_error(status: int) -> str:
    # The standard phrase, not the server's: reason phrases are free text ("OK", "NOT FOUND", "").
    return f"HTTP {status} {httpx.codes.get_reason_phrase(status)}".strip()


def usable_validator(value: str | None, limit: int) -> str | None:
    """A validator worth storing and sending back, or None.

    Only printable ASCII can go back in a request header (httpx refuses anything else, so a
    stored "café" would fail every later poll before it is sent), and only what fits its column
    (a longer value would fail the feed's whole transaction on PostgreSQL).
    Without one the feed is fetched whole each time: slower, never wrong."""
    if not value or len(value) > limit or not value.isascii() or not value.isprintable():
        return None
    return value


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


async def fetch_feed(
    client: httpx.AsyncClient,
    url: str,
    *,
    etag: str | None,
    last_modified: str | None,
    limits: FetchLimits,
) -> FetchResult:
    """GET a feed conditionally. Never raises for network or HTTP failures."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(limits.timeout):
            result = await _fetch(
                client, url, etag=etag, last_modified=last_modified, limits=limits
            )
    except (TimeoutError, httpx.TimeoutException):
        result = FetchResult(
            FetchOutcome.TIMEOUT, None, url, error=f"timed out after {limits.timeout:g}s"
        )
    except (httpx.InvalidURL, httpx.UnsupportedProtocol, UnicodeError) as exc:
        # UnicodeError: httpx lets idna's error through for a host it cannot encode ("xn--"),
        # whether the URL was stored or came in a Location header
        result = FetchResult(FetchOutcome.INVALID_URL, None, url, error=f"invalid URL: {exc}")
    except httpx.DecodingError as exc:
        result = FetchResult(
            FetchOutcome.NETWORK_ERROR, None, url, error=f"could not decode the body: {exc}"
        )
    except httpx.TransportError as exc:
        kind = type(exc).__name__
        detail = str(exc) or kind
        result = FetchResult(FetchOutcome.NETWORK_ERROR, None, url, error=f"{kind}: {detail}"[:300])
    return replace(result, elapsed=time.monotonic() - started)


class _TooLarge(Exception):
    """The decoded body passed the cap while streaming."""


class _BadEncoding(Exception):
    """A Content-Encoding we did not ask for and will not decode."""


async def _fetch(
    client: httpx.AsyncClient,
    url: str,
    *,
    etag: str | None,
    last_modified: str | None,
    limits: FetchLimits,
) -> FetchResult:
    headers = {}
    etag = usable_validator(etag, ETAG_MAX_LENGTH)
    last_modified = usable_validator(last_modified, LAST_MODIFIED_MAX_LENGTH)
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    current, permanent = url, True
    seen: set[str] = set()
    last_status: int | None = None
    for _ in range(limits.max_redirects + 1):
        if _scheme(current) not in ("http", "https"):
            return FetchResult(
                FetchOutcome.INVALID_URL,
                last_status,
                current,
                error=f"not an http(s) URL: {current[:200]}",
            )
        request = client.build_request("GET", current, headers=headers)
        seen.add(str(request.url))  # httpx's spelling: host lowercased, default port dropped
        response = await client.send(request, stream=True)
        try:
            location = response.headers.get("location")
            if response.status_code in REDIRECTS and location:
                last_status = response.status_code
                permanent = permanent and response.status_code in PERMANENT
                # httpx has already refused an unparseable Location (RemoteProtocolError)
                target = str(request.url.join(location.strip()))
                if target in seen:
                    return FetchResult(
                        FetchOutcome.REDIRECT_LOOP,
                        last_status,
                        current,
                        error=f"redirect loop at {target[:200]}",
                    )
                current = target
                continue
            return await _finish(
                response,
                url,
                current,
                permanent,
                sent=(etag, last_modified),
                limits=limits,
            )
        finally:
            await response.aclose()
    return FetchResult(
        FetchOutcome.TOO_MANY_REDIRECTS,
        last_status,
        current,
        error=f"more than {limits.max_redirects} redirects",
    )


def _scheme(url: str) -> str:
    try:
        return urlsplit(url).scheme.lower()
    except ValueError:
        return ""


async def _finish(
    response: httpx.Response,
    url: str,
    current: str,
    permanent: bool,
    *,
    sent: tuple[str | None, str | None],
    limits: FetchLimits,
) -> FetchResult:
    status = response.status_code
    common = {"status": status, "final_url": current}
    # Only a URL that answered is worth storing: after 301 -> 404 the old URL still leads here.
    moved = current if permanent and current != url else None
    new_etag = usable_validator(response.headers.get("etag"), ETAG_MAX_LENGTH)
    new_modified = usable_validator(response.headers.get("last-modified"), LAST_MODIFIED_MAX_LENGTH)
    if status == 304:
        return FetchResult(
            FetchOutcome.NOT_MODIFIED,
            etag=new_etag,
            last_modified=new_modified,
            permanent_url=moved,
            **common,
        )
    if status == 410:
        return FetchResult(FetchOutcome.GONE, error="HTTP 410 Gone", **common)
    if status in (429, 503):
        return FetchResult(
            FetchOutcome.RATE_LIMITED,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            error=_http_error(status),
            **common,
        )
    if not 200 <= status < 300:  # includes a 3xx without a Location
        return FetchResult(
            FetchOutcome.HTTP_ERROR,
            error=_http_error(status),
            **common,
        )
    declared = response.headers.get("content-length", "").strip()
    if declared.isascii() and declared.isdigit() and int(declared) > limits.max_bytes:
        return FetchResult(
            FetchOutcome.TOO_LARGE,
            error=f"body of {_mib(int(declared))} exceeds {_mib(limits.max_bytes)}",
            **common,
        )
    try:
        body = await _read_capped(response, limits.max_bytes)
    except _TooLarge:
        return FetchResult(
            FetchOutcome.TOO_LARGE, error=f"body exceeds {_mib(limits.max_bytes)}", **common
        )
    except zlib.error as exc:
        return FetchResult(
            FetchOutcome.NETWORK_ERROR, error=f"could not decompress the body: {exc}", **common
        )
    except _BadEncoding as exc:
        return FetchResult(
            FetchOutcome.NETWORK_ERROR,
            error=f"unsupported Content-Encoding {str(exc)[:80]!r} (we accept {ACCEPT_ENCODING})",
            **common,
        )
    if not body and (new_etag or new_modified or any(sent)):
        # Some servers answer an unchanged feed with an empty 200 instead of a 304: from a server
        # that speaks validators (ours or its own) it means nothing new. Its validators are kept,
        # as a 304's are. An empty body from one that does not is an error (the parser says so).
        return FetchResult(
            FetchOutcome.NOT_MODIFIED,
            etag=new_etag,
            last_modified=new_modified,
            permanent_url=moved,
            **common,
        )
    return FetchResult(
        FetchOutcome.OK,
        body=body,
        etag=new_etag,
        last_modified=new_modified,
        content_type=response.headers.get("content-type"),
        permanent_url=moved,
        **common,
    )


async def _read_capped(response: httpx.Response, cap: int) -> bytes:
    """The decoded body, or _TooLarge as soon as it passes `cap` bytes."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    body = bytearray()
    if encoding not in ("gzip", "x-gzip", "deflate"):
        if encoding not in ("", "identity"):
            # Stacked ("gzip, gzip") or unasked-for codings: httpx would inflate each network
            # read whole before the cap could look at it, so a few hundred bytes could allocate
            # gigabytes. We ask for gzip and deflate only; refuse anything else.
            raise _BadEncoding(encoding)
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > cap:
                raise _TooLarge
        return bytes(body)
    # 32 + MAX_WBITS detects a gzip or zlib header; some servers send raw deflate for "deflate".
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)
    first, members = True, 1
    async for raw in response.aiter_raw():
        data = raw
        while data:
            try:
                out = inflater.decompress(data, cap + 1 - len(body))
            except zlib.error:
                if members > 1:
                    return bytes(body)  # bytes after the last gzip member: padding, not data
                if not (first and encoding == "deflate"):
                    raise
                inflater = zlib.decompressobj(-zlib.MAX_WBITS)
                out = inflater.decompress(data, cap + 1 - len(body))
            first = False
            body += out
            if len(body) > cap:
                raise _TooLarge
            if inflater.eof:
                # A gzip body may be several members one after another (RFC 1952, 2.2), as from
                # a server that compresses a feed in pieces: go on with the next.
                data = inflater.unused_data
                if data:
                    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)
                    members += 1
            else:
                data = inflater.unconsumed_tail
    return bytes(body)

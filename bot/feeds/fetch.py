"""Fetching one feed over HTTP, within limits, and saying exactly what happened.

`fetch_feed` never raises for the web's failures: every outcome (304, 410, 429, a body over the
cap, a redirect loop, a timeout, a refused connection) comes back as a `FetchResult` with a short
human-readable `error`. Redirects are followed here rather than by httpx so that we know whether
the whole chain was permanent (only then may the stored URL change).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum
from urllib.parse import urljoin, urlsplit

import httpx

__all__ = ["FetchLimits", "FetchOutcome", "FetchResult", "fetch_feed", "make_http_client"]

USER_AGENT = "Storywire/0.1 (+https://github.com/storywire/storywire)"
ACCEPT = (
    "application/rss+xml, application/atom+xml, application/rdf+xml;q=0.9, "
    "application/xml;q=0.9, text/xml;q=0.9, */*;q=0.5"
)
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
    permanent_url: str | None = None  # set when every redirect on the way was 301/308
    retry_after: timedelta | None = None
    content_type: str | None = None
    error: str | None = None
    elapsed: float = 0.0


def make_http_client(limits: FetchLimits) -> httpx.AsyncClient:
    """The one client the poller shares: our User-Agent, timeouts, no automatic redirects."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(limits.timeout),
        follow_redirects=False,
        headers={"User-Agent": limits.user_agent, "Accept": ACCEPT},
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
    )


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> timedelta | None:
    """Retry-After as delta-seconds or an HTTP-date, clamped to [0, 24 h]."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        delay = timedelta(seconds=int(value))
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        delay = when - (now or datetime.now(UTC))
    return max(timedelta(0), min(delay, MAX_RETRY_AFTER))


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
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
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


async def _fetch(
    client: httpx.AsyncClient,
    url: str,
    *,
    etag: str | None,
    last_modified: str | None,
    limits: FetchLimits,
) -> FetchResult:
    headers = {}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    current, permanent, seen = url, True, {url}
    for _ in range(limits.max_redirects + 1):
        if urlsplit(current).scheme.lower() not in ("http", "https"):
            return FetchResult(
                FetchOutcome.INVALID_URL,
                None,
                current,
                error=f"not an http(s) URL: {current[:200]}",
            )
        request = client.build_request("GET", current, headers=headers)
        response = await client.send(request, stream=True)
        try:
            location = response.headers.get("location")
            if response.status_code in REDIRECTS and location:
                permanent = permanent and response.status_code in PERMANENT
                target = urljoin(current, location.strip())
                if target in seen:
                    return FetchResult(
                        FetchOutcome.REDIRECT_LOOP,
                        response.status_code,
                        current,
                        error=f"redirect loop at {target[:200]}",
                    )
                seen.add(target)
                current = target
                continue
            return await _finish(
                response, url, current, permanent, sent_validator=bool(headers), limits=limits
            )
        finally:
            await response.aclose()
    return FetchResult(
        FetchOutcome.TOO_MANY_REDIRECTS,
        None,
        current,
        error=f"more than {limits.max_redirects} redirects",
    )


async def _finish(
    response: httpx.Response,
    url: str,
    current: str,
    permanent: bool,
    *,
    sent_validator: bool,
    limits: FetchLimits,
) -> FetchResult:
    status = response.status_code
    moved = current if permanent and current != url else None
    new_etag = response.headers.get("etag")
    new_modified = response.headers.get("last-modified")
    common = {"status": status, "final_url": current, "permanent_url": moved}
    if status == 304:
        return FetchResult(
            FetchOutcome.NOT_MODIFIED, etag=new_etag, last_modified=new_modified, **common
        )
    if status == 410:
        return FetchResult(FetchOutcome.GONE, error="HTTP 410 Gone", **common)
    if status in (429, 503):
        return FetchResult(
            FetchOutcome.RATE_LIMITED,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            error=f"HTTP {status} {response.reason_phrase}".strip(),
            **common,
        )
    if status >= 400 or status < 200:
        return FetchResult(
            FetchOutcome.HTTP_ERROR,
            error=f"HTTP {status} {response.reason_phrase}".strip(),
            **common,
        )
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_bytes:
        return FetchResult(
            FetchOutcome.TOO_LARGE,
            error=f"body of {_mib(int(declared))} exceeds the {_mib(limits.max_bytes)} cap",
            **common,
        )
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limits.max_bytes:
            return FetchResult(
                FetchOutcome.TOO_LARGE,
                error=f"body exceeds the {_mib(limits.max_bytes)} cap",
                **common,
            )
    if not body and sent_validator:
        # Some servers answer an unchanged feed with an empty 200 instead of a 304.
        return FetchResult(FetchOutcome.NOT_MODIFIED, **common)
    return FetchResult(
        FetchOutcome.OK,
        body=bytes(body),
        etag=new_etag,
        last_modified=new_modified,
        content_type=response.headers.get("content-type"),
        **common,
    )

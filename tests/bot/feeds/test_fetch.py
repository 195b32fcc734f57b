"""fetch_feed against a real loopback HTTP server: every outcome, the limits, the redirects."""

from __future__ import annotations

import asyncio
import gzip
import socket
import tracemalloc
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from bot.feeds.fetch import (
    USER_AGENT,
    FetchLimits,
    FetchOutcome,
    FetchResult,
    fetch_feed,
    parse_retry_after,
)

FEED = (
    b"<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel><title>T</title>"
    b"<item><title>One</title><guid>1</guid></item></channel></rss>"
)
ETAG = '"v1"'
LAST_MODIFIED = "Tue, 10 Mar 2026 12:00:00 GMT"


async def get(
    client: httpx.AsyncClient,
    url: str,
    limits: FetchLimits,
    *,
    etag: str | None = None,
    last_modified: str | None = None,
) -> FetchResult:
    return await fetch_feed(client, url, etag=etag, last_modified=last_modified, limits=limits)


def redirect(server: HTTPServer, path: str, to: str, status: int) -> None:
    server.expect_request(path).respond_with_data(
        "", status=status, headers={"Location": server.url_for(to)}
    )


# --- 200 and conditional GET -------------------------------------------------------------------


async def test_200_returns_body_and_validators(httpserver, client, limits) -> None:
    httpserver.expect_request("/feed").respond_with_data(
        FEED,
        content_type="application/rss+xml; charset=utf-8",
        headers={"ETag": ETAG, "Last-Modified": LAST_MODIFIED},
    )

    result = await get(client, httpserver.url_for("/feed"), limits)

    assert result.outcome is FetchOutcome.OK
    assert (result.status, result.body) == (200, FEED)
    assert (result.etag, result.last_modified) == (ETAG, LAST_MODIFIED)
    assert result.content_type == "application/rss+xml; charset=utf-8"
    assert result.final_url == httpserver.url_for("/feed")
    assert result.permanent_url is None
    assert result.error is None


async def test_requests_carry_the_storywire_user_agent(httpserver, client, limits) -> None:
    httpserver.expect_request("/feed", headers={"User-Agent": USER_AGENT}).respond_with_data(FEED)

    result = await get(client, httpserver.url_for("/feed"), limits)

    assert result.outcome is FetchOutcome.OK


async def test_conditional_get_sends_validators_and_304_is_not_modified(
    httpserver, client, limits
) -> None:
    httpserver.expect_request(
        "/feed", headers={"If-None-Match": ETAG, "If-Modified-Since": LAST_MODIFIED}
    ).respond_with_data("", status=304, headers={"ETag": ETAG})

    result = await get(
        client, httpserver.url_for("/feed"), limits, etag=ETAG, last_modified=LAST_MODIFIED
    )

    assert result.outcome is FetchOutcome.NOT_MODIFIED
    assert result.status == 304
    assert result.body is None


async def test_no_validators_sent_when_none_known(httpserver, client, limits) -> None:
    httpserver.expect_request("/feed").respond_with_data(FEED)

    await get(client, httpserver.url_for("/feed"), limits)

    request, _response = httpserver.log[0]
    assert "If-None-Match" not in request.headers
    assert "If-Modified-Since" not in request.headers


async def test_empty_200_with_the_same_etag_is_not_modified(httpserver, client, limits) -> None:
    httpserver.expect_request("/feed").respond_with_data("", headers={"ETag": ETAG})

    result = await get(client, httpserver.url_for("/feed"), limits, etag=ETAG)

    assert result.outcome is FetchOutcome.NOT_MODIFIED


async def test_empty_200_without_validator_in_response_is_not_modified(
    httpserver, client, limits
) -> None:
    httpserver.expect_request("/feed").respond_with_data("")

    result = await get(client, httpserver.url_for("/feed"), limits, last_modified=LAST_MODIFIED)

    assert result.outcome is FetchOutcome.NOT_MODIFIED


async def test_empty_200_with_a_new_etag_is_not_modified_and_keeps_it(
    httpserver, client, limits
) -> None:
    """Reported as OK, the empty body failed to parse on every poll until the feed was disabled."""
    httpserver.expect_request("/feed").respond_with_data("", headers={"ETag": '"v2"'})

    result = await get(client, httpserver.url_for("/feed"), limits, etag=ETAG)

    assert result.outcome is FetchOutcome.NOT_MODIFIED
    assert result.etag == '"v2"'


async def test_empty_200_with_an_etag_on_the_first_poll_is_not_modified(
    httpserver, client, limits
) -> None:
    httpserver.expect_request("/feed").respond_with_data("", headers={"ETag": '"v1"'})

    result = await get(client, httpserver.url_for("/feed"), limits)

    assert result.outcome is FetchOutcome.NOT_MODIFIED
    assert result.etag == '"v1"'


async def test_empty_200_from_a_server_without_validators_is_an_error(
    httpserver, client, limits
) -> None:
    httpserver.expect_request("/feed").respond_with_data("")

    result = await get(client, httpserver.url_for("/feed"), limits)

    assert result.outcome is FetchOutcome.OK and result.body == b""  # the parser refuses it


@pytest.mark.parametrize(
    "etag", ['"café-1"', '"tab\there"', '"' + "x" * 600 + '"'], ids=["non-ascii", "control", "long"]
)
async def test_an_etag_that_cannot_be_sent_back_is_not_kept(
    httpserver, client, limits, etag
) -> None:
    """A non-ASCII one failed every later poll in httpx before it was sent; a long one failed
    the feed's transaction on PostgreSQL (the column holds 512)."""
    headers = [("ETag", etag.encode("utf-8").decode("latin-1"))]
    httpserver.expect_request("/feed").respond_with_data(FEED, headers=headers)

    result = await get(client, httpserver.url_for("/feed"), limits)

    assert result.outcome is FetchOutcome.OK
    assert result.etag is None


async def test_a_stored_etag_that_cannot_be_sent_is_left_out_of_the_request(
    httpserver, client, limits
) -> None:
    httpserver.expect_request("/feed").respond_with_data(FEED)

    result = await get(client, httpserver.url_for("/feed"), limits, etag='"café"')

    assert result.outcome is FetchOutcome.OK
    request, _ = httpserver.log[-1]
    assert "If-None-Match" not in request.headers


# --- redirects ----------------------------------------------------------------------------------


async def test_all_permanent_redirect_chain_sets_permanent_url(httpserver, client, limits) -> None:
    redirect(httpserver, "/a", "/b", 301)
    redirect(httpserver, "/b", "/feed", 308)
    httpserver.expect_request("/feed").respond_with_data(FEED)

    result = await get(client, httpserver.url_for("/a"), limits)

    assert result.outcome is FetchOutcome.OK
    assert result.body == FEED
    assert result.final_url == httpserver.url_for("/feed")
    assert result.permanent_url == httpserver.url_for("/feed")


@pytest.mark.parametrize("temporary", [302, 303, 307])
async def test_a_temporary_redirect_in_the_chain_leaves_permanent_url_unset(
    httpserver, client, limits, temporary: int
) -> None:
    redirect(httpserver, "/a", "/b", 301)
    redirect(httpserver, "/b", "/feed", temporary)
    httpserver.expect_request("/feed").respond_with_data(FEED)

    result = await get(client, httpserver.url_for("/a"), limits)

    assert result.outcome is FetchOutcome.OK
    assert result.final_url == httpserver.url_for("/feed")
    assert result.permanent_url is None


async def test_permanent_redirect_to_an_error_leaves_permanent_url_unset(
    httpserver, client, limits
) -> None:
    redirect(httpserver, "/a", "/feed", 301)
    httpserver.expect_request("/feed").respond_with_data("", status=404)

    result = await get(client, httpserver.url_for("/a"), limits)

    assert result.outcome is FetchOutcome.HTTP_ERROR
    assert result.permanent_url is None


async def test_relative_location_is_resolved_against_the_request_url(
    httpserver, client, limits
) -> None:
    httpserver.expect_request("/old/feed").respond_with_data(
        "", status=308, headers={"Location": "../new/feed"}
    )
    httpserver.expect_request("/new/feed").respond_with_data(FEED)

    result = await get(client, httpserver.url_for("/old/feed"), limits)

    assert result.outcome is FetchOutcome.OK
    assert result.permanent_url == httpserver.url_for("/new/feed")


async def test_redirect_loop_is_detected(httpserver, client, limits) -> None:
    redirect(httpserver, "/a", "/b", 301)
    redirect(httpserver, "/b", "/a", 302)

    result = await get(client, httpserver.url_for("/a"), limits)

    assert result.outcome is FetchOutcome.REDIRECT_LOOP
    assert result.error == f"redirect loop at {httpserver.url_for('/a')}"
    assert len(httpserver.log) == 2


async def test_five_redirects_are_followed(httpserver, client, limits) -> None:
    for i in range(5):
        redirect(httpserver, f"/r{i}", f"/r{i + 1}", 301)
    httpserver.expect_request("/r5").respond_with_data(FEED)

    result = await get(client, httpserver.url_for("/r0"), limits)

    assert result.outcome is FetchOutcome.OK
    assert result.permanent_url == httpserver.url_for("/r5")


async def test_a_sixth_redirect_is_too_many(httpserver, client, limits) -> None:
    for i in range(6):
        redirect(httpserver, f"/r{i}", f"/r{i + 1}", 301)
    httpserver.expect_request("/r6").respond_with_data(FEED)

    result = await get(client, httpserver.url_for("/r0"), limits)

    assert result.outcome is FetchOutcome.TOO_MANY_REDIRECTS
    assert result.error == "more than 5 redirects"
    assert len(httpserver.log) == 6


async def test_redirect_without_location_is_an_http_error(httpserver, client, limits) -> None:
    httpserver.expect_request("/feed").respond_with_data(FEED, status=301)

    result = await get(client, httpserver.url_for("/feed"), limits)

    assert result.outcome is FetchOutcome.HTTP_ERROR
    assert result.body is None


async def test_redirect_to_a_non_http_scheme_is_rejected(httpserver, client, limits) -> None:
    httpserver.expect_request("/feed").respond_with_data(
        "", status=301, headers={"Location": "file:///etc/passwd"}
    )

    result = await get(client, httpserver.url_for("/feed"), limits)

    assert result.outcome is FetchOutcome.INVALID_URL
    assert result.body is None


# --- HTTP errors --------------------------------------------------------------------------------


async def test_404_is_an_http_error_with_its_reason(httpserver, client, limits) -> None:
    httpserver.expect_request("/feed").respond_with_data("nope", status=404)

    result = await get(client, httpserver.url_for("/feed"), limits)

    assert result.outcome is FetchOutcome.HTTP_ERROR
    assert (result.status, result.error, result.body) == (404, "HTTP 404 Not Found", None)


async def test_500_is_an_http_error(httpserver, client, limits) -> None:
    httpserver.expect_request("/feed").respond_with_data("boom", status=500)

    result = await get(client, httpserver.url_for("/feed"), limits)

    assert result.outcome is FetchOutcome.HTTP_ERROR
    assert result.error == "HTTP 500 Internal Server Error"


async def test_410_is_gone(httpserver, client, limits) -> None:
    httpserver.expect_request("/feed").respond_with_data("", status=410)

    result = await get(client, httpserver.url_for("/feed"), limits)

    assert result.outcome is FetchOutcome.GONE
    assert result.status == 410


async def test_429_with_retry_after_seconds(httpserver, client, limits) -> None:
    httpserver.expect_request("/feed").respond_with_data(
        "", status=429, headers={"Retry-After": "120"}
    )

    result = await get(client, httpserver.url_for("/feed"), limits)

    assert result.outcome is FetchOutcome.RATE_LIMITED
    assert result.retry_after == timedelta(seconds=120)


async def test_429_with_retry_after_http_date(httpserver, client, limits) -> None:
    when = datetime.now(UTC) + timedelta(minutes=10)
    httpserver.expect_request("/feed").respond_with_data(
        "", status=429, headers={"Retry-After": format_datetime(when, usegmt=True)}
    )

    result = await get(client, httpserver.url_for("/feed"), limits)

    assert result.outcome is FetchOutcome.RATE_LIMITED
    assert result.retry_after is not None
    assert timedelta(minutes=9) < result.retry_after <= timedelta(minutes=10)


async def test_503_without_retry_after_is_rate_limited(httpserver, client, limits) -> None:
    httpserver.expect_request("/feed").respond_with_data("", status=503)

    result = await get(client, httpserver.url_for("/feed"), limits)

    assert result.outcome is FetchOutcome.RATE_LIMITED
    assert result.retry_after is None
    assert result.error == "HTTP 503 Service Unavailable"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("86400000", timedelta(hours=24)),
        ("99999999999999999999999", timedelta(hours=24)),
        ("Wed, 01 Jan 2020 00:00:00 GMT", timedelta(0)),
        ("soon", None),
        ("", None),
    ],
)
def test_retry_after_is_clamped_to_a_day_and_never_negative(
    header: str, expected: timedelta | None
) -> None:
    assert parse_retry_after(header) == expected


# --- timeouts and network errors ----------------------------------------------------------------


async def test_a_server_that_never_answers_times_out(httpserver, client, unblock) -> None:
    def stall(_request: Request) -> Response:
        unblock.wait(10)
        return Response(FEED)

    httpserver.expect_request("/feed").respond_with_handler(stall)

    result = await get(client, httpserver.url_for("/feed"), FetchLimits(timeout=0.5))

    assert result.outcome is FetchOutcome.TIMEOUT
    assert result.error == "timed out after 0.5s"
    assert result.elapsed < 2


async def test_a_trickling_body_times_out_at_the_total_limit(httpserver, client, unblock) -> None:
    def trickle() -> Iterator[bytes]:
        yield FEED[:10]
        while not unblock.wait(0.05):  # a byte every 50 ms defeats any per-read timeout
            yield b" "

    httpserver.expect_request("/feed").respond_with_handler(lambda _r: Response(trickle()))

    result = await get(client, httpserver.url_for("/feed"), FetchLimits(timeout=0.5))

    assert result.outcome is FetchOutcome.TIMEOUT
    assert result.elapsed < 2


async def test_connection_refused_is_a_network_error(client, limits) -> None:
    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    result = await get(client, f"http://127.0.0.1:{port}/feed", limits)

    assert result.outcome is FetchOutcome.NETWORK_ERROR
    assert result.error


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/feed", "file:///etc/passwd", "not a url"])
async def test_non_http_urls_are_rejected_without_a_request(client, limits, url: str) -> None:
    result = await get(client, url, limits)

    assert result.outcome is FetchOutcome.INVALID_URL
    assert result.error


# --- size limits and encodings ------------------------------------------------------------------


async def test_declared_content_length_over_the_cap_is_rejected(httpserver, client, limits) -> None:
    httpserver.expect_request("/feed").respond_with_data(b"x" * (limits.max_bytes + 1))

    result = await get(client, httpserver.url_for("/feed"), limits)

    assert result.outcome is FetchOutcome.TOO_LARGE
    assert result.body is None
    assert result.error == "body of 0.3 MiB exceeds 0.2 MiB"


async def test_streamed_body_over_the_cap_stops_early(httpserver, client, limits) -> None:
    sent = 0
    chunk = b"x" * 65536
    total = 2 * 1024**3

    def endless() -> Iterator[bytes]:
        nonlocal sent
        while sent < total:
            sent += len(chunk)
            yield chunk

    httpserver.expect_request("/feed").respond_with_handler(lambda _r: Response(endless()))

    result = await get(client, httpserver.url_for("/feed"), limits)

    assert result.outcome is FetchOutcome.TOO_LARGE
    assert result.error == "body exceeds 0.2 MiB"
    assert sent < 64 * 1024**2  # the server stopped once we hung up, far short of 2 GiB


async def test_gzip_body_is_decompressed(httpserver, client, limits) -> None:
    httpserver.expect_request(
        "/feed", headers={"Accept-Encoding": "gzip, deflate"}
    ).respond_with_data(gzip.compress(FEED), headers={"Content-Encoding": "gzip"})

    result = await get(client, httpserver.url_for("/feed"), limits)

    assert result.outcome is FetchOutcome.OK
    assert result.body == FEED


async def test_raw_deflate_body_is_decompressed(httpserver, client, limits) -> None:
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    httpserver.expect_request("/feed").respond_with_data(
        raw.compress(FEED) + raw.flush(), headers={"Content-Encoding": "deflate"}
    )

    result = await get(client, httpserver.url_for("/feed"), limits)

    assert result.outcome is FetchOutcome.OK
    assert result.body == FEED


async def test_gzip_bomb_is_cut_off_without_inflating_it(httpserver, client, limits) -> None:
    bomb = gzip.compress(bytes(64 * 1024**2), compresslevel=9)  # 64 MiB of zeros in ~64 KiB
    httpserver.expect_request("/feed").respond_with_data(bomb, headers={"Content-Encoding": "gzip"})

    tracemalloc.start()
    try:
        result = await get(client, httpserver.url_for("/feed"), limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result.outcome is FetchOutcome.TOO_LARGE
    # Inflating a whole 64 KiB network read of this bomb would allocate 64 MiB at once; the margin
    # below that absorbs whatever the in-process server threads allocate meanwhile.
    assert peak < 32 * 1024**2


async def test_corrupt_gzip_is_a_network_error(httpserver, client, limits) -> None:
    httpserver.expect_request("/feed").respond_with_data(
        b"not gzip at all", headers={"Content-Encoding": "gzip"}
    )

    result = await get(client, httpserver.url_for("/feed"), limits)

    assert result.outcome is FetchOutcome.NETWORK_ERROR
    assert result.error is not None
    assert result.error.startswith("could not decompress")


# --- load ---------------------------------------------------------------------------------------


async def test_200_concurrent_fetches_through_a_semaphore_all_succeed(
    httpserver, client, limits
) -> None:
    httpserver.expect_request("/feed").respond_with_data(FEED)
    gate = asyncio.BoundedSemaphore(50)

    async def one(i: int) -> FetchResult:
        async with gate:
            return await get(client, httpserver.url_for(f"/feed?n={i}"), limits)

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(one(i)) for i in range(200)]

    outcomes = [t.result().outcome for t in tasks]
    assert outcomes == [FetchOutcome.OK] * 200
    assert len(httpserver.log) == 200


async def test_unparseable_url_is_invalid_not_an_exception(client, limits) -> None:
    result = await get(client, "http://[::1/feed", limits)

    assert result.outcome is FetchOutcome.INVALID_URL


async def test_unparseable_redirect_location_is_a_network_error(client, limits) -> None:
    # werkzeug refuses to send this header, so a raw loopback socket answers instead
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 301 Moved Permanently\r\nLocation: http://[::1/feed\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await get(client, f"http://127.0.0.1:{port}/feed", limits)

    assert result.outcome is FetchOutcome.NETWORK_ERROR
    assert result.error is not None
    assert "location" in result.error.lower()

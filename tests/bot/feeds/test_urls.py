"""canonical_url and validate_feed_url."""

from __future__ import annotations

import pytest

from bot.feeds.urls import canonical_url, validate_feed_url


def test_canonical_url_drops_utm_fbclid_and_gclid() -> None:
    url = "https://news.example/a?utm_source=rss&utm_MEDIUM=x&fbclid=1&gclid=2&id=7"

    assert canonical_url(url) == "https://news.example/a?id=7"


def test_canonical_url_lowercases_scheme_and_host_but_not_path() -> None:
    assert canonical_url("HTTPS://News.Example/Story/A") == "https://news.example/Story/A"


def test_canonical_url_drops_default_ports_only() -> None:
    assert canonical_url("http://news.example:80/a") == "http://news.example/a"
    assert canonical_url("https://news.example:443/a") == "https://news.example/a"
    assert canonical_url("https://news.example:8443/a") == "https://news.example:8443/a"


def test_canonical_url_drops_the_fragment() -> None:
    assert canonical_url("https://news.example/a#comments") == "https://news.example/a"


def test_canonical_url_keeps_other_params_in_order_and_as_spelled() -> None:
    url = "https://news.example/a?z=1&flag&q=a%2Fb+c&utm_campaign=x&a=2"

    assert canonical_url(url) == "https://news.example/a?z=1&flag&q=a%2Fb+c&a=2"


def test_canonical_url_gives_an_empty_path_a_slash() -> None:
    assert canonical_url("https://news.example?utm_source=x") == "https://news.example/"


def test_canonical_url_leaves_non_http_urls_alone() -> None:
    assert canonical_url(" mailto:desk@news.example ") == "mailto:desk@news.example"


def test_validate_feed_url_strips_and_normalises() -> None:
    assert (
        validate_feed_url("  HTTP://News.Example/feed?x=1#top \n") == "http://news.example/feed?x=1"
    )


def test_validate_feed_url_keeps_tracking_looking_params() -> None:
    # a feed URL is an address to poll, not an article key: its query may be load-bearing
    assert validate_feed_url("https://news.example/rss?ref_src=app") == (
        "https://news.example/rss?ref_src=app"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty URL"),
        ("news.example/feed", "must start with http:// or https://"),
        ("ftp://news.example/feed", "only http:// and https://"),
        ("javascript://alert(1)", "only http:// and https://"),
        ("http:///feed", "no host"),
        ("http://news.example:port/feed", "cannot parse URL"),
        ("http://news.example/a feed", "spaces"),
    ],
)
def test_validate_feed_url_rejects_with_a_reason(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_feed_url(url)

"""parse_feed and clean_text on feed bytes as servers really send them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from bot.feeds.parse import NotAFeed, ParsedFeed, clean_text, parse_feed

FETCHED_AT = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
URL = "https://news.example/feed.xml"
RSS_TYPE = "application/rss+xml; charset=utf-8"


def rss(items: str, *, encoding: str = "utf-8", title: str = "Example News") -> str:
    return (
        f"<?xml version='1.0' encoding='{encoding}'?><rss version='2.0'><channel>"
        f"<title>{title}</title><link>https://News.example/</link>{items}</channel></rss>"
    )


def parse(body: bytes | str, content_type: str | None = RSS_TYPE) -> ParsedFeed:
    data = body.encode() if isinstance(body, str) else body
    return parse_feed(data, url=URL, content_type=content_type, fetched_at=FETCHED_AT)


# --- the happy path -----------------------------------------------------------------------------


def test_rss_item_becomes_a_clean_entry() -> None:
    feed = parse(
        rss(
            "<item><title>Rates rise</title><link>https://news.example/a</link>"
            "<guid isPermaLink='false'>id-1</guid>"
            "<pubDate>Tue, 10 Mar 2026 09:30:00 +0100</pubDate>"
            "<description>The bank &lt;b&gt;raised&lt;/b&gt; rates.</description>"
            "<author>desk@news.example (Ana Ruiz)</author></item>"
        )
    )

    assert (feed.title, feed.site_url, feed.skipped) == ("Example News", "https://news.example/", 0)
    [entry] = feed.entries
    assert entry.entry_key == "id-1"
    assert entry.url == "https://news.example/a"
    assert entry.title == "Rates rise"
    assert entry.summary == "The bank raised rates."
    assert entry.published == datetime(2026, 3, 10, 8, 30, tzinfo=UTC)
    assert entry.author == "desk@news.example (Ana Ruiz)"


def test_atom_entry_without_published_uses_updated() -> None:
    atom = (
        "<?xml version='1.0' encoding='utf-8'?><feed xmlns='http://www.w3.org/2005/Atom'>"
        "<title>Atom News</title><link href='https://atom.example/'/>"
        "<entry><id>tag:atom.example,2026:1</id><title type='html'>A &amp;amp; B</title>"
        "<link href='https://atom.example/1'/><updated>2026-03-09T08:00:00Z</updated></entry>"
        "</feed>"
    )

    [entry] = parse(atom, "application/atom+xml").entries

    assert entry.entry_key == "tag:atom.example,2026:1"
    assert entry.title == "A & B"
    assert entry.published == datetime(2026, 3, 9, 8, 0, tzinfo=UTC)


def test_feed_with_no_items_is_an_empty_feed_not_an_error() -> None:
    feed = parse(rss(""))

    assert feed.entries == ()
    assert feed.title == "Example News"


def test_relative_link_is_resolved_against_the_feed_url_and_canonicalised() -> None:
    [entry] = parse(
        rss("<item><title>T</title><link>/story/1?utm_source=rss&amp;id=7</link></item>")
    ).entries

    assert entry.url == "https://news.example/story/1?id=7"


# --- broken input -------------------------------------------------------------------------------


def test_malformed_xml_still_yields_entries_with_a_warning() -> None:
    body = (
        "<rss version='2.0'><channel><title>Broken</title>"
        "<item><title>Tom & Jerry</title><guid>1</guid></item>"
        "<item><title>Second</title><guid>2</guid></item>"
    )  # a bare "&" and no closing tags

    feed = parse(body)

    assert [e.title for e in feed.entries] == ["Tom & Jerry", "Second"]
    assert len(feed.warnings) == 1
    assert "not well-formed" in feed.warnings[0]


def test_html_page_is_not_a_feed() -> None:
    page = "<!DOCTYPE html><html><head><title>Home</title></head><body><p>Hi</p></body></html>"

    with pytest.raises(NotAFeed, match="the URL served HTML, not RSS/Atom"):
        parse(page, "text/html; charset=utf-8")


def test_empty_body_is_not_a_feed() -> None:
    with pytest.raises(NotAFeed, match="empty"):
        parse(b"  \n")


def test_a_body_that_spells_a_local_path_is_not_opened(tmp_path) -> None:
    secret = tmp_path / "secret.xml"
    secret.write_text(rss("<item><title>secret</title><guid>s</guid></item>"))

    with pytest.raises(NotAFeed):
        parse(str(secret).encode(), "application/xml")


# --- character sets -----------------------------------------------------------------------------


def test_windows_1252_bytes_labelled_utf8_are_decoded() -> None:
    body = rss("<item><title>Caf\u00e9 \u201cNoir\u201d</title><guid>1</guid></item>").encode(
        "cp1252"
    )

    feed = parse(body, "application/rss+xml; charset=utf-8")

    assert feed.entries[0].title == "Caf\u00e9 \u201cNoir\u201d"
    assert feed.warnings  # feedparser reports the override


def test_charset_in_the_xml_prolog_is_used_when_the_header_has_none() -> None:
    body = rss("<item><title>Mall\u00f6rca</title><guid>1</guid></item>", encoding="iso-8859-1")

    feed = parse(body.encode("iso-8859-1"), "application/rss+xml")

    assert feed.entries[0].title == "Mall\u00f6rca"


def test_missing_content_type_still_parses() -> None:
    feed = parse(rss("<item><title>\u00dcber</title><guid>1</guid></item>"), None)

    assert feed.entries[0].title == "\u00dcber"


# --- entry keys and duplicates ------------------------------------------------------------------


def test_duplicate_guids_keep_the_first_entry() -> None:
    feed = parse(
        rss(
            "<item><title>First</title><guid>same</guid></item>"
            "<item><title>Second</title><guid>same</guid></item>"
            "<item><title>Third</title><guid>other</guid></item>"
        )
    )

    assert [e.title for e in feed.entries] == ["First", "Third"]


def test_entry_without_guid_is_keyed_by_its_link() -> None:
    [entry] = parse(rss("<item><title>T</title><link>https://news.example/x</link></item>")).entries

    assert entry.entry_key == "https://news.example/x"


def test_entry_without_guid_link_or_date_gets_a_stable_hash_key_and_fetch_time() -> None:
    body = rss("<item><title>Bare</title><description>Only text.</description></item>")

    first, again = parse(body).entries[0], parse(body).entries[0]

    assert first.entry_key.startswith("sha1:")
    assert first.entry_key == again.entry_key
    assert first.url == ""
    assert first.published == FETCHED_AT


def test_hash_keys_differ_when_summaries_differ() -> None:
    feed = parse(
        rss(
            "<item><title>Update</title><description>One</description></item>"
            "<item><title>Update</title><description>Two</description></item>"
        )
    )

    assert len({e.entry_key for e in feed.entries}) == 2


# --- dates --------------------------------------------------------------------------------------


def test_far_future_date_is_clamped_to_fetch_time() -> None:
    future = format_datetime(FETCHED_AT + timedelta(days=30))
    [entry] = parse(
        rss(f"<item><title>T</title><guid>1</guid><pubDate>{future}</pubDate></item>")
    ).entries

    assert entry.published == FETCHED_AT


def test_date_less_than_an_hour_ahead_is_kept() -> None:
    soon = FETCHED_AT + timedelta(minutes=30)
    [entry] = parse(
        rss(
            f"<item><title>T</title><guid>1</guid><pubDate>{format_datetime(soon)}</pubDate></item>"
        )
    ).entries

    assert entry.published == soon


def test_naive_fetch_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_feed(
            rss("").encode(),
            url=URL,
            content_type=RSS_TYPE,
            fetched_at=FETCHED_AT.replace(tzinfo=None),
        )


# --- text cleaning ------------------------------------------------------------------------------


def test_html_in_titles_is_stripped_and_unescaped() -> None:
    [entry] = parse(
        rss(
            "<item><title>&lt;b&gt;Breaking:&lt;/b&gt;  Caf&amp;eacute; &amp;amp; bar</title><guid>1</guid></item>"
        )
    ).entries

    assert entry.title == "Breaking: Caf\u00e9 & bar"


def test_missing_title_falls_back_to_the_start_of_the_summary() -> None:
    words = " ".join(f"word{i}" for i in range(60))
    [entry] = parse(rss(f"<item><guid>1</guid><description>{words}</description></item>")).entries

    assert entry.title.startswith("word0 word1")
    assert entry.title.endswith("\u2026")
    assert len(entry.title) <= 120


def test_entry_without_title_or_summary_is_skipped_and_counted() -> None:
    feed = parse(rss("<item><guid>1</guid></item><item><title>Kept</title><guid>2</guid></item>"))

    assert [e.title for e in feed.entries] == ["Kept"]
    assert feed.skipped == 1


def test_clean_text_drops_script_and_style_contents() -> None:
    html = "<style>p{color:red}</style><p>Hello</p><script>alert('x')</script><p>world</p>"

    assert clean_text(html) == "Hello world"


def test_clean_text_collapses_whitespace_and_nbsp() -> None:
    assert clean_text("  a\n\t b&nbsp;&nbsp;c  ") == "a b c"


def test_clean_text_cuts_on_a_word_boundary_with_an_ellipsis() -> None:
    text = "alpha beta gamma delta epsilon"

    assert clean_text(text, limit=20) == "alpha beta gamma\u2026"


def test_clean_text_keeps_a_less_than_sign_in_plain_text() -> None:
    assert clean_text("a < b and c > d") == "a < b and c > d"


def test_long_summary_is_capped_at_1000_characters() -> None:
    words = " ".join(["lorem"] * 400)
    [entry] = parse(
        rss(f"<item><title>T</title><guid>1</guid><description>{words}</description></item>")
    ).entries

    assert len(entry.summary) <= 1000
    assert entry.summary.endswith("lorem\u2026")

"""Digest composition and rendering: citations, escaping, Telegram's length limit."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from html.parser import HTMLParser

import pytest

from bot.digests.compose import (
    DigestArticle,
    StoryUpdate,
    compose_group_digest,
    compose_story_digest,
)
from bot.digests.render import (
    MAX_MESSAGE,
    plain_fallback,
    render_group_digest,
    render_plain,
    render_story_digest,
    story_buttons,
    telegram_length,
)

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
ALLOWED = {
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "a",
    "code",
    "pre",
    "blockquote",
    "tg-spoiler",
    "span",
}


class TelegramHTML(HTMLParser):
    """Accepts only what Telegram's HTML parse mode accepts: its tags, properly nested."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):  # type: ignore[no-untyped-def]
        if tag not in ALLOWED:
            self.errors.append(f"tag {tag}")
        if tag == "a" and not dict(attrs).get("href", "").startswith(("http://", "https://")):
            self.errors.append(f"href {attrs}")
        self.stack.append(tag)

    def handle_endtag(self, tag):  # type: ignore[no-untyped-def]
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unbalanced {tag}")


def assert_valid(message: str) -> None:
    parser = TelegramHTML()
    parser.feed(message)
    parser.close()
    assert not parser.errors and not parser.stack, (parser.errors, parser.stack)
    assert re.search(r"<(?![/a-z])", message) is None, "a bare < would break Telegram's parser"


def article(
    i: int, title: str, summary: str = "", source: str | None = None, url: str | None = None
) -> DigestArticle:
    return DigestArticle(
        i, title, summary, url or f"https://news.example/{i}", source or f"Outlet {i}", NOW
    )


SUMMIT = [
    article(
        1,
        "Lee travels to Nara for two-day summit with Takaichi",
        "Lee Jae-myung travelled to Nara on Tuesday for a two-day summit with Prime Minister Takaichi. Trade and security top the agenda.",
        "Yonhap",
    ),
    article(
        2,
        "Korea and Japan leaders meet in Nara for summit",
        "President Lee travelled to Nara for a two-day summit with Prime Minister Takaichi. Chip export controls are on the table.",
        "Kyodo",
    ),
    article(
        3,
        "Lee and Takaichi pledge closer ties at Nara summit",
        "The two leaders pledged closer security cooperation at their Nara summit.",
        "Korea Herald",
    ),
    article(
        4,
        "What to expect from the Nara summit",
        "Analysts expect little progress on historical disputes.",
        "NHK",
    ),
]


def update(articles, *, total: int = 12) -> StoryUpdate:  # type: ignore[no-untyped-def]
    return StoryUpdate(42, "Lee's Nara Summit Reinforces Korea-Japan Ties", total, tuple(articles))


def test_summary_has_two_to_four_sentences():
    digest = compose_story_digest(update(SUMMIT))
    assert 2 <= len(digest.sentences) <= 4


def test_a_sentence_cites_every_article_that_says_it():
    digest = compose_story_digest(update(SUMMIT))
    travelled = next(s for s in digest.sentences if "travelled to Nara" in s.text)
    outlets = {digest.sources[n - 1].outlet for n in travelled.citations}
    assert {"Yonhap", "Kyodo"} <= outlets


def test_citations_point_into_the_numbered_sources():
    digest = compose_story_digest(update(SUMMIT))
    numbers = [s.number for s in digest.sources]
    assert numbers == list(range(1, len(numbers) + 1))
    assert digest.sentences[0].citations[0] == 1
    for sentence in digest.sentences:
        assert set(sentence.citations) <= set(numbers)


def test_near_duplicate_sentences_are_not_both_chosen():
    same = [
        article(i, "Storm Ciaran batters southern England with 100mph winds") for i in range(1, 5)
    ]
    same.append(article(5, "Thousands without power after Storm Ciaran hits England"))
    digest = compose_story_digest(update(same))
    texts = [s.text for s in digest.sentences]
    assert sum("batters" in t for t in texts) == 1
    batters = next(s for s in digest.sentences if "batters" in s.text)
    assert len(batters.citations) == 4


def test_boilerplate_is_never_chosen():
    arts = [
        article(
            1,
            "Court blocks merger",
            "The post Court blocks merger appeared first on Example News. Click here to read more.",
        )
    ]
    arts.append(
        article(
            2,
            "Judge halts merger of two grocers",
            "A federal judge halted the merger of the two grocery chains on Monday.",
        )
    )
    digest = compose_story_digest(update(arts))
    assert not any("appeared first" in s.text or "Click here" in s.text for s in digest.sentences)


def test_composition_is_deterministic():
    assert compose_story_digest(update(SUMMIT)) == compose_story_digest(update(SUMMIT))


def test_rendered_digest_has_the_target_shape():
    [message] = render_story_digest(compose_story_digest(update(SUMMIT)))
    lines = message.splitlines()
    assert lines[0] == "<b>Lee&#x27;s Nara Summit Reinforces Korea-Japan Ties</b>" or lines[
        0
    ].startswith("<b>Lee")
    assert lines[1] == "Updated (4 new articles)"
    assert re.search(r"\[1\](\[\d+\])*\.", message), "citations sit before the full stop"
    assert "Sources (4 outlets): [1] <a href=" in message
    assert message.rstrip().endswith("All related articles (12): /story 42")
    assert_valid(message)


def test_hostile_feed_text_is_escaped():
    evil = article(
        1,
        "<script>alert(1)</script> </b> Tom & Jerry \"quoted\" <a href='x'>",
        "Plain <b>bold</b> & <i>unclosed",
        source="<b>Evil</b> & Co",
        url='https://evil.example/?q="><script>',
    )
    js = article(2, "Second article about Tom and Jerry", source="JS", url="javascript:alert(1)")
    messages = render_story_digest(
        compose_story_digest(StoryUpdate(1, "</b><i>Headline & more", 2, (evil, js)))
    )
    for message in messages:
        assert_valid(message)
        assert "<script>" not in message and "javascript:" not in message
    plain = render_plain("".join(messages))
    assert "<script>alert(1)</script>" in plain and "Tom & Jerry" in plain


def test_every_chunk_fits_telegram_and_keeps_citations_whole():
    arts = [
        article(
            i,
            f"Article {i} about the summit in Nara with many words " * 3,
            "Leaders met. " * 5,
            url=f"https://n.example/{'x' * 1500}/{i}",
        )
        for i in range(1, 201)
    ]
    giant = StoryUpdate(7, "H" * 10_000, 200, tuple(arts))
    messages = render_story_digest(compose_story_digest(giant))
    assert messages
    for message in messages:
        assert telegram_length(message) <= MAX_MESSAGE
        assert_valid(message)
        assert not re.search(r"\[\d*$", message.rstrip()), "a citation was cut"


def test_telegram_length_counts_utf16_after_entities():
    assert telegram_length("<b>a&amp;b</b>") == 3
    assert telegram_length("😀") == 2


def test_group_digest_has_one_cited_sentence_per_story():
    digests = compose_group_digest(
        [
            update(SUMMIT),
            StoryUpdate(9, "Other story", 3, (article(9, "Chiquita and Fyffes agree merger"),)),
        ]
    )
    assert [len(d.sentences) for d in digests] == [1, 1]
    [message] = render_group_digest(digests, title="Top stories — Tue 10 Mar")
    assert_valid(message)
    assert "<b>1. Lee" in message and "<b>2. Other story</b>" in message and "/story 9" in message


@pytest.mark.parametrize("following", [True, False])
def test_button_callback_data_fits_telegram(following):
    for row in story_buttons(2**40, following=following):
        for _, data in row:
            assert len(data.encode()) <= 64


def test_plain_fallback_fits_telegram_counting_utf16():
    html_message = (
        "<b>" + "😀" * 3000 + '</b> <a href="https://x.example/' + "y" * 3000 + '">link</a>'
    )
    text = plain_fallback(html_message)
    assert len(text.encode("utf-16-le")) // 2 <= MAX_MESSAGE
    assert "https://" not in text  # the URL did not fit, so names only

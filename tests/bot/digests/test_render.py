"""Digest rendering: Telegram HTML that is escaped, valid, and split within Telegram's limit."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

import pytest

from bot.digests.compose import (
    CitedSentence,
    SourceRef,
    StoryDigest,
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
from tests.bot.digests import SUMMIT, article, update

TELEGRAM_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre"}
ENTITY = re.compile(r"&(?!(lt|gt|amp|quot|#\d+|#x[0-9a-fA-F]+);)")


class TelegramHTML(HTMLParser):
    """Accepts only what Telegram's HTML parse mode accepts: its tags, properly nested."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in TELEGRAM_TAGS:
            self.errors.append(f"tag {tag}")
        href = dict(attrs).get("href") or ""
        if tag == "a" and not href.startswith(("http://", "https://")):
            self.errors.append(f"href {href!r}")
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unbalanced {tag}")


def assert_valid_telegram_html(message: str) -> None:
    parser = TelegramHTML()
    parser.feed(message)
    parser.close()
    assert not parser.errors and not parser.stack, (parser.errors, parser.stack)
    assert re.search(r"<(?![/a-z])", message) is None, "a bare < breaks Telegram's parser"
    assert ENTITY.search(message) is None, "a bare & or unknown entity breaks Telegram's parser"
    assert 0 < telegram_length(message) <= MAX_MESSAGE


def digest_of(sentences: list[str], *, headline: str = "Headline", sources: int = 2) -> StoryDigest:
    refs = tuple(
        SourceRef(n, f"Outlet {n}", f"https://news.example/{n}", f"Title {n}")
        for n in range(1, sources + 1)
    )
    cited = tuple(CitedSentence(text, (1, 2)) for text in sentences)
    return StoryDigest(42, headline, sources, cited, refs, 12)


def test_a_digest_renders_in_the_target_format():
    digest = StoryDigest(
        42,
        "Lee's Nara Summit Reinforces Korea-Japan Ties",
        5,
        (CitedSentence("Lee travelled to Nara.", (1, 2)), CitedSentence("Talks began.", (3,))),
        (
            SourceRef(1, "Yonhap", "https://yna.example/1", "t"),
            SourceRef(2, "Kyodo", "https://kyodo.example/2", "t"),
            SourceRef(3, "Yonhap", "https://yna.example/3", "t"),
        ),
        12,
    )
    assert render_story_digest(digest) == [
        "<b>Lee's Nara Summit Reinforces Korea-Japan Ties</b>\n"
        "Updated (5 articles)\n\n"
        "Lee travelled to Nara [1][2]. Talks began [3].\n\n"
        'Sources (3 articles): [1] <a href="https://yna.example/1">Yonhap</a> · '
        '[2] <a href="https://kyodo.example/2">Kyodo</a> · '
        '[3] <a href="https://yna.example/3">Yonhap</a> · and 2 more articles\n\n'
        "All related articles (12 articles): /story 42"
    ]


def test_a_composed_digest_is_one_valid_message():
    [message] = render_story_digest(compose_story_digest(update(SUMMIT)))
    assert_valid_telegram_html(message)
    assert "Sources (5 articles): [1] <a href=" in message
    assert message.endswith("All related articles (12 articles): /story 42")


def test_hostile_feed_text_is_escaped_into_valid_telegram_html():
    evil = article(
        1,
        "<script>alert(1)</script> </b> Tom & Jerry \"quoted\" <a href='x'> escape",
        "Plain <b>bold</b> & <i>unclosed text that keeps going for a while.",
        source="<b>Evil</b> & Co",
        url='https://evil.example/?q="><script>&x=1',
    )
    other = article(2, "Tom & Jerry escape <again> from the cat", source="JS & Co")
    story = StoryUpdate(1, "</b><i>Headline & more", 2, (evil, other))
    messages = render_story_digest(compose_story_digest(story))
    for message in messages:
        assert_valid_telegram_html(message)
        assert "<script>" not in message and "<i>" not in message
    assert 'href="https://evil.example/?q=&quot;&gt;&lt;script&gt;&amp;x=1"' in messages[0]


def test_javascript_urls_are_not_links():
    js = article(1, "Tom and Jerry escape from the cat", source="JS", url="javascript:alert(1)")
    [message] = render_story_digest(compose_story_digest(update([js])))
    assert "javascript:" not in message
    assert "[1] JS" in message
    assert_valid_telegram_html(message)


def test_telegram_length_counts_utf16_after_entities():
    assert telegram_length("<b>a&amp;b</b>") == 3
    assert telegram_length('<a href="https://x.example/long">x</a>') == 1
    assert telegram_length("😀") == 2


def test_every_chunk_fits_for_200_articles_and_a_10000_char_title():
    arts = [
        article(
            i,
            f"Article {i} about the summit in Nara with many words " * 3,
            "Leaders met. " * 5,
            url=f"https://n.example/{'x' * 1500}/{i}",
        )
        for i in range(200)
    ]
    giant = StoryUpdate(7, "H&" * 5_000, 200, tuple(arts))
    messages = render_story_digest(compose_story_digest(giant))
    for message in messages:
        assert_valid_telegram_html(message)


def test_chunks_break_between_paragraphs_when_paragraphs_fit():
    sentences = [f"Sentence {i} says something new about the summit in Nara." for i in range(62)]
    digest = digest_of(sentences, sources=10)
    digest = StoryDigest(42, "Headline", 10, digest.sentences, digest.sources, 12)
    messages = render_story_digest(digest)
    assert len(messages) == 2
    assert messages[0].startswith("<b>Headline</b>") and messages[0].endswith(
        "summit in Nara [1][2]."
    )
    assert messages[1].startswith("Sources (10 articles): [1] <a href=")


def test_a_paragraph_too_long_for_one_message_splits_between_sentences():
    sentences = [f"Sentence number {i} says something new about the summit." for i in range(150)]
    messages = render_story_digest(digest_of(sentences))
    assert len(messages) > 1
    assert messages[0].startswith("<b>Headline</b>\nUpdated (2 articles)\n\nSentence number 0 ")
    for message in messages:
        assert_valid_telegram_html(message)
    joined = "\n\n".join(messages)
    for i in range(150):
        assert f"Sentence number {i} says something new about the summit [1][2]." in joined


def test_no_chunk_ends_inside_a_citation():
    digest = digest_of([f"Claim {i} is supported by two outlets here." for i in range(400)])
    messages = render_story_digest(digest)
    assert len(messages) > 1
    for message in messages:
        assert not re.search(r"\[\d*$", message)
        assert message.count("[") == message.count("]")


def test_an_oversized_sentence_is_split_between_words():
    words = [f"word{i}" for i in range(1500)]
    messages = render_story_digest(digest_of([" ".join(words)]))
    assert len(messages) > 1
    for message in messages:
        assert_valid_telegram_html(message)
    plain_words = " ".join(render_plain(m) for m in messages).split()
    assert [w for w in plain_words if w.startswith("word")] == words


def test_a_wall_without_spaces_is_cut_without_breaking_entities():
    wall = "&<>😀" * 3000
    messages = render_story_digest(digest_of([wall]))
    for message in messages:
        assert_valid_telegram_html(message)
    assert wall in "".join(html.unescape(m) for m in messages)


def test_group_digest_numbers_stories_with_one_cited_sentence_each():
    other = StoryUpdate(9, "Banana & merger", 3, (article(9, "Chiquita and Fyffes agree merger"),))
    digests = compose_group_digest([update(SUMMIT), other])
    [message] = render_group_digest(digests, title="Top stories — Tue 25 Nov")
    assert_valid_telegram_html(message)
    assert message.startswith("<b>Top stories — Tue 25 Nov</b>\n\n<b>1. Lee's Nara Summit")
    assert "<b>2. Banana &amp; merger</b>\nChiquita and Fyffes agree merger [1].\n" in message
    assert "1 outlet: [1] <a href=" in message and message.endswith("/story 9")


def test_a_long_group_digest_fits_telegram():
    stories = [update(SUMMIT, story_id=n) for n in range(60)]
    messages = render_group_digest(compose_group_digest(stories), title="Top stories")
    assert len(messages) > 1
    for message in messages:
        assert_valid_telegram_html(message)


def test_render_plain_reads_like_the_message():
    [message] = render_story_digest(compose_story_digest(update(SUMMIT)))
    plain = render_plain(message)
    assert plain.startswith("Lee's Nara Summit Reinforces Korea-Japan Ties")
    assert "[1] Yonhap (https://en.yna.co.kr/view/AEN20251125000100315) · [2] Kyodo (" in plain
    assert "<" not in plain and "&amp;" not in plain


def test_render_plain_round_trips_escaped_text():
    messages = render_story_digest(digest_of(['Tom & Jerry say "<hi>".'], headline="A & B"))
    plain = render_plain(messages[0], show_links=False)
    assert plain.startswith("A & B\n")
    assert 'Tom & Jerry say "<hi>" [1][2].' in plain
    assert "[1] Outlet 1 · [2] Outlet 2" in plain


def test_rendering_is_deterministic():
    first = render_story_digest(compose_story_digest(update(SUMMIT)))
    assert first == render_story_digest(compose_story_digest(update(SUMMIT)))


def test_buttons_follow_the_callback_scheme():
    assert story_buttons(42) == [
        [("Unfollow", "unf:42"), ("Mute 24h", "mute:42"), ("More", "story:42")]
    ]
    assert story_buttons(42, following=False)[0][0] == ("Follow", "fol:42")


@pytest.mark.parametrize("following", [True, False])
def test_button_callback_data_fits_telegram(following: bool):
    for row in story_buttons(2**63, following=following):
        for _, data in row:
            assert len(data.encode()) <= 64


def test_story_ids_too_long_for_callback_data_are_rejected():
    with pytest.raises(ValueError):
        story_buttons(10**70)


def test_plain_fallback_fits_telegram_counting_utf16():
    html_message = (
        "<b>" + "😀" * 3000 + '</b> <a href="https://x.example/' + "y" * 3000 + '">link</a>'
    )
    text = plain_fallback(html_message)
    assert len(text.encode("utf-16-le")) // 2 <= MAX_MESSAGE
    assert "https://" not in text  # the URL did not fit, so names only


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("Leaders met in Nara.", "Leaders met in Nara [1][2]."),
        ("Lee flew on to the U.S.", "Lee flew on to the U.S. [1][2]"),
        ("Shares fell at Apple Inc.", "Shares fell at Apple Inc. [1][2]"),
        ("And then the talks stalled...", "And then the talks stalled... [1][2]"),
        ("And then the talks stalled…", "And then the talks stalled… [1][2]"),
        ("The answer was no.", "The answer was no [1][2]."),
        ("It put the magnitude at 6.8.", "It put the magnitude at 6.8 [1][2]."),
        ("قال الوزير؟", "قال الوزير [1][2]؟"),
        ("李在明抵达奈良。", "李在明抵达奈良 [1][2]。"),
        ("Τι θα γίνει τώρα;", "Τι θα γίνει τώρα [1][2];"),
        ("Talks ended; nothing was agreed", "Talks ended; nothing was agreed [1][2]"),
    ],
)
def test_citations_never_cut_an_abbreviation_or_an_ellipsis(text, shown):
    [message] = render_story_digest(digest_of([text]))
    assert f"\n\n{shown}\n\n" in message


def test_the_more_after_the_sources_says_what_it_counts():
    burst = [article(i, f"Leaders meet in Nara for summit on trade, report {i}") for i in range(30)]
    [message] = render_story_digest(compose_story_digest(update(burst)))
    assert "· and 20 more articles\n" in message
    [group] = render_group_digest(compose_group_digest([update(burst)]), title="Top")
    assert "· and 27 more articles · /story 42" in group
    assert "+27" not in group

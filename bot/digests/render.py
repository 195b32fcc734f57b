"""Telegram HTML for digests: escaped, within 4096 characters, split only between whole pieces.

Telegram counts a message's length after parsing its entities, in UTF-16 code units;
`telegram_length` counts the same way. A digest is built from atomic pieces (the header lines, each
cited sentence, each source link, the footer) and split between paragraphs first, then between
pieces, so no message ever ends inside a tag, a sentence or a citation.

Button callback data (at most 64 bytes): `fol:ID` follow, `unf:ID` unfollow, `mute:ID` mute for
24 hours, `story:ID` show the story.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from html.parser import HTMLParser

from bot.digests.compose import CitedSentence, SourceRef, StoryDigest

__all__ = [
    "MAX_MESSAGE",
    "render_group_digest",
    "render_plain",
    "render_story_digest",
    "story_buttons",
    "telegram_length",
]

MAX_MESSAGE = 4096
HEADLINE_LIMIT = 300
_TAG = re.compile(r"<[^>]+>")


def _text(value: str) -> str:
    return html.escape(value, quote=False)


def _attr(value: str) -> str:
    return html.escape(value, quote=True)


def telegram_length(message_html: str) -> int:
    """Length as Telegram counts it: visible text after entity parsing, in UTF-16 code units."""
    visible = html.unescape(_TAG.sub("", message_html))
    return len(visible.encode("utf-16-le")) // 2


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = text[: limit - 1].rsplit(" ", 1)[0] if " " in text[: limit - 1] else text[: limit - 1]
    return head + "…"


def _link(outlet: str, url: str) -> str:
    if url.lower().startswith(("http://", "https://")):
        return f'<a href="{_attr(url)}">{_text(outlet)}</a>'
    return _text(outlet)


def _citations(numbers: Sequence[int]) -> str:
    return "".join(f"[{n}]" for n in numbers)


def _sentence(sentence: CitedSentence) -> str:
    """`Text [1][2].`: citations go before the closing punctuation, as in the target format."""
    text, cites = sentence.text.strip(), _citations(sentence.citations)
    if not cites:
        return _text(text)
    if text and text[-1] in ".!?…":
        return f"{_text(text[:-1].rstrip())} {cites}{text[-1]}"
    return f"{_text(text)} {cites}"


def _source(ref: SourceRef) -> str:
    return f"[{ref.number}] {_link(ref.outlet, ref.url)}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _pack(paragraphs: Sequence[Sequence[str]], separators: Sequence[str]) -> list[str]:
    """Join pieces into messages of at most MAX_MESSAGE; paragraphs are lists of atomic pieces
    joined by their separator; a message break prefers paragraph boundaries."""
    messages: list[str] = []
    current = ""

    def fits(text: str) -> bool:
        return telegram_length(text) <= MAX_MESSAGE

    for pieces, sep in zip(paragraphs, separators, strict=True):
        whole = sep.join(pieces)
        candidate = f"{current}\n\n{whole}" if current else whole
        if fits(candidate):
            current = candidate
            continue
        if current and fits(whole):
            messages.append(current)
            current = whole
            continue
        for index, piece in enumerate(pieces):
            if not fits(piece):  # only a hostile piece; keep its text, drop its markup
                piece = _text(_cut(html.unescape(_TAG.sub("", piece)), MAX_MESSAGE - 1))
            joiner = "\n\n" if index == 0 else sep
            candidate = f"{current}{joiner}{piece}" if current else piece
            if fits(candidate):
                current = candidate
            else:
                messages.append(current)
                current = piece
    if current:
        messages.append(current)
    return messages


def render_story_digest(digest: StoryDigest) -> list[str]:
    """The follower digest as one or more Telegram HTML messages."""
    header = [
        f"<b>{_text(_cut(digest.headline, HEADLINE_LIMIT))}</b>",
        f"Updated ({_plural(digest.new_count, 'new article')})",
    ]
    paragraphs: list[list[str]] = [header]
    separators = ["\n"]
    if digest.sentences:
        paragraphs.append([_sentence(s) for s in digest.sentences])
        separators.append(" ")
    if digest.sources:
        intro = f"Sources ({_plural(digest.outlet_count, 'outlet')}):"
        items = [_source(r) for r in digest.sources]
        paragraphs.append([f"{intro} {items[0]}", *items[1:]])
        separators.append(" · ")
    paragraphs.append([f"All related articles ({digest.total_articles}): /story {digest.story_id}"])
    separators.append("\n")
    return _pack(paragraphs, separators)


def render_group_digest(digests: Sequence[StoryDigest], *, title: str) -> list[str]:
    """The daily group digest: numbered stories, each with one cited sentence and its sources."""
    paragraphs: list[list[str]] = [[f"<b>{_text(title)}</b>"]]
    for n, digest in enumerate(digests, start=1):
        lines = [f"<b>{n}. {_text(_cut(digest.headline, HEADLINE_LIMIT))}</b>"]
        if digest.sentences:
            lines.append(_sentence(digest.sentences[0]))
        links = " · ".join(_source(r) for r in digest.sources[:5])
        lines.append(
            f"{_plural(digest.outlet_count, 'source')}: {links}" if links else "no sources"
        )
        lines.append(f"{_plural(digest.total_articles, 'article')} · /story {digest.story_id}")
        paragraphs.append(lines)
    return _pack(paragraphs, ["\n"] * len(paragraphs))


def story_buttons(story_id: int, *, following: bool = True) -> list[list[tuple[str, str]]]:
    """Buttons under a digest as plain (label, callback_data) rows."""
    first = ("Unfollow", f"unf:{story_id}") if following else ("Follow", f"fol:{story_id}")
    return [[first, ("Mute 24h", f"mute:{story_id}"), ("More", f"story:{story_id}")]]


class _PlainText(HTMLParser):
    def __init__(self, *, show_links: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.show_links = show_links
        self.parts: list[str] = []
        self._href: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href.append(dict(attrs).get("href"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href:
            href = self._href.pop()
            if self.show_links and href:
                self.parts.append(f" ({href})")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def render_plain(message_html: str, *, show_links: bool = True) -> str:
    """Telegram HTML as readable plain text: tags dropped, entities decoded, links as `Name (url)`."""
    parser = _PlainText(show_links=show_links)
    parser.feed(message_html)
    parser.close()
    return "".join(parser.parts)

"""Telegram HTML for digests: escaped, within 4096 characters, split only between whole pieces.

Telegram counts a message's length after parsing its entities, in UTF-16 code units;
`telegram_length` counts the same way. A digest is built from paragraphs of atomic pieces (the
header lines, each cited sentence, each source link, the footer). Messages break between
paragraphs first, then between pieces, so no message ends inside a tag, a sentence or a
citation. Only a piece that alone exceeds the limit (which composition never produces, but a
hand-built or hostile digest might) is cut: at a line break, else a sentence end, else a space,
else anywhere between characters, never inside a tag or an entity like `&amp;`; tags open at the
cut are closed and reopened in the next message.

Every string from a feed is escaped; only http(s) URLs become links. Headlines are clipped to
HEADLINE_LIMIT and outlet names to OUTLET_LIMIT: a 6,000-character headline is hostile, and
splitting it over two messages would only spread the damage.

Button callback data is `verb:story_id`, at most 64 bytes (Telegram's limit), parsed by
handlers/callbacks.py: `fol:ID` follow, `unf:ID` unfollow, `mute:ID` mute the story for 24 hours,
`story:ID` show the story.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from html.parser import HTMLParser

from bot.digests.compose import GREEK_QUESTION_MARK, CitedSentence, SourceRef, StoryDigest

__all__ = [
    "plain_fallback",
    "MAX_MESSAGE",
    "render_group_digest",
    "render_plain",
    "render_story_digest",
    "story_buttons",
    "telegram_length",
]

MAX_MESSAGE = 4096
MAX_CALLBACK_BYTES = 64
HEADLINE_LIMIT = 300
OUTLET_LIMIT = 64
GROUP_SOURCES = 3  # links shown per story in the group digest, besides the ones its sentence cites
_TAG = re.compile(r"<[^>]*>")
_ATOM = re.compile(r"(<[^>]*>)|(&#?\w+;)|([^<&]+)")
_WORDISH = re.compile(r"[^\s]+\s*|\s+")
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*\s+$")
# A final full stop that is part of the last word: an ellipsis, dotted initials ("U.S.", "a.m."),
# or a company or name suffix. Citations go after it, not between the word and its dot.
_GREEK_QUESTION = re.compile(f"{GREEK_QUESTION_MARK}$")
_KEEPS_ITS_STOP = re.compile(r"(\.\.|\b(?:[^\W\d_]\.){2,}|\b(?i:inc|corp|co|ltd|plc|jr|sr|etc)\.)$")

# A break after an atom: 3 after a newline, 2 after a sentence, 1 after a space, 0 anywhere else.
_Atom = tuple[str, int, int]  # (html, telegram length, break quality after it)


def _text(value: str) -> str:
    return html.escape(value, quote=False)


def _attr(value: str) -> str:
    return html.escape(value, quote=True)


def _utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def telegram_length(message_html: str) -> int:
    """Length as Telegram counts it: visible text after entity parsing, in UTF-16 code units."""
    return _utf16(html.unescape(_TAG.sub("", message_html)))


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    if " " in head[limit // 2 :]:
        head = head.rsplit(" ", 1)[0]
    return head.rstrip(" ,;:-") + "…"


def _link(outlet: str, url: str) -> str:
    name = _text(_clip(outlet, OUTLET_LIMIT))
    url = url.strip()
    if url.lower().startswith(("http://", "https://")) and not any(c.isspace() for c in url):
        return f'<a href="{_attr(url)}">{name}</a>'
    return name


def _citations(numbers: Sequence[int]) -> str:
    return "".join(f"[{n}]" for n in numbers)


def _sentence(sentence: CitedSentence) -> str:
    """`Text [1][2].`: citations go before the closing punctuation, as in the target format,
    unless that full stop also belongs to a word ("the U.S.", "Apple Inc.", an ellipsis)."""
    text, cites = " ".join(sentence.text.split()), _citations(sentence.citations)
    if not cites:
        return _text(text)
    stop = text[-1:] in tuple(".!?。！？؟।۔") or _GREEK_QUESTION.search(text)
    if stop and not _KEEPS_ITS_STOP.search(text):
        return f"{_text(text[:-1].rstrip())} {cites}{text[-1]}"
    return f"{_text(text)} {cites}"


def _source(ref: SourceRef) -> str:
    return f"[{ref.number}] {_link(ref.outlet, ref.url)}"


def plural(n: int, one: str, many: str | None = None) -> str:
    """'1 article', '2 articles'; `many` for the irregular ('stories')."""
    return f"{n} {one}" if n == 1 else f"{n} {many or one + 's'}"


def _atoms(piece: str, limit: int) -> list[_Atom]:
    atoms: list[_Atom] = []
    for tag, entity, text in _ATOM.findall(piece):
        if tag:
            atoms.append((tag, 0, 0))
        elif entity:
            atoms.append((entity, telegram_length(entity), 0))
        else:
            for word in _WORDISH.findall(text):
                if _utf16(word) > limit // 2:  # a wall without spaces: cut between characters
                    atoms.extend((c, _utf16(c), 0) for c in word)
                elif "\n" in word:
                    atoms.append((word, _utf16(word), 3))
                elif _SENTENCE_END.search(word):
                    atoms.append((word, _utf16(word), 2))
                else:
                    atoms.append((word, _utf16(word), 1 if word[-1].isspace() else 0))
    return atoms


def _break_at(lengths: list[int], quality: list[int], limit: int) -> int:
    """How many atoms to keep: after the best break that keeps at least half the limit."""
    for level in (3, 2, 1):
        for i in range(len(quality) - 1, -1, -1):
            if lengths[i] < limit // 2:
                break
            if quality[i] >= level:
                return i + 1
    return len(quality)


def _tag_name(tag: str) -> str:
    return tag.strip("</>").split(None, 1)[0].lower() if tag.strip("</>") else ""


def _split_piece(piece: str, limit: int = MAX_MESSAGE) -> list[str]:
    """Cut one oversized piece into fragments of at most `limit`, closing and reopening tags."""
    fragments: list[str] = []
    opened: list[str] = []  # opening tags in force before the current fragment
    atoms: list[_Atom] = []
    length = 0

    def emit(count: int) -> None:
        nonlocal atoms, length, opened
        head, atoms = atoms[:count], atoms[count:]
        still_open = list(opened)
        for tag, _, _ in head:
            if tag.startswith("</"):
                if still_open:
                    still_open.pop()
            elif tag.startswith("<"):
                still_open.append(tag)
        closing = "".join(f"</{_tag_name(t)}>" for t in reversed(still_open))
        fragments.append("".join(opened) + "".join(a[0] for a in head).rstrip() + closing)
        opened = still_open
        length = sum(a[1] for a in atoms)

    for atom in _atoms(piece, limit):
        atoms.append(atom)
        length += atom[1]
        while length > limit:
            lengths, total = [], 0
            for _, size, _ in atoms[:-1]:
                total += size
                lengths.append(total)
            emit(_break_at(lengths, [a[2] for a in atoms[:-1]], limit) or 1)
    if atoms:
        emit(len(atoms))
    return [f for f in fragments if telegram_length(f) > 0]


def _pack(paragraphs: Sequence[tuple[Sequence[str], str]]) -> list[str]:
    """Messages of at most MAX_MESSAGE from (pieces, separator) paragraphs: a paragraph that
    does not fit the current message starts the next one; one too long for any message is
    broken between its pieces, starting in the current message so no message is a stub."""
    messages: list[str] = []
    current = ""

    def add(text: str, joiner: str) -> None:
        nonlocal current
        candidate = f"{current}{joiner}{text}" if current else text
        if telegram_length(candidate) <= MAX_MESSAGE:
            current = candidate
            return
        if current:
            messages.append(current)
            current = ""
        if telegram_length(text) <= MAX_MESSAGE:
            current = text
            return
        *full, current = _split_piece(text) or [""]
        messages.extend(full)

    for pieces, sep in paragraphs:
        whole = sep.join(pieces)
        fits_alone = telegram_length(whole) <= MAX_MESSAGE
        if current and fits_alone and telegram_length(f"{current}\n\n{whole}") > MAX_MESSAGE:
            messages.append(current)
            current = ""
        for index, piece in enumerate(pieces):
            add(piece, "\n\n" if index == 0 else sep)
    if current:
        messages.append(current)
    return messages


def render_story_digest(digest: StoryDigest) -> list[str]:
    """The follower digest as one or more Telegram HTML messages."""
    paragraphs: list[tuple[Sequence[str], str]] = [
        (
            [
                f"<b>{_text(_clip(digest.headline, HEADLINE_LIMIT))}</b>",
                f"Updated ({plural(digest.new_count, 'article')})",
            ],
            "\n",
        )
    ]
    if digest.sentences:
        paragraphs.append(([_sentence(s) for s in digest.sentences], " "))
    if digest.sources:
        intro = f"Sources ({plural(len(digest.sources), 'article')}):"
        items = [_source(r) for r in digest.sources]
        unlisted = digest.new_count - len(digest.sources)
        if unlisted > 0:
            items.append(f"and {plural(unlisted, 'more article')}")
        paragraphs.append(([f"{intro} {items[0]}", *items[1:]], " · "))
    footer = (
        f"All related articles ({plural(digest.total_articles, 'article')}): "
        f"/story {digest.story_id}"
    )
    paragraphs.append(([footer], "\n"))
    return _pack(paragraphs)


def _group_story(n: int, digest: StoryDigest) -> list[str]:
    lines = [f"<b>{n}. {_text(_clip(digest.headline, HEADLINE_LIMIT))}</b>"]
    if digest.sentences:
        lines.append(_sentence(digest.sentences[0]))
    cited = max(digest.sentences[0].citations, default=0) if digest.sentences else 0
    shown = digest.sources[: max(cited, GROUP_SOURCES)]
    links = " · ".join(_source(r) for r in shown)
    more = len(digest.sources) - len(shown) + max(digest.new_count - len(digest.sources), 0)
    if more > 0:  # the line starts with a count of outlets, so say what this counts
        links += f" · and {plural(more, 'more article')}"
    count = plural(digest.outlet_count, "outlet")
    lines.append(f"{count}: {links} · /story {digest.story_id}" if links else count)
    return lines


def render_group_digest(digests: Sequence[StoryDigest], *, title: str) -> list[str]:
    """The daily group digest: numbered stories, each with one cited sentence and its sources."""
    paragraphs: list[tuple[Sequence[str], str]] = [([f"<b>{_text(_clip(title, 200))}</b>"], "\n")]
    paragraphs += [(_group_story(n, d), "\n") for n, d in enumerate(digests, start=1)]
    return _pack(paragraphs)


def story_buttons(story_id: int, *, following: bool = True) -> list[list[tuple[str, str]]]:
    """Buttons under a digest as plain (label, callback_data) rows; the scheme is above."""
    if story_id < 0 or len(f"story:{story_id}".encode()) > MAX_CALLBACK_BYTES:
        raise ValueError(f"story id {story_id} does not fit in callback data")
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
    """Telegram HTML as readable plain text: tags dropped, entities decoded, links as `Name (url)`
    (or just `Name` with show_links=False, as Telegram itself displays them)."""
    parser = _PlainText(show_links=show_links)
    parser.feed(message_html)
    parser.close()
    return "".join(parser.parts)


def plain_fallback(message_html: str, limit: int = MAX_MESSAGE) -> str:
    """Plain text to send when Telegram refuses the HTML: with link URLs when they fit, else
    without, and cut to `limit` counted in UTF-16 units as Telegram counts."""
    text = render_plain(message_html, show_links=True)
    if _utf16(text) > limit:
        text = render_plain(message_html, show_links=False)
    if _utf16(text) <= limit:
        return text
    out, used = [], 0
    for ch in text:
        size = 2 if ord(ch) > 0xFFFF else 1
        if used + size > limit - 1:
            break
        out.append(ch)
        used += size
    return "".join(out) + "…"

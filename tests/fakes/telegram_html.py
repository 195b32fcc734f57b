"""Telegram's HTML parse mode, parsed the way TDLib parses it, for the fake Bot API.

Returns the visible text and its entities, or raises HtmlParseError with Telegram's own wording.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HTML_TAGS = frozenset({
    "a", "b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "tg-spoiler", "span",
    "tg-emoji", "code", "pre", "blockquote",
})  # fmt: skip
SIMPLE_ENTITY_TYPES = {
    "b": "bold", "strong": "bold", "i": "italic", "em": "italic", "u": "underline",
    "ins": "underline", "s": "strikethrough", "strike": "strikethrough", "del": "strikethrough",
    "tg-spoiler": "spoiler", "span": "spoiler",
}  # fmt: skip
NAMED_REFERENCES = {b"lt": "<", b"gt": ">", b"amp": "&", b"quot": '"'}
HTML_SPACE = frozenset(b" \t\r\n\v\f\0")  # NUL ends the text, as in the C string TDLib reads
NAME_TOKEN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")


class HtmlParseError(ValueError):
    """Telegram's reason for refusing HTML, as it follows "can't parse entities: "."""


@dataclass
class _OpenTag:
    name: str
    argument: str
    offset: int  # in UTF-16 code units of the visible text
    start: int  # in bytes of the visible text


def utf16_length(text: str) -> int:
    """Telegram counts lengths and entity offsets in UTF-16 code units."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _decode_reference(src: bytes, pos: int) -> tuple[str, int] | None:
    """The character of the reference at src[pos] ('&') and where it ends, or None.

    Like Telegram: &lt; &gt; &amp; &quot; and numeric references, the ';' optional; anything
    else (a bare '&', &nbsp;) stays literal text.
    """
    end = pos + 1
    if src[end] == ord("#"):
        end += 1
        digits = b"0123456789abcdefABCDEF" if src[end] == ord("x") else b"0123456789"
        end += src[end] == ord("x")
        start = end
        while src[end] in digits:
            end += 1
        code = int(src[start:end], 16 if len(digits) > 10 else 10) if end > start else 0
        if code == 0 or code >= 0x10FFFF or end - pos >= 10:
            return None
        char = chr(code)
    else:
        while chr(src[end]).isascii() and chr(src[end]).isalpha():
            end += 1
        named = NAMED_REFERENCES.get(src[pos + 1 : end])
        if named is None:
            return None
        char = named
    return char, end + (src[end] == ord(";"))


def _attribute_value(src: bytes, i: int) -> tuple[str, int]:
    """A quoted string (references decoded) or a name token (lower-cased) starting at src[i]."""
    if src[i] not in b"'\"":
        begin = i
        while src[i] in NAME_TOKEN:
            i += 1
        if src[i] not in HTML_SPACE and src[i] != ord(">"):
            raise HtmlParseError(f"Unexpected end of name token at byte offset {begin}")
        return src[begin:i].decode().lower(), i
    quote = src[i]
    i += 1
    value: list[str] = []
    while src[i] != quote and src[i] != 0:
        if src[i] == ord("&") and (decoded := _decode_reference(src, i)):
            value.append(decoded[0])
            i = decoded[1]
            continue
        end = i + 1
        while src[end] not in (quote, 0, ord("&")):
            end += 1
        value.append(src[i:end].decode("utf-8", "replace"))
        i = end
    return "".join(value), i + (src[i] == quote)


def _start_tag(src: bytes, begin: int, offset: int, start: int) -> tuple[_OpenTag, int]:
    """Parse the start tag at src[begin] ('<'); returns it and the index of its '>'."""
    i = begin + 1
    while src[i] not in HTML_SPACE and src[i] != ord(">"):
        i += 1
    if src[i] == 0:
        raise HtmlParseError(f"Unclosed start tag at byte offset {begin}")
    name = src[begin + 1 : i].decode("utf-8", "replace").lower()
    if name not in HTML_TAGS:
        raise HtmlParseError(f'Unsupported start tag "{name}" at byte offset {begin}')
    argument = ""
    while src[i] != ord(">"):
        while src[i] != 0 and src[i] in HTML_SPACE:
            i += 1
        if src[i] == ord(">"):
            break
        attribute_begin = i
        while src[i] not in HTML_SPACE and src[i] not in b"=>/\"'":
            i += 1
        attribute = src[attribute_begin:i].decode("utf-8", "replace").lower()
        if not attribute:
            raise HtmlParseError(f'Empty attribute name in the tag "{name}" at byte offset {begin}')
        while src[i] != 0 and src[i] in HTML_SPACE:
            i += 1
        if src[i] != ord("="):  # an attribute without a value
            if src[i] == 0:
                raise HtmlParseError(f'Unclosed start tag "{name}" at byte offset {begin}')
            if (name, attribute) == ("blockquote", "expandable"):
                argument = "expandable"
            continue
        i += 1
        while src[i] != 0 and src[i] in HTML_SPACE:
            i += 1
        if src[i] == 0:
            raise HtmlParseError(f'Unclosed start tag "{name}" at byte offset {begin}')
        value, i = _attribute_value(src, i)
        if src[i] == 0:
            raise HtmlParseError(f"Unclosed start tag at byte offset {begin}")
        if (name, attribute) in {("a", "href"), ("tg-emoji", "emoji-id")}:
            argument = value
        elif (name, attribute) == ("code", "class") and value.startswith("language-"):
            argument = value.removeprefix("language-")
        elif (name, attribute) == ("span", "class") and value.startswith("tg-"):
            argument = value.removeprefix("tg-")
        elif (name, attribute) == ("blockquote", "expandable"):
            argument = "expandable"
    if name == "span" and argument != "spoiler":
        raise HtmlParseError(f'Tag "span" must have class "tg-spoiler" at byte offset {begin}')
    return _OpenTag(name, argument, offset, start), i


def _close(tag: _OpenTag, length: int, visible: bytearray, entities: list[dict[str, Any]]) -> None:
    """Add the entity a closed tag makes, merging <pre><code class="language-x"> like Telegram."""
    entity: dict[str, Any] = {"offset": tag.offset, "length": length}
    last = entities[-1] if entities else None
    same_span = last is not None and (last["offset"], last["length"]) == (tag.offset, length)
    if tag.name in SIMPLE_ENTITY_TYPES:
        entity["type"] = SIMPLE_ENTITY_TYPES[tag.name]
    elif tag.name == "tg-emoji":
        if not tag.argument.isdigit() or int(tag.argument) == 0:
            raise HtmlParseError("Invalid custom emoji identifier specified")
        entity.update(type="custom_emoji", custom_emoji_id=tag.argument)
    elif tag.name == "a":
        url = tag.argument or visible[tag.start :].decode("utf-8", "replace")
        if not url:
            return
        entity.update(type="text_link", url=url)
    elif tag.name == "blockquote":
        entity["type"] = "expandable_blockquote" if tag.argument else "blockquote"
    elif tag.name == "pre":
        if same_span and last is not None and last["type"] == "code" and "language" in last:
            last["type"] = "pre"
            return
        entity["type"] = "pre"
    else:  # code
        if same_span and last is not None and last["type"] == "pre" and tag.argument:
            last["language"] = tag.argument
            return
        entity["type"] = "code"
        if tag.argument:
            entity["language"] = tag.argument  # dropped below unless a <pre> claims it
    entities.append(entity)


def parse_telegram_html(html: str) -> tuple[str, list[dict[str, Any]]]:
    """The visible text and entities of Telegram HTML, or HtmlParseError as Telegram refuses it.

    Follows the Bot API's parser (TDLib's parse_html): only Telegram's tags, closed in order;
    a '<' that does not start a tag is an error, a bare '&' is literal text.
    """
    src = html.encode("utf-8", "surrogatepass") + b"\0"
    visible = bytearray()
    entities: list[dict[str, Any]] = []
    stack: list[_OpenTag] = []
    offset = i = 0
    while i < len(src) - 1:
        byte = src[i]
        if byte == ord("&") and (decoded := _decode_reference(src, i)):
            char, i = decoded
            visible += char.encode("utf-8", "surrogatepass")
            offset += utf16_length(char)
            continue
        if byte != ord("<"):
            visible.append(byte)
            if byte & 0xC0 != 0x80:  # the first byte of a character; 4 bytes make a pair
                offset += 2 if byte >= 0xF0 else 1
            i += 1
            continue
        begin, i = i, i + 1
        if src[i] != ord("/"):
            tag, i = _start_tag(src, begin, offset, len(visible))
            stack.append(tag)
            i += 1
            continue
        if not stack:
            raise HtmlParseError(f"Unexpected end tag at byte offset {begin}")
        while src[i] not in HTML_SPACE and src[i] != ord(">"):
            i += 1
        end_name = src[begin + 2 : i].decode("utf-8", "replace").lower()
        while src[i] != 0 and src[i] in HTML_SPACE:
            i += 1
        if src[i] != ord(">"):
            raise HtmlParseError(f"Unclosed end tag at byte offset {begin}")
        tag = stack.pop()
        if end_name and end_name != tag.name:
            raise HtmlParseError(
                f'Unmatched end tag at byte offset {begin}, expected "</{tag.name}>", '
                f'found "</{end_name}>"'
            )
        if offset > tag.offset:
            _close(tag, offset - tag.offset, visible, entities)
        i += 1
    if stack:
        raise HtmlParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1].name}"')
    try:
        text = visible.decode("utf-8")
    except UnicodeDecodeError:
        raise HtmlParseError(
            "Text contains invalid Unicode characters after decoding HTML entities, check for "
            "unmatched surrogate code units"
        ) from None
    for entity in entities:
        if entity["type"] == "code":
            entity.pop("language", None)
    return text, sorted(entities, key=lambda e: (e["offset"], -e["length"]))


def _strip(text: str, entities: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Telegram trims whitespace around a message; entities move and shrink with it."""
    lead = utf16_length(text[: len(text) - len(text.lstrip())])
    text = text.strip()
    size = utf16_length(text)
    kept = []
    for entity in entities:
        begin = max(entity["offset"] - lead, 0)
        end = min(entity["offset"] + entity["length"] - lead, size)
        if end > begin:
            kept.append({**entity, "offset": begin, "length": end - begin})
    return text, kept

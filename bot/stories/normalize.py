"""Headline normalisation for story matching: the words that say what happened.

NFKC, case folding, wire prefixes (`UPDATE 2-`, `REFILE-`, `EXCLUSIVE-`) and publisher tails
(` - Reuters`, ` | BBC News`) removed, punctuation and English stop words dropped, plurals folded.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["normalize_title", "title_tokens", "text_tokens", "strip_title"]

STOP_WORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    out over own same she should so some such than that the their theirs them then there these
    they this those through to too under until up very was we were what when where which while
    who whom why will with would you your yours says said say new news report reports update
    updated live video photos watch via amid just get gets got how why what here week today
    """.split()  # noqa: SIM905 - a word list reads better as prose
)

_WIRE_PREFIX = re.compile(
    r"^\s*(?:(?:update|corrected|refile|exclusive|breaking|analysis|rpt|wrapup|factbox|"
    r"instant view|column|insight|timeline|global markets|video|watch|live|opinion)"
    r"(?:\s*\d+)?\s*[-:|—–]\s*)+",
    re.IGNORECASE,
)
_TAIL_SEPARATORS = re.compile(r"\s+(?:[-|—–:]|::)\s+")
_TOKEN = re.compile(r"[^\W_]+(?:['’][^\W_]+)*", re.UNICODE)
_MAX_TAIL_WORDS = 5


def _looks_like_outlet(tail: str, source: str) -> bool:
    words = tail.split()
    if not words or len(words) > _MAX_TAIL_WORDS:
        return False
    folded = tail.casefold().strip(" .")
    if source and (folded in source.casefold() or source.casefold() in folded):
        return True
    # Outlet names are short and capitalised ("BBC News", "The Guardian", "Reuters.com").
    return all(w[:1].isupper() or w[:1].isdigit() or "." in w for w in words) and len(words) <= 4


def strip_title(title: str, source: str = "") -> str:
    """The headline without wire prefixes and a trailing publisher name, original casing."""
    text = unicodedata.normalize("NFKC", title).strip()
    text = _WIRE_PREFIX.sub("", text)
    pieces = _TAIL_SEPARATORS.split(text)
    while len(pieces) > 1 and _looks_like_outlet(pieces[-1], source):
        pieces.pop()
    return " - ".join(pieces).strip()


def _fold(word: str) -> str:
    word = word.replace("’", "'")
    if word.endswith("'s"):
        word = word[:-2]
    word = word.replace("'", "")
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def text_tokens(text: str) -> list[str]:
    """Content words of any text, folded, stop words dropped, order kept, duplicates kept."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    out = []
    for raw in _TOKEN.findall(folded):
        word = _fold(raw)
        if word and word not in STOP_WORDS and (len(word) > 1 or word.isdigit()):
            out.append(word)
    return out


def title_tokens(title: str, source: str = "") -> list[str]:
    """Content words of a headline after its prefixes and publisher tail are removed."""
    return text_tokens(strip_title(title, source))


def normalize_title(title: str, source: str = "") -> str:
    """The normalised headline as one string: content words joined by spaces."""
    return " ".join(title_tokens(title, source))

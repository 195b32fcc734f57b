"""Headline normalisation for story matching: the words that say what happened.

NFKC, case folding, wire prefixes (`UPDATE 2-`, `REFILE-`, `EXCLUSIVE-`) and publisher tails
(` - Reuters`, ` | BBC News`) removed, punctuation and English stop words dropped, plurals folded.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote, urlsplit

import msgpack

__all__ = [
    "normalize_title",
    "title_tokens",
    "text_tokens",
    "strip_title",
    "url_words",
    "rarity_lookup",
    "word_rarity",
]

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


# Path words that say where a page lives, not what it is about.
_URL_NOISE = frozenset(
    """www com org net html htm shtml php asp aspx jsp cms amp rss feed feeds index default page
    content story stories article articles news post posts blog blogs item view print""".split()  # noqa: SIM905
)
_URL_PART = re.compile(r"[\W_]+")


def url_words(url: str) -> str:
    """The words of a link's slug ("/2014/03/10/ebay-urges-vote-against-icahn/"), as text.

    Many outlets put a fuller headline in the path than in the title. Numbers, ids and the
    host's own name are dropped.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    host = set(_URL_PART.split(parts.netloc.casefold()))
    words = []
    for word in _URL_PART.split(unquote(parts.path)):
        folded = word.casefold()
        if len(folded) >= 3 and folded.isalpha() and folded not in _URL_NOISE | host:
            words.append(folded)
    return " ".join(words)


# How much a word says by how rare it is in English at large (wordfreq's Zipf scale: "the" 7.7,
# "stock" 4.9, "bankruptcy" 4.1, "Sbarro" 1.8). Early in a stream, when few stories are active,
# rarity among them cannot yet tell "Sbarro" from "files"; this prior can.
_RARITY_TOP = 8.0  # Zipf value at which a word would weigh nothing
_RARITY_SCALE = 3.0
_UNLISTED_ZIPF = 2.5  # words outside wordfreq's small English list: names, coinages, other tongues
_RARITY_MIN, _RARITY_MAX = 0.3, 3.0


@functools.cache
def _rarity_table() -> dict[str, float]:
    """wordfreq's small English list (29k words) as token -> rarity, loaded once.

    The list is read straight from wordfreq's data file in its documented cBpack format (gzipped
    msgpack: a header, then one list of words per centibel of frequency), because importing
    wordfreq itself brings in ftfy, regex and langcodes, about 12 MB more than the table needs.
    """
    table: dict[str, float] = {}
    for index, bucket in enumerate(_small_english_buckets()):
        rarity = _rarity(9.0 - index / 100)  # Zipf = log10(frequency per billion words)
        for word in bucket:
            key = _fold(word.casefold())
            table[key] = min(rarity, table.get(key, rarity))  # "files" and "file" are one token
    return table


def _small_english_buckets() -> list[list[str]]:
    spec = importlib.util.find_spec("wordfreq")
    for folder in (spec and spec.submodule_search_locations) or ():
        path = Path(folder) / "data" / "small_en.msgpack.gz"
        if path.is_file():
            with gzip.open(path, "rb") as fh:
                data = msgpack.load(fh, raw=False)
            header = data[0] if data else None
            if isinstance(header, dict) and header.get("format") == "cB":
                return data[1:]
    from wordfreq import get_frequency_list  # a layout we do not know: take the slow road

    return get_frequency_list("en", "small")


def _rarity(zipf: float) -> float:
    return min(_RARITY_MAX, max(_RARITY_MIN, (_RARITY_TOP - zipf) / _RARITY_SCALE))


_UNLISTED = _rarity(_UNLISTED_ZIPF)


def word_rarity(token: str) -> float:
    """A multiplier for a folded token: about 0.3 for everyday words, 1.8 for unlisted ones."""
    return _rarity_table().get(token, _UNLISTED)


def rarity_lookup() -> tuple[dict[str, float], float]:
    """`word_rarity` as (table, value for unlisted words), for callers in a hot loop."""
    return _rarity_table(), _UNLISTED

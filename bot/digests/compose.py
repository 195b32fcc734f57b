"""Digest composition: an extractive summary whose sentences cite every article supporting them.

Candidates are the new articles' titles (minus "- Outlet" suffixes and "LIVE:" kickers) and the
first sentences of their summaries (minus "SEOUL, Nov. 25 (Yonhap) --" datelines); boilerplate,
truncated ("…") and oversized sentences are dropped. A candidate's score is its centrality times
a prior:

- centrality: half the mean, over the *other* articles, of the best rapidfuzz `token_set_ratio`
  against any of that article's candidates (a fact many outlets report scores high), half a
  SumBasic-style corroboration: how many other articles use each of its content words,
  normalised by the square root of its length so neither fragments nor run-ons win;
- prior: summary prose beats headline-ese titles, a lede beats later sentences, questions and
  very short or very long sentences are penalised.

Sentences are picked greedily by score discounted by the share of their words already said
(maximal marginal relevance, words weighted by IDF over the articles); near-duplicates of a
chosen sentence (token_set_ratio >= DUPLICATE) are never picked, nor paraphrases: sentences most
of whose words (PARAPHRASE, unweighted) the chosen ones already used, unless the summary needs
them to reach its minimum. IDF weighting alone lets one rare synonym ("Sbarro *declares*
bankruptcy") pass for news.

A sentence cites its own article and every article with a candidate at token_set_ratio >= SUPPORT
whose text also repeats most of the sentence's IDF-weighted words: token_set_ratio alone scores
100 whenever one text's words are a subset of the other's, and the names every outlet repeats
prove nothing.

Pure functions over plain dataclasses; ties go to the earlier article, so output is
deterministic.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from rapidfuzz import fuzz, process

from bot.stories.normalize import rarity_lookup, text_tokens

__all__ = [
    "CitedSentence",
    "DigestArticle",
    "SourceRef",
    "StoryDigest",
    "StoryUpdate",
    "compose_group_digest",
    "compose_story_digest",
    "split_sentences",
]

MAX_SOURCES = 10
DUPLICATE = 80  # token_set_ratio at which two sentences say the same thing
SUPPORT = 70  # token_set_ratio at which another article's sentence backs a chosen one
SUPPORT_COVERAGE = 0.6  # weighted share of a chosen sentence's words a backer must repeat
REDUNDANT = 0.7  # weighted share of a candidate's words already said that rules it out
PARAPHRASE = 2 / 3  # unweighted share of a candidate's words said already: it says it again
SUMMARY_SENTENCES = 4  # only a summary's first sentences: later ones are rarely the news
CANDIDATE_BUDGET = 300  # similarity is quadratic in candidates; big bursts get fewer per article
MAX_CANDIDATE_CHARS = 400
CUT_LEDE_WORDS = 20  # an unpunctuated summary this long is a lede the feed cut off

_ABBREVIATIONS = frozenset(  # word lists read better as one string than as 90 list lines
    "mr mrs ms dr prof st jr sr gen gov sen rep col lt sgt capt no vs etc inc corp ltd co jan feb "  # noqa: SIM905
    "mar apr jun jul aug sep sept oct nov dec mt ft u.s u.k u.n e.u a.m p.m".split()
)
# Abbreviations that end sentences as often as not ("at 10 p.m.", "Apple Inc."): one of these
# ends its sentence when the next word is one that opens sentences rather than names ("The", "It").
_ENDS_SENTENCES_TOO = frozenset(
    "a.m p.m etc inc corp ltd co plc jr sr u.s u.k u.n e.u".split()  # noqa: SIM905
)
# Greek asks its questions with ";" (U+037E, which NFKC makes a plain semicolon)
GREEK_QUESTION_MARK = r"[\u0370-\u03ff\u1f00-\u1fff][;\u037e]"  # after a Greek letter
_GREEK_QUESTION = rf"(?<={GREEK_QUESTION_MARK})"
# A possible sentence end: Latin-style punctuation and a space, or the full-width marks of
# Chinese and Japanese, which need no space. Whether a Latin-style one ends the sentence depends
# on the next word (see _starts_sentence).
_SENTENCE_BREAK = re.compile(
    rf"(?P<latin>(?:(?<=[.!?؟।۔])|{_GREEK_QUESTION})[\"'”’»)\]]*\s+)"
    r"|(?P<wide>(?<=[。！？])[\"'”’」』)\]]*\s*(?![。！？!?]))"
)
_KANA_PARTICLE = re.compile(r"[\u3041-\u309f]")  # hiragana: "と", "って" after a quotation
_OPENING = '"“‘«„(['
_FINAL_PUNCTUATION = re.compile(rf"(?:[.!?…。！？؟।۔]|{_GREEK_QUESTION})[\"'”’»」』)\]]*$")
# Chinese and Japanese put no spaces between words: two characters count as one word
_WIDE_SCRIPT = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LAST_WORD = re.compile(r"([\w.]+)\.[\"'”’)\]]*$")
# Whole phrases, not words: a story about copyright, cookies or Getty Images is news.
_BOILERPLATE = re.compile(
    r"click here|read more|read the (full|original)|continue reading|"
    r"the post .* (appeared|was published) first on|first appeared on|"
    r"originally (appeared|published) (on|in)|subscribe (to|now)|sign up (for|to|now)|"
    r"all rights reserved|copyright \d{4}|©|follow us|we use cookies|"
    r"listen to this article|\(END\)|^(photo(graph)?|image credit)\b\s*:",
    re.IGNORECASE,
)
_TRUNCATED = re.compile(r"(…|\.\.\.|\[…\]|\[\.\.\.\])\W*$")
# A bare hyphen only after a wire kicker in capitals ("UPDATE 2-", "ANALYSIS-"): "Live-Action
# Titanfall ..." is a headline, not a kicker.
_KICKER = re.compile(
    r"^(?:(?i:live|watch|video|listen|update\s*\d*|breaking|exclusive|analysis|opinion)"
    r"\s*(?::|\s[-–—])|(?:LIVE|WATCH|VIDEO|UPDATE\s*\d*|BREAKING|EXCLUSIVE|ANALYSIS|OPINION)"
    r"\s*[-–—])\s*"
)
_DATELINE = re.compile(
    r"^[A-Z][A-Z .'-]{1,40}(,[^()\n]{1,30})?\s*(\([^)\n]{1,30}\))?\s*(--|—|–|-)\s+"
)
_WORD = re.compile(r"\w+")
_STOPWORDS = frozenset(
    "a an the and or but nor of to in on at for from by with without as is are was were be been "  # noqa: SIM905
    "being has have had do does did it its this that these those their there here his her he she "
    "they them we you i not no will would can could should may might must than then after before "
    "over under into about up down out off also just more most new says said say amid while who "
    "what when where which why how all any some".split()
)


@dataclass(frozen=True, slots=True)
class DigestArticle:
    article_id: int
    title: str
    summary: str
    url: str
    source: str
    published: datetime


@dataclass(frozen=True, slots=True)
class StoryUpdate:
    story_id: int
    headline: str
    total_articles: int
    new_articles: tuple[DigestArticle, ...]
    new_count: int = 0  # articles new since the last digest, when more than new_articles carries
    outlet_count: int = 0  # distinct outlets among them, when more than new_articles shows


@dataclass(frozen=True, slots=True)
class CitedSentence:
    text: str
    citations: tuple[int, ...]  # source numbers, 1-based, ascending


@dataclass(frozen=True, slots=True)
class SourceRef:
    number: int
    outlet: str
    url: str
    title: str


@dataclass(frozen=True, slots=True)
class StoryDigest:
    story_id: int
    headline: str
    new_count: int
    sentences: tuple[CitedSentence, ...]
    sources: tuple[SourceRef, ...]  # at most MAX_SOURCES; new_count may be larger
    total_articles: int
    known_outlets: int = 0  # distinct outlets of all new articles, when the caller counted them

    @property
    def outlet_count(self) -> int:
        """Distinct outlets among the new articles: the listed ones, or the caller's count."""
        return max(len({s.outlet.casefold() for s in self.sources}), self.known_outlets)


@dataclass(frozen=True, slots=True)
class _Candidate:
    text: str
    article: int  # index into the update's articles
    position: int  # 0 for the title, n for the summary's n-th sentence
    words: frozenset[str]  # stemmed content words


def split_sentences(text: str) -> list[str]:
    """Sentences of plain text, not split after "Mr." or "U.S." or an initial."""
    text = " ".join(text.split())
    pieces: list[str] = []
    start = 0
    for found in _SENTENCE_BREAK.finditer(text):
        end = found.end()
        wide = found.group("wide")
        if wide is not None and wide.endswith(("」", "』")) and _KANA_PARTICLE.match(text, end):
            continue  # 「…。」と言った: the sentence goes on from the quotation
        if end < len(text) and (wide is not None or _starts_sentence(text[end:])):
            pieces.append(text[start:end].rstrip())
            start = end
    pieces.append(text[start:])
    out: list[str] = []
    for piece in pieces:
        if out and _ends_in_abbreviation(out[-1], piece):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return [s.strip() for s in out if s.strip()]


def _starts_sentence(text: str) -> bool:
    """A digit or a letter that is not lower case: a capital, or a letter of a script without
    case (Arabic, Hebrew, Devanagari ...). Python's str methods know every script's case."""
    first = text.lstrip(_OPENING)[:1]
    return first.isdigit() or (first.isalpha() and not first.islower())


def _ends_in_abbreviation(sentence: str, following: str) -> bool:
    """Whether the stop that ends `sentence` belongs to an abbreviation that `following` goes on
    from: "Mr. Lee", "the U.S. Senate", but not "Apple Inc. It closes"."""
    match = _LAST_WORD.search(sentence)
    if match is None:
        return False
    word = match.group(1).casefold()
    if word in _ENDS_SENTENCES_TOO:
        opener = _WORD.match(following.lstrip(_OPENING))
        return opener is None or opener.group().casefold() not in _STOPWORDS
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def _as_sentence(text: str) -> str:
    text = " ".join(text.split())
    if text and _WIDE_SCRIPT.match(text[-1]):
        return text + "。"
    if text and not _FINAL_PUNCTUATION.search(text):
        text += "."
    return text


def _content_words(text: str) -> frozenset[str]:
    # Five-letter truncation is a crude but language-agnostic stemmer: travels/travelled, summit/s.
    return frozenset(
        w[:5] for w in (m.casefold() for m in _WORD.findall(text)) if w not in _STOPWORDS
    )


def _clean_title(title: str, source: str) -> str:
    title = _KICKER.sub("", " ".join(title.split()))
    for sep in (" - ", " | ", " — ", " – "):
        head, found, tail = title.rpartition(sep)
        if found and head and source and tail.casefold() == source.strip().casefold():
            title = head
    return title


def _usable(sentence: str, *, min_words: int) -> bool:
    words = max(len(sentence.split()), len(_WIDE_SCRIPT.findall(sentence)) // 2)
    return (
        min_words <= words <= 60
        and len(sentence) <= MAX_CANDIDATE_CHARS
        and not _BOILERPLATE.search(sentence)
        and not _TRUNCATED.search(sentence)
    )


def _candidates(articles: Sequence[DigestArticle]) -> list[_Candidate]:
    per_article = max(1, min(SUMMARY_SENTENCES, CANDIDATE_BUDGET // len(articles) - 1))
    out: list[_Candidate] = []
    for i, article in enumerate(articles):
        title = _clean_title(article.title, article.source)
        title_words = _content_words(title)
        titled = _usable(title, min_words=3)
        if titled:
            out.append(_Candidate(_as_sentence(title), i, 0, title_words))
        # A summary sentence that is the whole title and perhaps the outlet's name (Google News
        # descriptions are exactly that) would outrank the title it copies. A title made of the
        # summary (feeds without titles) is no reason to drop the summary's sentences.
        heading = _content_words(f"{article.title} {article.source}")
        for n, sentence in enumerate(_summary_sentences(article.summary)[:per_article], start=1):
            words = _content_words(sentence)
            repeats = titled and title_words <= words <= heading
            if _usable(sentence, min_words=5) and not repeats:
                out.append(_Candidate(_as_sentence(sentence), i, n, words))
    if not out:  # every title is a fragment or a wall of text: better clipped than silent
        for i, article in enumerate(articles):
            title = _clip(_clean_title(article.title, article.source))
            if title:
                out.append(_Candidate(_as_sentence(title), i, 0, _content_words(title)))
    return out


def _summary_sentences(summary: str) -> list[str]:
    """The summary's sentences without its dateline, and without a last one the feed cut off.

    Feeds cut descriptions at a fixed length, often mid-word and without "…". A last sentence
    without closing punctuation is taken as cut when another sentence precedes it, when it is as
    long as a lede (CUT_LEDE_WORDS), when it ends on a word no sentence ends on ("the", "be") or
    inside a word ("econo"); another short unpunctuated summary is a deck, and kept. A complete
    standfirst of a lede's length without a full stop is lost this way; the article's title
    still speaks for it.
    """
    sentences = split_sentences(_DATELINE.sub("", " ".join(summary.split())))
    last = sentences[-1] if sentences else ""
    if last and not _FINAL_PUNCTUATION.search(last):
        words = last.split()
        mid_phrase = words[-1].casefold().strip(",;:") in _STOPWORDS  # "... would be"
        if len(sentences) > 1 or len(words) >= CUT_LEDE_WORDS or mid_phrase or _cut_mid_word(words):
            sentences.pop()
    return sentences


def _cut_mid_word(words: Sequence[str]) -> bool:
    """An English text whose last word, in lower case, is no English word ("their econo").

    Told by wordfreq's list (the one story matching weighs words with); a name is capitalised,
    and text mostly outside the list is another language, which this cannot judge."""
    table, _ = rarity_lookup()
    lower = [t for t in (text_tokens(w) for w in words if w[:1].islower()) if t]
    if not lower or not words[-1][:1].islower() or not words[-1].isalpha():
        return False
    known = sum(all(t in table for t in tokens) for tokens in lower)
    return known >= 0.8 * len(lower) and not all(t in table for t in lower[-1])


def _clip(text: str, *, words: int = 40) -> str:
    clipped = " ".join(text.split()[:words])[:MAX_CANDIDATE_CHARS]
    return clipped if clipped == text else clipped.rstrip(" ,;:-") + "…"


def _prior(cand: _Candidate) -> float:
    words = len(cand.text.split())
    if words < 6:
        factor = 0.6
    elif words < 9:
        factor = 0.85
    elif words <= 35:
        factor = 1.0
    else:
        factor = 0.8
    if cand.position == 0:
        factor *= 0.9  # headline-ese reads worse than a summary's prose
    else:
        factor *= 1.1 - 0.05 * (cand.position - 1)  # the lede carries the news
    if cand.text.endswith("?"):
        factor *= 0.6
    return factor


def _article_words(candidates: Sequence[_Candidate], n_articles: int) -> list[frozenset[str]]:
    words: list[set[str]] = [set() for _ in range(n_articles)]
    for cand in candidates:
        words[cand.article] |= cand.words
    return [frozenset(w) for w in words]


def _weights(article_words: Sequence[frozenset[str]]) -> dict[str, float]:
    """Inverse document frequency over the update's articles: a name every outlet repeats says
    little about which sentence an article backs; a word only two articles use says a lot."""
    df = Counter(w for words in article_words for w in words)
    return {w: math.log((len(article_words) + 1) / n) for w, n in df.items()}


def _coverage(words: frozenset[str], by: frozenset[str], weight: dict[str, float]) -> float:
    """Weighted share of `words` that `by` also contains."""
    total = sum(weight[w] for w in words)
    return sum(weight[w] for w in words & by) / total if total else 0.0


def _scores(
    candidates: Sequence[_Candidate], n_articles: int, sim: list[list[float]]
) -> list[float]:
    """Centrality times priors (see the module docstring)."""
    if n_articles < 2:
        return [_prior(c) for c in candidates]
    counts = Counter(w for words in _article_words(candidates, n_articles) for w in words)
    corroboration = [
        sum(counts[w] - 1 for w in c.words) / (n_articles - 1) / math.sqrt(len(c.words) or 1)
        for c in candidates
    ]
    top = max(corroboration) or 1.0
    scores = []
    for i, cand in enumerate(candidates):
        best: dict[int, float] = {}
        for j, other in enumerate(candidates):
            if other.article != cand.article:
                best[other.article] = max(best.get(other.article, 0.0), sim[i][j])
        fuzzy = sum(best.values()) / (n_articles - 1) / 100
        scores.append((0.5 * fuzzy + 0.5 * corroboration[i] / top) * _prior(cand))
    return scores


def _similarities(texts: Sequence[str]) -> list[list[float]]:
    keys = [t.casefold() for t in texts]
    sim = [[0.0] * len(keys) for _ in keys]
    for i, key in enumerate(keys):
        for _, score, j in process.extract(key, keys, scorer=fuzz.token_set_ratio, limit=None):
            sim[i][j] = score
    return sim


def _select(
    candidates: Sequence[_Candidate], n_articles: int, *, limit: int, minimum: int
) -> list[tuple[_Candidate, tuple[int, ...]]]:
    """Greedy by score discounted by what the chosen sentences already say (maximal marginal
    relevance); returns chosen candidates with the article indexes backing each."""
    if not candidates:
        return []
    sim = _similarities([c.text for c in candidates])
    scores = _scores(candidates, n_articles, sim)
    article_words = _article_words(candidates, n_articles)
    weight = _weights(article_words)
    taken: list[int] = []
    said_words: set[str] = set()
    # A second pass relaxes "mostly said already" to reach the minimum; duplicates stay out.
    for redundant, wanted in ((REDUNDANT, limit), (1.0, minimum)):
        while len(taken) < wanted:
            best, best_score = -1, 0.0
            for i, cand in enumerate(candidates):
                if i in taken or any(sim[i][t] >= DUPLICATE for t in taken):
                    continue
                said = max(
                    (_coverage(cand.words, candidates[t].words, weight) for t in taken), default=0
                )
                # one-letter "words" ("McDonald's", "U.S.") would count as said in every sentence
                own = [w for w in cand.words if len(w) > 1]
                if own and sum(w in said_words for w in own) >= PARAPHRASE * len(own):
                    said = max(said, REDUNDANT)  # out of the first pass, not of the minimum's
                score = scores[i] * (1 - said)
                if said < redundant and (best < 0 or score > best_score):
                    best, best_score = i, score
            if best < 0:
                break
            taken.append(best)
            said_words |= candidates[best].words
    chosen = []
    for i in taken:
        cand = candidates[i]
        support = {cand.article}
        for j, other in enumerate(candidates):
            if (
                other.article not in support
                and sim[i][j] >= SUPPORT
                and _coverage(cand.words, article_words[other.article], weight) >= SUPPORT_COVERAGE
            ):
                support.add(other.article)
        chosen.append((cand, tuple(sorted(support))))
    return chosen


def _listed_articles(
    chosen: Sequence[tuple[_Candidate, tuple[int, ...]]], n_articles: int
) -> list[int]:
    """Article indexes to list as sources, in citation order: every chosen sentence's own article
    first (so no sentence loses all its citations to the cap), then its backers, then the rest."""
    cited = [index for _, support in chosen for index in support]
    keep = {cand.article for cand, _ in chosen}
    for index in [*cited, *range(n_articles)]:
        if len(keep) >= MAX_SOURCES:
            break
        keep.add(index)
    order = list(dict.fromkeys([*cited, *range(n_articles)]))
    return [index for index in order if index in keep]


def compose_story_digest(
    update: StoryUpdate, *, max_sentences: int = 4, min_sentences: int = 2
) -> StoryDigest:
    """The digest of a story's new articles: 2-4 cited sentences and the numbered sources.

    A single article gets one sentence: its title and lede usually say the same thing. Fewer
    than `min_sentences` also come back when every other candidate duplicates a chosen one.
    """
    articles = update.new_articles
    headline = " ".join(update.headline.split()) or (
        " ".join(articles[0].title.split()) if articles else ""
    )
    if not articles:
        return StoryDigest(update.story_id, headline, 0, (), (), update.total_articles)
    limit = max_sentences if len(articles) > 1 else min(max_sentences, 1)
    chosen = _select(
        _candidates(articles), len(articles), limit=limit, minimum=min(min_sentences, limit)
    )
    listed = _listed_articles(chosen, len(articles))
    number = {index: n for n, index in enumerate(listed, start=1)}
    sentences = tuple(
        CitedSentence(cand.text, tuple(sorted(number[i] for i in support if i in number)))
        for cand, support in chosen
    )
    sources = tuple(
        SourceRef(
            number[i],
            " ".join(articles[i].source.split()) or "Source",
            articles[i].url.strip(),
            " ".join(articles[i].title.split()),
        )
        for i in listed
    )
    new_count = max(update.new_count, len(articles))
    return StoryDigest(
        update.story_id,
        headline,
        new_count,
        sentences,
        sources,
        update.total_articles,
        update.outlet_count,
    )


def compose_group_digest(updates: Sequence[StoryUpdate]) -> tuple[StoryDigest, ...]:
    """One cited sentence per story, for the daily group digest."""
    return tuple(compose_story_digest(u, max_sentences=1, min_sentences=1) for u in updates)

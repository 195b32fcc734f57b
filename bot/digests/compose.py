"""Digest composition: an extractive summary whose sentences cite every article supporting them.

Candidates are the new articles' titles and the sentences of their summaries. Each candidate's
centrality is its average rapidfuzz `token_set_ratio` with the other articles' text, so a sentence
that many articles say is central; boilerplate is dropped and very short or very long sentences
are penalised. Sentences are then taken greedily, skipping near-duplicates of those already taken
(rapidfuzz again), and each cites its own article plus every article that says nearly the same.
Pure functions over plain dataclasses; no model, no network.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from rapidfuzz import fuzz

__all__ = [
    "CitedSentence",
    "DigestArticle",
    "SourceRef",
    "StoryDigest",
    "StoryUpdate",
    "compose_group_digest",
    "compose_story_digest",
]

MAX_SOURCES = 10
DUPLICATE = 80  # token_set_ratio at which two sentences say the same thing
SUPPORT = 70  # token_set_ratio at which another article backs a sentence (same fact: ~90)
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)]?\s+(?=[A-Z0-9\"“‘(])")
_BOILERPLATE = re.compile(
    r"(click here|read more|continue reading|the post .* appeared first on|subscribe|"
    r"sign up|all rights reserved|copyright|follow us|\bcookies?\b)",
    re.IGNORECASE,
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
    sources: tuple[SourceRef, ...]
    total_articles: int

    @property
    def outlet_count(self) -> int:
        return len({s.outlet.casefold() for s in self.sources})


@dataclass(frozen=True, slots=True)
class _Candidate:
    text: str
    article: int  # index into the update's articles
    from_summary: bool


def _as_sentence(text: str) -> str:
    text = " ".join(text.split()).strip()
    if text and text[-1] not in ".!?…":
        text += "."
    return text


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]


def _candidates(articles: Sequence[DigestArticle]) -> list[_Candidate]:
    out: list[_Candidate] = []
    for i, article in enumerate(articles):
        if article.title.strip():
            out.append(_Candidate(_as_sentence(article.title), i, False))
        for sentence in split_sentences(article.summary)[:4]:
            if _BOILERPLATE.search(sentence) or sentence.endswith("…"):
                continue
            words = len(sentence.split())
            if 5 <= words <= 45:
                out.append(_Candidate(_as_sentence(sentence), i, True))
    return out


def _length_factor(text: str) -> float:
    words = len(text.split())
    if words < 5:
        return 0.6
    if words > 35:
        return 0.8
    return 1.0


def _article_texts(articles: Sequence[DigestArticle]) -> list[str]:
    return [f"{a.title}. {a.summary}" for a in articles]


def _select(
    candidates: list[_Candidate], texts: list[str], limit: int
) -> list[tuple[_Candidate, tuple[int, ...]]]:
    """Greedy by centrality; returns chosen candidates with the article indexes backing each."""
    n = len(texts)
    scored = []
    for order, cand in enumerate(candidates):
        others = [fuzz.token_set_ratio(cand.text, texts[j]) for j in range(n) if j != cand.article]
        centrality = sum(others) / len(others) if others else 50.0
        bonus = 1.08 if cand.from_summary else 1.0
        scored.append((centrality * _length_factor(cand.text) * bonus, -order, cand))
    scored.sort(key=lambda s: (s[0], s[1]), reverse=True)
    chosen: list[tuple[_Candidate, tuple[int, ...]]] = []
    for _, _, cand in scored:
        if len(chosen) >= limit:
            break
        if any(fuzz.token_set_ratio(cand.text, c.text) >= DUPLICATE for c, _ in chosen):
            continue
        support = {cand.article}
        for other in candidates:
            if (
                other.article not in support
                and fuzz.token_set_ratio(cand.text, other.text) >= SUPPORT
            ):
                support.add(other.article)
        chosen.append((cand, tuple(sorted(support))))
    return chosen


def compose_story_digest(
    update: StoryUpdate, *, max_sentences: int = 4, min_sentences: int = 2
) -> StoryDigest:
    """The digest of a story's new articles: 2-4 cited sentences and the numbered sources."""
    articles = update.new_articles
    if not articles:
        return StoryDigest(update.story_id, update.headline, 0, (), (), update.total_articles)
    limit = max_sentences if len(articles) > 1 else min(max_sentences, max(1, min_sentences - 1))
    chosen = _select(_candidates(articles), _article_texts(articles), limit)
    # Number sources in order of first citation, then the rest in arrival order; list at most
    # MAX_SOURCES and cite only listed ones.
    order: list[int] = []
    for _, support in chosen:
        for index in support:
            if index not in order:
                order.append(index)
    order += [i for i in range(len(articles)) if i not in order]
    listed = order[:MAX_SOURCES]
    number = {index: n for n, index in enumerate(listed, start=1)}
    sentences = []
    for cand, support in chosen:
        cites = tuple(sorted(number[i] for i in support if i in number))
        if cites:
            sentences.append(CitedSentence(cand.text, cites))
    sources = tuple(
        SourceRef(
            number[i],
            articles[i].source.strip() or "Source",
            articles[i].url,
            articles[i].title,
        )
        for i in listed
    )
    return StoryDigest(
        update.story_id,
        update.headline,
        len(articles),
        tuple(sentences),
        sources,
        update.total_articles,
    )


def compose_group_digest(updates: Sequence[StoryUpdate]) -> tuple[StoryDigest, ...]:
    """One cited sentence per story, for the daily group digest."""
    return tuple(compose_story_digest(u, max_sentences=1, min_sentences=1) for u in updates)

"""The online story matcher: which active story does an article belong to, if any?

Each active story keeps a token profile (how many of its articles contain each content word),
its recent normalised titles and its sources. An article is scored only against candidate stories
found through an inverted index from tokens to stories, so the cost per article does not grow with
the number of active stories:

1. Candidates: every story holding one of the article's rare words (held by at most
   `rare_postings` stories) collects `idf(word) * share`, where share is the fraction of the
   story's articles containing the word, saturating at `saturation`. idf is rarity across active
   stories times rarity in English at large (wordfreq; see normalize.word_rarity), which tells
   names from everyday words before the stream has enough stories to. Words held by many
   stories then add to the candidates already found, by lookup, so the cost per article stays
   flat however many stories are active.

   The words are the title's, then the summary's and the link slug's at `summary_weight`; a pair
   of title words that is already known as one word ("Mt. Gox" / "MtGox") also counts as it.
   What feeds repeat in every summary ("Continue reading", "The post ... appeared first on")
   is left out (see _Boilerplate): it would tie together unrelated stories of one outlet.
2. `profile` = collected weight / the article's total idf weight: how much of what the article
   says is typical of the story.
3. For the best few candidates: `nearest`, the idf cosine with the story's most similar recent
   article, and `fuzzy`, rapidfuzz's token_set_ratio against its recent normalised titles.
4. `anchor`: for an established story, the share of its articles containing the most typical
   word it shares with the article among words held by at most two stories ("Titanfall",
   "Snowden"). It keeps sub-topics of one event ("the Bachelor host says ...") together.
5. score = weighted profile, nearest and fuzzy, plus anchor_weight * anchor; the best candidate
   joins if its score clears the threshold, else the article starts a new story.
6. `settle`: one headline is weak evidence, so the first articles of an event often start several
   stories ("GM hires law firms over recall", "Feds ignored complaints about GM cars"). After each
   article a growing story checks whether another story already covers its signature, the
   words most of its articles contain, weighted by rarity; if so the smaller story is merged
   into the larger. A signature is judged on all of a story's articles, so this is much surer than
   the join of one title, and words that define the story ("Sbarro" against "Mt. Gox" in two
   bankruptcy stories) keep different events apart.
   When no other story covers the signature, a story of `profile_min_articles` or more is
   compared as a whole with the candidates of that size the signature found: the idf cosine of
   their word shares (how many of each story's articles hold each word). At `profile_merge` or
   more they are one event that started as two stories and grew apart in wording (a film's
   premiere reviews beside its star's interviews) and merge. Both sides must have a few
   articles, since a cosine of one or two headlines says little.
7. `revisit`: an article that started a story of its own is looked at again `revisit_after` later
   (an hour), scored like a new article against the stories active then. Its story may not have
   existed yet when it arrived, or been one headline too small to recognise; if it now clears
   `revisit_threshold` the lone article joins that story. Each lone article gets this one second
   look, so the cost is at most one more scoring per new story.

A wrong merge costs more than a split, so the threshold leans to precision. Pure Python over plain
dataclasses; the caller persists stories (see bot.stories.service).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from rapidfuzz import fuzz

from bot.stories.normalize import rarity_lookup, strip_title, text_tokens, url_words

__all__ = [
    "ArticleText",
    "Assignment",
    "MatcherConfig",
    "Merge",
    "StoryMatcher",
    "StorySnapshot",
    "SUMMARY_SAMPLE",
]


def _earlier(when: datetime, delta: timedelta) -> datetime:
    """`when - delta`, or the first moment there is for a time near year 1 (no overflow)."""
    try:
        return when - delta
    except OverflowError:
        return datetime.min.replace(tzinfo=when.tzinfo)


@dataclass(frozen=True, slots=True)
class ArticleText:
    title: str
    published: datetime  # timezone-aware UTC
    summary: str = ""
    source: str = ""
    url: str = ""  # its slug words help like a summary's


@dataclass(frozen=True, slots=True)
class StorySnapshot:
    story_id: int
    headline: str
    article_count: int
    source_count: int
    first_published: datetime
    last_published: datetime


@dataclass(frozen=True, slots=True)
class Assignment:
    story_id: int  # the story the article ended in, after any merge
    is_new: bool
    score: float
    snapshot: StorySnapshot
    merged: tuple[int, ...] = ()  # stories absorbed into story_id as a result
    # Every merge this article caused, in order: those into story_id and lone articles that
    # joined other stories on their second look (see StoryMatcher.revisit).
    merges: tuple[Merge, ...] = ()


@dataclass(frozen=True, slots=True)
class Merge:
    """`absorbed` no longer exists: its articles now belong to `survivor`."""

    absorbed: int
    survivor: int
    snapshot: StorySnapshot  # the survivor after the merge


@dataclass(frozen=True, slots=True)
class MatcherConfig:
    window: timedelta = timedelta(hours=48)
    threshold: float = 0.36
    profile_weight: float = 0.3
    nearest_weight: float = 0.4  # the rest of the weight goes to rapidfuzz
    summary_weight: float = 0.35  # summary and link words count this much of a title word
    saturation: float = 0.2  # a word in this share of a story's articles is fully typical of it
    rare_postings: int = 64  # only words held by at most this many stories find candidates
    anchor_weight: float = 0.15  # bonus for a shared word that few stories hold ...
    anchor_stories: int = 2  # ... (at most this many) ...
    anchor_min_articles: int = 5  # ... and most articles of an established story contain
    candidates: int = 8  # best profile candidates re-scored with titles and rapidfuzz
    recent_titles: int = 12  # per story, for the nearest-title and fuzzy comparison
    central_titles: int = 24  # per story, for choosing the representative headline
    word_rarity: bool = True  # weigh words by their rarity in English too (wordfreq)
    signature_share: float = 0.6  # a word in this share of a story's articles is its signature
    cover_share: float = 0.7  # another story covers a signature word held by this share of it
    merge_coverage: float = 0.6  # idf-weighted share of the signature covered for a merge
    profile_merge: float = 0.5  # else the idf cosine of two stories' word shares that merges them
    profile_min_articles: int = 3  # ... when both have at least this many articles
    settle_every_until: int = 32  # check each article up to this size, then at powers of two
    revisit_after: timedelta = timedelta(hours=1)  # second look at a story of one article ...
    revisit_threshold: float = 0.38  # ... which then joins a story it scores this well against


@dataclass(slots=True)
class _Story:
    id: int
    first: datetime
    last: datetime
    queued_last: datetime  # the time of this story's newest entry in the expiry queue
    articles: int = 0
    tokens: dict[str, int] = field(default_factory=dict)  # word -> articles containing it
    sources: list[str] = field(default_factory=list)
    # (normalised title, title and summary words) of recent articles, most recent last
    titles: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    headline: str = ""
    central: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)


# summaries weighed for what feeds repeat in all of them (see _Boilerplate)
SUMMARY_SAMPLE = 1000


class _Boilerplate:
    """What feeds repeat in their summaries whatever the story ("The post ... appeared first on
    Example.", "Continue reading", "Get the latest Example headlines delivered daily.").

    Such words are in every article of an outlet, or of every outlet on one publishing platform,
    and rare in the headlines, so as evidence they would pull unrelated stories together. Two
    kinds are cut from a summary before it is weighed:
    - The outlet's own: a run of `MIN_RUN` or more words that opens or closes this summary and
      one of the outlet's last `MEMORY`, and the outlet's name's words within `NAME_EDGE` words
      of either end ("(Example) -", "appeared first on Example."), where they sign it. An
      update that repeats the outlet's last lead word for word loses it too: one summary
      cannot tell a lead from a template, and a wrong join costs more than a lost clue.
    - Anyone's: a word in at least `SHARE` of the last `WINDOW` summaries (and `MIN_COUNT` of
      them) but in no more than a `TITLE_RATIO` of their headlines: a platform's template,
      which no story's coverage fills so much of.
    Cutting a few words by mistake costs little, since summary words weigh summary_weight.
    Bounded: an outlet's summaries are kept whole (their words, interned; a summary is read
    only to its first 600 characters), so a template longer than any fixed edge around each
    lead is cut whole too; the outlets seen least recently are forgotten past `MAX_OUTLETS`."""

    MEMORY = 4
    MIN_RUN = 2
    NAME_EDGE = 8
    MAX_OUTLETS = 4096
    WINDOW = SUMMARY_SAMPLE
    SHARE = 0.1
    MIN_COUNT = 3
    TITLE_RATIO = 0.1

    def __init__(self) -> None:
        # outlet -> its last summaries' words
        self._recent: dict[str, list[tuple[str, ...]]] = {}
        self._window: collections.deque[tuple[frozenset[str], frozenset[str]]] = collections.deque()
        self._in_summaries: collections.Counter[str] = collections.Counter()
        self._in_titles: collections.Counter[str] = collections.Counter()

    @staticmethod
    def outlet(article: ArticleText) -> str:
        source = article.source.casefold().strip()
        if source or not article.url:
            return source
        try:  # no outlet named: the link's host stands for it
            return urlsplit(article.url[:500]).netloc.casefold()
        except ValueError:
            return ""

    def strip(self, outlet: str, words: list[str], source: str) -> list[str]:
        """The summary's words without boilerplate; reads, does not remember."""
        name = frozenset(text_tokens(source)) if source else frozenset()
        head = tail = 0
        for earlier in self._recent.get(outlet, ()):
            run = _common_run(words, earlier)
            if run >= self.MIN_RUN:
                head = max(head, run)
            run = _common_run(words, earlier, backwards=True)
            if run >= self.MIN_RUN:
                tail = max(tail, run)
        end, edge = max(head, len(words) - tail), len(words) - self.NAME_EDGE
        # the outlet's name near either end signs the summary ("(Example) -", "appeared first
        # on Example."); elsewhere it may be news ("Boston" in the Boston Globe's)
        body = [
            w
            for i, w in enumerate(words[head:end], head)
            if w not in name or self.NAME_EDGE <= i < edge
        ]
        common = max(self.MIN_COUNT, self.SHARE * len(self._window))
        in_summaries, in_titles = self._in_summaries, self._in_titles
        return [
            w
            for w in body
            if in_summaries[w] < common or in_titles[w] > self.TITLE_RATIO * in_summaries[w]
        ]

    def remember(self, outlet: str, words: list[str], title: tuple[str, ...]) -> None:
        if not words:
            return
        self._window.append((frozenset(words), frozenset(title)))
        self._in_summaries.update(self._window[-1][0])
        self._in_titles.update(self._window[-1][1])
        if len(self._window) > self.WINDOW:
            for counts, gone in zip(
                (self._in_summaries, self._in_titles), self._window.popleft(), strict=True
            ):
                for word in gone:  # not Counter.subtract, which keeps words at 0: no growth
                    if counts[word] == 1:
                        del counts[word]
                    else:
                        counts[word] -= 1
        if not outlet:
            return
        recent = self._recent.pop(outlet, None)  # re-inserted last: the dict is the LRU order
        if recent is None:
            recent = []
            if len(self._recent) >= self.MAX_OUTLETS:
                del self._recent[next(iter(self._recent))]
        recent.append(tuple(map(sys.intern, words)))
        del recent[: -self.MEMORY]
        self._recent[outlet] = recent


def _common_run(words: list[str], earlier: tuple[str, ...], *, backwards: bool = False) -> int:
    """How many words `words` and `earlier` open (or, backwards, close) with alike."""
    n = min(len(words), len(earlier))
    run = 0
    if backwards:
        while run < n and words[-1 - run] == earlier[-1 - run]:
            run += 1
        return run
    while run < n and words[run] == earlier[run]:
        run += 1
    return run


@dataclass(frozen=True, slots=True)
class _Features:
    weights: dict[str, float]  # word -> 1.0 for title words, summary_weight for summary-only
    norm_title: str
    title: tuple[str, ...]  # the title's words, interned
    outlet: str = ""
    summary: list[str] = field(default_factory=list)  # all its words, for _Boilerplate.remember


class StoryMatcher:
    """Assigns articles to stories online. Deterministic: replaying `add` rebuilds the state."""

    def __init__(self, config: MatcherConfig | None = None) -> None:
        self.config = config or MatcherConfig()
        self._stories: dict[int, _Story] = {}
        self._postings: dict[str, set[int]] = {}
        # min-heap of (time, story id); a story is re-queued when its time moves on by more than an
        # eighth of the window, so the heap stays small. A heap, not a queue in arrival order: a
        # story re-queued behind newer entries would outlive the window, and a matcher rebuilt
        # from the database (which holds exactly the window) would then decide differently.
        self._expiry: list[tuple[datetime, int]] = []
        # min-heap of (publish time, story id) of stories started by one article, for their second
        # look; a heap, not a queue, because feeds deliver out of publish order
        self._revisits: list[tuple[datetime, int]] = []
        self._next_id = itertools.count(1)
        self.comparisons = 0  # candidate stories scored; lets tests see the index at work
        self._rarity = rarity_lookup() if self.config.word_rarity else ({}, 1.0)
        self._matched: tuple[ArticleText, _Features] | None = None  # match()'s work, for add()
        self._boilerplate = _Boilerplate()

    # --- public API -----------------------------------------------------------------------

    @property
    def active_count(self) -> int:
        return len(self._stories)

    def snapshot(self, story_id: int) -> StorySnapshot | None:
        story = self._stories.get(story_id)
        return None if story is None else self._snapshot(story)

    def match(self, article: ArticleText) -> tuple[int, float] | None:
        """The best active story for the article and its score, or None for a new story."""
        self.expire(article.published)
        features = self._features(article)
        self._matched = (article, features)
        best = self._best(features)
        if best is None or best[1] < self.config.threshold:
            return None
        return best

    def add(self, story_id: int, article: ArticleText) -> StorySnapshot:
        """Record the article in the story (created if unknown)."""
        matched, self._matched = self._matched, None
        # match() just worked these out, unless the stories changed since
        features = matched[1] if matched and matched[0] is article else self._features(article)
        when = article.published
        story = self._stories.get(story_id)
        if story is None:
            story = _Story(story_id, when, when, when)
            self._stories[story_id] = story
            heapq.heappush(self._expiry, (when, story_id))
            heapq.heappush(self._revisits, (when, story_id))
        story.articles += 1
        story.first = min(story.first, when)
        if when > story.last:
            story.last = when
            if when - story.queued_last > self.config.window / 8:
                story.queued_last = when
                heapq.heappush(self._expiry, (when, story_id))
        source = article.source.casefold().strip()
        if source and source not in story.sources:
            story.sources.append(source)
        for token in features.weights:
            count = story.tokens.get(token, 0)
            if count == 0:
                self._postings.setdefault(token, set()).add(story_id)
            story.tokens[token] = count + 1
        self._boilerplate.remember(features.outlet, features.summary, features.title)
        story.titles.append((features.norm_title, tuple(features.weights)))
        if len(story.titles) > self.config.recent_titles:
            del story.titles[0]
        stripped = strip_title(article.title, article.source)
        if stripped:  # the features' title words are this title's words
            self._consider_headline(story, stripped, features.title)
        else:
            words = tuple(map(sys.intern, text_tokens(article.title)))
            self._consider_headline(story, article.title, words)
        return self._snapshot(story)

    def learn(self, article: ArticleText) -> None:
        """Take in an article's summary as a sample of what feeds repeat (see _Boilerplate)
        without matching it: a rebuild feeds it the summaries of stories no longer active, which
        the live matcher learned from too."""
        if article.summary:
            title = tuple(text_tokens(strip_title(article.title, article.source)))
            words = text_tokens(article.summary[:600])
            self._boilerplate.remember(_Boilerplate.outlet(article), words, title)

    def assign(
        self, article: ArticleText, new_story_id: Callable[[], int] | None = None
    ) -> Assignment:
        """match() then add(); a new story takes its id from `new_story_id` or a counter."""
        found = self.match(article)
        story_id, score = (
            found if found else (new_story_id() if new_story_id else self._fresh_id(), 0.0)
        )
        snapshot = self.add(story_id, article)
        merge = self.settle(story_id)
        later = tuple(self.revisit(article.published))
        is_new = found is None
        merged: tuple[int, ...] = ()
        if merge is not None:
            is_new = is_new and merge.survivor == story_id
            story_id, snapshot, merged = merge.survivor, merge.snapshot, (merge.absorbed,)
        for other in later:  # a lone article may have joined this very story
            if other.survivor == story_id:
                snapshot = other.snapshot
        merges = later if merge is None else (merge, *later)
        return Assignment(story_id, is_new, score, snapshot, merged, merges)

    def expire(self, now: datetime) -> int:
        """Forget stories whose last article is older than the window; returns how many."""
        cutoff = _earlier(now, self.config.window)
        dropped = 0
        while self._expiry and self._expiry[0][0] < cutoff:
            queued, story_id = heapq.heappop(self._expiry)
            story = self._stories.get(story_id)
            if story is None or story.queued_last != queued:
                continue  # a newer entry for this story is further on in the heap
            if story.last >= cutoff:
                story.queued_last = story.last
                heapq.heappush(self._expiry, (story.last, story_id))
                continue
            self._forget(story)
            dropped += 1
        return dropped

    def settle(self, story_id: int) -> Merge | None:
        """Merge the story with another active story that covers its signature, if any.

        Called after `add`; the smaller story is absorbed into the larger, so the survivor may be
        either. Returns None when nothing was merged (or the story is unknown).
        """
        story = self._stories.get(story_id)
        if story is None or not self._settle_due(story.articles):
            return None
        signature = self._signature(story)
        if not signature:
            return None
        candidates: set[int] = set()
        for token in signature:
            holders = self._postings.get(token, ())
            if len(holders) <= self.config.rare_postings:
                candidates.update(holders)
        candidates.discard(story_id)
        best: tuple[float, int] | None = None
        for other_id in sorted(candidates):
            self.comparisons += 1
            coverage = self._coverage(signature, self._stories[other_id])
            if coverage >= self.config.merge_coverage and (best is None or coverage > best[0]):
                best = (coverage, other_id)
        if best is None:
            best = self._closest_profile(story, candidates)
        if best is None:
            return None
        return self._merge(story, self._stories[best[1]])

    def revisit(self, now: datetime) -> list[Merge]:
        """Give lone articles published `revisit_after` or more before `now` their second look.

        A story that still holds only the article that started it is scored against the other
        active stories as if the article arrived now; if the best clears `revisit_threshold` the
        lone story is absorbed into that one. Call after `add`/`settle`; returns the merges,
        oldest article first. `now` is the stream's clock, normally the publish time of the
        article just added; a caller that knows the wall clock should pass the earlier of the two,
        so that one article stamped in the future does not spend every pending look early.
        """
        merges: list[Merge] = []
        due = _earlier(now, self.config.revisit_after)
        while self._revisits and self._revisits[0][0] <= due:
            _, story_id = heapq.heappop(self._revisits)
            story = self._stories.get(story_id)
            if story is None or story.articles != 1:
                continue
            best = self._best(self._lone_features(story), exclude=story_id)
            if best is None or best[1] < self.config.revisit_threshold:
                continue
            survivor = self._stories[best[0]]
            self._absorb(survivor, story)
            merges.append(Merge(story_id, survivor.id, self._snapshot(survivor)))
        return merges

    def skip_revisits(self, now: datetime) -> int:
        """Drop, unseen, the second looks that `revisit(now)` would give; returns how many.

        For a replay of stored articles in arrival order: calling this after each `add` with the
        clock the live process passed to `revisit` drops exactly the looks it already gave, and
        keeps those it never got to (a restart right after a late-delivered article).
        """
        dropped = 0
        due = _earlier(now, self.config.revisit_after)
        while self._revisits and self._revisits[0][0] <= due:
            heapq.heappop(self._revisits)
            dropped += 1
        return dropped

    @property
    def pending_revisits(self) -> int:
        return len(self._revisits)

    # --- internals ------------------------------------------------------------------------

    def _lone_features(self, story: _Story) -> _Features:
        """The features of a story's only article, rebuilt from what the story keeps."""
        norm_title = story.titles[-1][0]
        title_words = set(norm_title.split())
        summary = self.config.summary_weight
        weights = {t: 1.0 if t in title_words else summary for t in story.tokens}
        return _Features(weights, norm_title, tuple(norm_title.split()))

    def _merge(self, story: _Story, other: _Story) -> Merge:
        """Merge two stories: the larger survives, the older of two the same size."""
        survivor, absorbed = (
            (other, story)
            if (other.articles, -other.id) > (story.articles, -story.id)
            else (story, other)
        )
        self._absorb(survivor, absorbed)
        return Merge(absorbed.id, survivor.id, self._snapshot(survivor))

    def _settle_due(self, articles: int) -> bool:
        return articles <= self.config.settle_every_until or articles & (articles - 1) == 0

    def _signature(self, story: _Story) -> dict[str, float]:
        """Words in at least `signature_share` of the story's articles, with their idf."""
        floor = self.config.signature_share * story.articles
        return {t: self._idf(t) for t, count in story.tokens.items() if count >= floor}

    def _coverage(self, signature: dict[str, float], other: _Story) -> float:
        """How much of the signature (idf-weighted) the other story holds in cover_share of it."""
        full = self.config.cover_share * other.articles
        covered = sum(
            idf * min(1.0, other.tokens.get(token, 0) / full) for token, idf in signature.items()
        )
        return covered / sum(signature.values())

    def _closest_profile(self, story: _Story, candidates: set[int]) -> tuple[float, int] | None:
        """The candidate whose word shares are closest to this one's (idf cosine), if it
        reaches `profile_merge`; only stories of `profile_min_articles` or more are compared."""
        least = self.config.profile_min_articles
        if story.articles < least:
            return None
        others = [c for c in sorted(candidates) if self._stories[c].articles >= least]
        if not others:
            return None
        idf: dict[str, float] = {}  # fixed within this call: compute each word's once
        own = self._profile(story, idf)
        own_norm = math.sqrt(sum(v * v for v in own.values()))
        best: tuple[float, int] | None = None
        for other_id in others:
            self.comparisons += 1
            other = self._stories[other_id]
            dot = square = 0.0
            # _profile's sum, inline: no dict built for each candidate, on the settle's hot path
            for token, count in other.tokens.items():
                weight = idf.get(token)
                if weight is None:
                    weight = idf[token] = self._idf(token)
                value = weight * count / other.articles
                square += value * value
                mine = own.get(token)
                if mine is not None:
                    dot += mine * value
            norm = own_norm * math.sqrt(square)
            cosine = dot / norm if norm > 0 else 0.0
            if cosine >= self.config.profile_merge and (best is None or cosine > best[0]):
                best = (cosine, other_id)
        return best

    def _profile(self, story: _Story, idf: dict[str, float]) -> dict[str, float]:
        """Word -> idf times the share of the story's articles that hold the word."""
        out: dict[str, float] = {}
        for token, count in story.tokens.items():
            weight = idf.get(token)
            if weight is None:
                weight = idf[token] = self._idf(token)
            out[token] = weight * count / story.articles
        return out

    def _absorb(self, survivor: _Story, absorbed: _Story) -> None:
        self._forget(absorbed)
        for token, count in absorbed.tokens.items():
            if token not in survivor.tokens:
                self._postings.setdefault(token, set()).add(survivor.id)
            survivor.tokens[token] = survivor.tokens.get(token, 0) + count
        survivor.articles += absorbed.articles
        survivor.first = min(survivor.first, absorbed.first)
        if absorbed.last > survivor.last:
            survivor.last = absorbed.last
            survivor.queued_last = absorbed.last
            heapq.heappush(self._expiry, (absorbed.last, survivor.id))
        for source in absorbed.sources:
            if source not in survivor.sources:
                survivor.sources.append(source)
        keep = self.config.recent_titles
        survivor.titles = (absorbed.titles + survivor.titles)[-keep:]
        survivor.central = (survivor.central + absorbed.central)[: self.config.central_titles]
        survivor.headline = max(survivor.central, key=lambda c: self._centrality(survivor, c[1]))[0]

    def _fresh_id(self) -> int:
        story_id = next(self._next_id)
        while story_id in self._stories:
            story_id = next(self._next_id)
        return story_id

    def _forget(self, story: _Story) -> None:
        self._matched = None  # features depend on the postings (joined words)
        del self._stories[story.id]
        for token in story.tokens:
            holders = self._postings.get(token)
            if holders is not None:
                holders.discard(story.id)
                if not holders:
                    del self._postings[token]

    def _features(self, article: ArticleText) -> _Features:
        title = [sys.intern(t) for t in text_tokens(strip_title(article.title, article.source))]
        weights = dict.fromkeys(title, 1.0)
        for first, second in zip(title, title[1:], strict=False):
            # "Mt. Gox" and "MtGox", "Spider-Man" and "Spiderman": one word once it has been seen
            joined = first + second
            if joined in self._postings and first.isalpha() and second.isalpha():
                weights.setdefault(sys.intern(joined), 1.0)
        outlet, summary = "", []
        if article.summary:
            outlet, summary = _Boilerplate.outlet(article), text_tokens(article.summary[:600])
            for token in self._boilerplate.strip(outlet, summary, article.source):
                weights.setdefault(sys.intern(token), self.config.summary_weight)
        if article.url:
            for token in text_tokens(url_words(article.url[:500])):
                weights.setdefault(sys.intern(token), self.config.summary_weight)
        return _Features(weights, " ".join(title), tuple(title), outlet, summary)

    def _idf(self, token: str) -> float:
        # Rarity across active stories: a word repeated by every article of one story still
        # singles that story out, while a word spread over many stories says little.
        # Rarity in English at large weighs it too: it tells names from everyday words even while
        # few stories are active.
        holders = self._postings.get(token)
        stream = math.log((len(self._stories) + 1) / ((len(holders) if holders else 0) + 1)) + 1.0
        rarity, unlisted = self._rarity
        return stream * rarity.get(token, unlisted) if rarity else stream

    def _share(self, story: _Story, token: str) -> float:
        return min(1.0, story.tokens.get(token, 0) / (story.articles * self.config.saturation))

    def _best(self, features: _Features, exclude: int | None = None) -> tuple[int, float] | None:
        if not features.weights:
            return None
        idf = {t: self._idf(t) for t in features.weights}
        total = sum(idf[t] * w for t, w in features.weights.items())
        common: list[str] = []
        collected: dict[int, float] = {}
        for token, weight in features.weights.items():
            holders = self._postings.get(token)
            if not holders:
                continue
            if len(holders) > self.config.rare_postings:
                common.append(token)
                continue
            w = idf[token] * weight
            for story_id in holders:
                if story_id == exclude:
                    continue
                share = self._share(self._stories[story_id], token)
                collected[story_id] = collected.get(story_id, 0.0) + w * share
        if not collected or total <= 0:
            return None
        # Words held by many stories did not find candidates, but they still count for them.
        for story_id in collected:
            story = self._stories[story_id]
            for token in common:
                if token in story.tokens:
                    collected[story_id] += (
                        idf[token] * features.weights[token] * self._share(story, token)
                    )
        top = sorted(collected.items(), key=lambda kv: (-kv[1], kv[0]))[: self.config.candidates]
        words = features.weights
        squares = {t: v * v for t, v in idf.items()}
        own_norm = math.sqrt(sum(squares.values()))
        seen = dict(squares)
        pw, nw = self.config.profile_weight, self.config.nearest_weight
        best: tuple[int, float] | None = None
        for story_id, mass in top:
            self.comparisons += 1
            nearest = fuzzy = 0.0
            for norm_title, tokens in self._stories[story_id].titles:
                shared = [t for t in tokens if t in words]
                if shared:
                    other = 0.0
                    for t in tokens:
                        square = seen.get(t)
                        if square is None:  # idf is fixed within this call: compute it once
                            square = seen[t] = self._idf(t) ** 2
                        other += square
                    nearest = max(
                        nearest, sum(squares[t] for t in shared) / (own_norm * math.sqrt(other))
                    )
                fuzzy = max(fuzzy, fuzz.token_set_ratio(features.norm_title, norm_title) / 100.0)
            score = pw * (mass / total) + nw * nearest + (1 - pw - nw) * fuzzy
            score += self.config.anchor_weight * self._anchor(self._stories[story_id], words)
            if best is None or score > best[1]:
                best = (story_id, score)
        return best

    def _anchor(self, story: _Story, words: dict[str, float]) -> float:
        if story.articles < self.config.anchor_min_articles:
            return 0.0
        limit = self.config.anchor_stories
        return max(
            (
                story.tokens[t] / story.articles
                for t in words
                if t in story.tokens and len(self._postings[t]) <= limit
            ),
            default=0.0,
        )

    def _consider_headline(self, story: _Story, title: str, tokens: tuple[str, ...]) -> None:
        """Keep the most central title: the one whose words most of the story's articles share.
        `tokens` are the title's words, interned: shared with the postings' keys."""
        if len(story.central) < self.config.central_titles:
            story.central.append((title, tokens))
        elif story.articles % 5 == 0:
            story.central[story.articles % self.config.central_titles] = (title, tokens)
        else:
            return

        story.headline = max(story.central, key=lambda c: self._centrality(story, c[1]))[0]

    @staticmethod
    def _centrality(story: _Story, words: tuple[str, ...]) -> float:
        if not words:
            return 0.0
        shared = sum(story.tokens.get(t, 0) for t in words) / story.articles
        return shared / math.sqrt(len(words))

    def _snapshot(self, story: _Story) -> StorySnapshot:
        return StorySnapshot(
            story.id,
            story.headline,
            story.articles,
            len(story.sources),
            story.first,
            story.last,
        )

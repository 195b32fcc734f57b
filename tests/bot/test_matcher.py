"""The story matcher through its public API: normalisation, joins, splits, window, replay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.stories.matcher import ArticleText, MatcherConfig, StoryMatcher
from bot.stories.normalize import normalize_title, strip_title, url_words, word_rarity

T = datetime(2014, 3, 10, 8, 0, tzinfo=UTC)


def art(title: str, minutes: float = 0, source: str = "", summary: str = "") -> ArticleText:
    return ArticleText(title, T + timedelta(minutes=minutes), summary, source)


@pytest.mark.parametrize(
    ("title", "source", "expected"),
    [
        ("Fed holds rates steady - Reuters", "Reuters", "Fed holds rates steady"),
        ("Fed holds rates steady | BBC News", "", "Fed holds rates steady"),
        ("UPDATE 2-Fed holds rates steady", "", "Fed holds rates steady"),
        ("REFILE-EXCLUSIVE-Fed holds rates steady", "", "Fed holds rates steady"),
        (
            "Spider-Man - the musical - closes on Broadway tonight after long run",
            "",
            "Spider-Man - the musical - closes on Broadway tonight after long run",
        ),
    ],
)
def test_strip_title_removes_wire_prefixes_and_publisher_tails(title, source, expected):
    assert strip_title(title, source) == expected


def test_normalize_folds_case_unicode_punctuation_stop_words_and_plurals():
    assert normalize_title("The STOCKS fall, as Fed’s Plosser speaks!") == normalize_title(
        "stock falls as fed plosser speak"
    )


def test_same_event_in_other_words_joins_one_story():
    m = StoryMatcher()
    a = m.assign(art("Malaysia Airlines flight MH370 missing with 239 aboard"))
    b = m.assign(art("Missing Malaysia Airlines MH370: search widens", 30, "BBC"))
    c = m.assign(art("MH370 search: Malaysia Airlines jet still missing", 60, "CNN"))
    assert a.is_new and not b.is_new and not c.is_new
    assert a.story_id == b.story_id == c.story_id
    assert c.snapshot.article_count == 3 and c.snapshot.source_count == 2


def test_different_events_sharing_a_word_stay_apart():
    m = StoryMatcher()
    a = m.assign(art("Apple releases iOS 7.1 with CarPlay"))
    b = m.assign(art("Apple pie recipe wins state fair", 5))
    c = m.assign(art("Bitcoin exchange Mt. Gox files for US bankruptcy", 10))
    assert len({a.story_id, b.story_id, c.story_id}) == 3


def test_summaries_help_when_titles_differ():
    m = StoryMatcher()
    first = m.assign(
        art(
            "Chiquita and Fyffes to merge",
            summary="Chiquita Brands and Fyffes agreed an all-share merger creating the largest banana company.",
        )
    )
    second = m.assign(
        art(
            "World's biggest banana company is born",
            20,
            summary="Chiquita Brands and Fyffes merger creates the largest banana company in the world.",
        )
    )
    assert second.story_id == first.story_id


def test_articles_older_than_the_window_start_new_stories():
    m = StoryMatcher(MatcherConfig(window=timedelta(hours=6)))
    a = m.assign(art("Malaysia Airlines flight MH370 missing with 239 aboard"))
    b = m.assign(art("Malaysia Airlines MH370 still missing", 7 * 60))
    assert b.is_new and b.story_id != a.story_id
    assert m.active_count == 1


def test_candidates_come_from_the_index_not_a_scan():
    m = StoryMatcher()
    for i in range(2000):
        m.add(i + 1, art(f"Unrelated story number{i} about topic{i} and place{i}", i / 100))
    before = m.comparisons
    m.match(art("Malaysia Airlines flight MH370 missing", 25))
    assert m.comparisons - before <= m.config.candidates


def test_headline_moves_to_the_most_central_title():
    m = StoryMatcher()
    titles = [
        "Odd angle: Lohan doc draws viewers",
        "Lindsay Lohan reality show premiere on OWN",
        "Lindsay Lohan OWN premiere draws 693,000 viewers",
        "Oprah's Lindsay Lohan premiere on OWN",
        "Lindsay Lohan premiere: Oprah and OWN",
    ]
    story = None
    for i, t in enumerate(titles):
        story = m.add(1, art(t, i))
    assert story is not None and story.headline != titles[0]
    assert "Lohan" in story.headline and "OWN" in story.headline


def test_replaying_add_rebuilds_the_same_assignments():
    stream = [
        art("Malaysia Airlines flight MH370 missing", 0),
        art("Apple releases iOS 7.1 with CarPlay", 1),
        art("MH370 search widens as Malaysia Airlines jet still missing", 2),
        art("iOS 7.1 update from Apple brings CarPlay", 3),
    ]
    original = StoryMatcher()
    ids = [original.assign(a).story_id for a in stream[:3]]
    replayed = StoryMatcher()
    for story_id, a in zip(ids, stream[:3], strict=True):
        replayed.add(story_id, a)
    assert original.match(stream[3]) == replayed.match(stream[3])


def test_empty_or_stop_word_titles_start_their_own_story():
    m = StoryMatcher()
    m.assign(art("The news of the day"))
    assert m.match(art("the of and")) is None


def _story(m: StoryMatcher, story_id: int, titles: list[str], start: float) -> None:
    for i, title in enumerate(titles):
        m.add(story_id, art(title, start + i))


def test_a_fragment_whose_signature_another_story_covers_is_merged_into_it():
    m = StoryMatcher()
    _story(
        m,
        1,
        [
            "GM recall: regulators ignored complaints about GM cars",
            "GM recall probe: NHTSA missed warnings on GM ignition",
            "GM hires law firms for internal recall review",
            "GM recall widens as questions mount",
        ],
        0,
    )
    _story(m, 2, ["GM recall: what owners should know", "The GM recall, explained"], 10)
    merge = m.settle(2)
    assert merge is not None
    assert (merge.absorbed, merge.survivor) == (2, 1)  # the smaller story is absorbed
    assert merge.snapshot.article_count == 6
    assert m.snapshot(2) is None and m.active_count == 1
    # words only the absorbed story had now find the survivor
    found = m.match(art("What GM owners should know", 20))
    assert found is not None and found[0] == 1


def test_two_bankruptcies_of_different_companies_are_not_merged():
    m = StoryMatcher()
    _story(
        m,
        1,
        [
            "Sbarro files for bankruptcy again",
            "Pizza chain Sbarro files for Chapter 11 bankruptcy",
            "Sbarro bankruptcy: pizza chain to close stores",
        ],
        0,
    )
    _story(
        m, 2, ["Mt. Gox files for bankruptcy protection in US", "Mt. Gox bankruptcy in Dallas"], 5
    )
    assert m.settle(2) is None
    assert m.settle(1) is None
    assert m.active_count == 2


NEIGHBORS = [
    "Neighbors review: Seth Rogen and Zac Efron in a raunchy frat comedy",
    "SXSW 2014: Neighbors premiere gets big laughs",
    "Neighbors review: Rogen and Efron go to war with a fraternity",
    "Neighbors, with Seth Rogen and Zac Efron, opens SXSW",
]


def test_two_stories_of_one_event_worded_apart_merge_on_their_whole_profiles():
    """The reviews and the star's interviews: "interview" and "frat" in most of the second keep
    the first from covering its signature, but the two share most of what they say."""
    interviews = [
        "Zac Efron interview: frat house comedy",
        "Efron interview: Seth Rogen and frat life",
        "Interview: Zac Efron on Neighbors",
    ]
    signature_only = StoryMatcher(MatcherConfig(profile_merge=1.01))
    _story(signature_only, 1, NEIGHBORS, 0)
    _story(signature_only, 2, interviews, 10)
    assert signature_only.settle(2) is None
    m = StoryMatcher()
    _story(m, 1, NEIGHBORS, 0)
    _story(m, 2, interviews, 10)
    merge = m.settle(2)
    assert merge is not None and (merge.absorbed, merge.survivor) == (2, 1)


def test_two_bankruptcies_of_three_articles_each_are_not_merged_on_their_profiles():
    m = StoryMatcher()
    _story(m, 1, SBARRO[:3], 0)
    gox = [
        "Mt. Gox files for bankruptcy protection in US",
        "Mt. Gox bankruptcy in Dallas",
        "Mt. Gox seeks Chapter 15 bankruptcy protection in Texas",
    ]
    _story(m, 2, gox, 5)
    assert m.settle(2) is None and m.settle(1) is None


def test_assign_reports_a_merge_and_returns_the_survivor():
    m = StoryMatcher()
    for i in range(4):
        m.add(7, art(f"Titanfall review roundup part {i}: Titanfall review scores", i))
    m.add(9, art("Titanfall review", 5))
    assignment = m.assign(art("Titanfall review: the verdict", 6), new_story_id=lambda: 11)
    assert (assignment.story_id, assignment.merged) == (7, (9,))
    assert assignment.snapshot.article_count == 6
    assert m.snapshot(9) is None


SBARRO = [
    "Sbarro files for bankruptcy again",
    "Pizza chain Sbarro files for Chapter 11 bankruptcy",
    "Sbarro bankruptcy: pizza chain to close stores",
    "Sbarro seeks bankruptcy protection for second time",
]


def test_a_lone_article_joins_a_story_on_its_second_look_an_hour_later():
    m = StoryMatcher()
    m.add(2, art("Sbarro again seeks protection from creditors", 0))  # alone when it arrived
    m.add(3, art("Polar vortex returns to the Midwest", 1))  # alone, and stays alone
    _story(m, 1, SBARRO, 5)
    assert m.revisit(T + timedelta(minutes=59)) == []  # not due yet
    merges = m.revisit(T + timedelta(minutes=61))
    assert [(x.absorbed, x.survivor) for x in merges] == [(2, 1)]
    assert merges[0].snapshot.article_count == 5
    assert m.snapshot(2) is None and m.snapshot(3) is not None
    assert m.revisit(T + timedelta(hours=5)) == []  # one second look each


def test_second_looks_fall_due_by_publish_time_so_a_late_article_triggers_none():
    m = StoryMatcher()
    m.add(2, art("Sbarro again seeks protection from creditors", 0))
    _story(m, 1, SBARRO, 5)
    # an article published long before (a feed catching up) makes no look due
    late = m.assign(art("Elephants tell human voices apart", -300), new_story_id=lambda: 20)
    assert late.merges == () and m.snapshot(2) is not None
    on_time = m.assign(art("Polar vortex returns to the Midwest", 61), new_story_id=lambda: 21)
    assert [(x.absorbed, x.survivor) for x in on_time.merges] == [(2, 1)]


def test_a_later_stamped_lone_article_that_arrived_first_does_not_hold_up_earlier_looks():
    m = StoryMatcher()
    m.add(3, art("Polar vortex returns to the Midwest", 120))  # arrives first, stamped later
    m.add(2, art("Sbarro again seeks protection from creditors", 0))
    _story(m, 1, SBARRO, 5)
    assert [(x.absorbed, x.survivor) for x in m.revisit(T + timedelta(minutes=61))] == [(2, 1)]
    assert m.pending_revisits == 2  # the vortex and the Sbarro story are still to come


def test_a_story_that_grew_is_not_revisited_and_assign_reports_second_looks():
    m = StoryMatcher()
    m.add(2, art("Sbarro again seeks protection from creditors", 0))
    m.add(2, art("Sbarro creditors seek answers", 1))  # no longer lone
    m.add(4, art("Titanfall review: the verdict", 2))
    for i in range(4):
        m.add(7, art(f"Titanfall review roundup part {i}: Titanfall review scores", 3 + i))
    assignment = m.assign(art("Elephants tell human voices apart", 90), new_story_id=lambda: 11)
    assert (assignment.story_id, assignment.is_new, assignment.merged) == (11, True, ())
    assert [(x.absorbed, x.survivor) for x in assignment.merges] == [(4, 7)]
    assert m.snapshot(2).article_count == 2


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "http://www.foxbusiness.com/industries/2014/03/10/ebay-asks-shareholders-to-vote/",
            "industries ebay asks shareholders vote",
        ),
        ("http://www.technewsworld.com/story/80108.html", ""),
        ("https://example.org/a%C3%A9roport-ferm%C3%A9", "aéroport fermé"),
        ("not a url at all", "not url all"),
        ("http://[broken", ""),
    ],
)
def test_url_words_keep_the_slug_and_drop_ids_hosts_and_boilerplate(url, expected):
    assert url_words(url) == expected


def _proxy_fight(first_url: str, second_url: str) -> tuple[int | None, int]:
    m = StoryMatcher()
    first = m.assign(ArticleText("Shareholders urged to reject board nominees", T, url=first_url))
    found = m.match(ArticleText("Proxy fight heats up", T + timedelta(minutes=5), url=second_url))
    return (found[0] if found else None), first.story_id


def test_link_words_help_when_titles_say_little():
    found, story = _proxy_fight(
        "http://example.com/2014/03/10/ebay-icahn-board-nominees-proxy-fight/",
        "http://other.example/ebay-icahn-proxy-fight-heats-up",
    )
    assert found == story
    assert _proxy_fight("", "") == (None, story)  # the titles alone share nothing


@pytest.mark.parametrize(
    ("name", "joins"), [("Mt. Gox", True), ("Mt Gox", True), ("Mt. Fox", False)]
)
def test_a_name_written_as_one_word_or_two_is_one_word(name, joins):
    m = StoryMatcher()
    first = m.assign(art("MtGox CEO Karpeles apologises"))
    m.assign(art("Bitcoin price slumps", 1))
    found = m.match(art(f"{name} CEO blog hacked", 2))
    assert (found is not None and found[0] == first.story_id) is joins


def test_rare_words_weigh_more_than_everyday_ones():
    assert word_rarity("sbarro") > word_rarity("bankruptcy") > word_rarity("file")
    assert word_rarity("file") > word_rarity("year")
    assert word_rarity("year") >= 0.3 and word_rarity("zzqxj") <= 3.0


def test_same_event_words_do_not_join_different_companies():
    m = StoryMatcher()
    sbarro = m.assign(art("Sbarro pizza chain files for bankruptcy again"))
    for i, title in enumerate(
        [
            "Sbarro files for bankruptcy for the second time",
            "Pizza chain Sbarro back in bankruptcy",
        ]
    ):
        assert m.assign(art(title, i + 1)).story_id == sbarro.story_id
    assert m.assign(art("Mt. Gox files for bankruptcy protection in Tokyo", 5)).is_new


def test_add_reuses_match_work_only_for_the_same_article():
    m = StoryMatcher()
    m.match(art("Sbarro files for bankruptcy again"))
    m.add(1, art("Polar vortex returns to the Midwest"))  # not the article just matched
    assert m.snapshot(1).headline == "Polar vortex returns to the Midwest"
    assert m.match(art("Polar vortex returns")) is not None
    assert m.match(art("Sbarro files for bankruptcy again")) is None


# Unrelated headlines of one outlet, each a story of its own.
_UNRELATED = [
    "Fed holds interest rates steady",
    "Apple buys Beats headphones",
    "Volcano erupts near Iceland village",
    "Chelsea beat Arsenal in derby",
    "Oscars host announced for next year",
    "Toyota recalls hybrid cars",
    "Drought hits Brazil coffee crop",
    "NASA probe reaches Jupiter orbit",
]


def _stories(m: StoryMatcher, articles: list[ArticleText]) -> int:
    return len({m.assign(a).story_id for a in articles})


def test_an_outlets_summary_template_does_not_pull_its_unrelated_stories_together():
    # "Get the latest ..." is in every summary of the outlet and in none of its headlines
    template = "Get the latest Daily Planet headlines delivered daily. Subscribe to newsletters."
    articles = [art(t, i * 7, "Daily Planet", template) for i, t in enumerate(_UNRELATED)]
    assert _stories(StoryMatcher(), articles) == len(_UNRELATED)


def test_a_platforms_summary_template_does_not_pull_unrelated_outlets_together():
    # the same line on every site of one publishing service, each with its own name in it; it is
    # known for one once a few summaries carried it (the first few of a new stream can still join)
    m = StoryMatcher()
    for i in range(4):
        m.assign(art(f"Warm-up headline {i}", i, f"Blog{i}", "Syndicated by Feedsmith newswire."))
    outlets = [f"Site{chr(ord('A') + i)} Weekly" for i in range(len(_UNRELATED))]
    articles = [
        art(t, 10 + i * 7, o, f"Syndicated by Feedsmith newswire for {o} subscribers.")
        for i, (t, o) in enumerate(zip(_UNRELATED, outlets, strict=True))
    ]
    assert _stories(m, articles) == len(_UNRELATED)


def test_summary_words_a_story_repeats_in_its_headlines_still_count_after_much_traffic():
    m = StoryMatcher()
    for i in range(300):  # other news, whose summaries never say "Crimea" or "referendum"
        m.assign(art(f"Filler headline number {i} about item{i}", i * 0.1, f"Outlet{i % 7}", "x"))
    first = m.assign(
        art("Crimea votes in referendum", 40, "Wire", "Crimea referendum on joining Russia held.")
    )
    later = m.assign(
        art(
            "Polls close on the peninsula",
            45,
            "Other Wire",
            "Crimea referendum result on joining Russia due tonight.",
        )
    )
    assert later.story_id == first.story_id


def test_boilerplate_memory_stays_bounded_over_a_long_stream():
    m = StoryMatcher()
    for i in range(3000):  # every summary with words no other has, every article a new outlet
        m.assign(art(f"Event {i} happens", i * 0.5, f"Outlet {i}", f"w{i}a w{i}b w{i}c"))
    memory = m._boilerplate  # noqa: SLF001 - what the bound is about
    assert len(memory._recent) <= memory.MAX_OUTLETS  # noqa: SLF001
    assert len(memory._in_summaries) <= 3 * memory.WINDOW  # noqa: SLF001


# an outlet's standing preamble, longer than any fixed number of words kept of each end
_PREAMBLE = (
    "Metropolis Daily Planet brings you breaking news, in-depth analysis, exclusive interviews "
    "and opinion from Metropolis, Gotham and Smallville every day of the year. Sign up for our "
    "free Planet Morning Briefing newsletter, follow Lois Lane and Jimmy Olsen on Bluesky and "
    "never miss a Kryptonian scoop again. Download the Planet app for iPhone and Android."
)
# (a closing one is compared as far as the 600 characters of a summary read reach)
_TAGLINE = " ".join(f"Zorblat{i}" for i in range(40))


@pytest.mark.parametrize(
    "summary",
    [
        lambda lead: f"{_PREAMBLE} {lead}",
        lambda lead: f"{_TAGLINE}. {lead}",
        lambda lead: f"{lead}. {_TAGLINE}",
        lambda lead: _TAGLINE,
    ],
    ids=["preamble", "long-opening", "long-closing", "whole"],
)
def test_a_long_template_an_outlet_repeats_does_not_pull_its_stories_together(summary):
    # found in review: only 24 words of each end were compared, so the middle of a longer
    # template stayed and tied the outlet's first unrelated stories together
    articles = [
        art(t, i * 7, "Daily Planet", summary(f"{t} today.")) for i, t in enumerate(_UNRELATED)
    ]
    assert _stories(StoryMatcher(), articles) == len(_UNRELATED)

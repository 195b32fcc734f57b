"""Digest composition: which sentences are chosen and which articles they cite."""

from __future__ import annotations

import pytest

from bot.digests.compose import (
    MAX_SOURCES,
    StoryDigest,
    StoryUpdate,
    compose_group_digest,
    compose_story_digest,
    split_sentences,
)
from tests.bot.digests import SUMMIT, article, update


def outlets(digest: StoryDigest, numbers: tuple[int, ...]) -> set[str]:
    return {digest.sources[n - 1].outlet for n in numbers}


def test_summary_has_two_to_four_sentences():
    digest = compose_story_digest(update(SUMMIT))
    assert 2 <= len(digest.sentences) <= 4


def test_max_sentences_caps_the_summary():
    assert len(compose_story_digest(update(SUMMIT), max_sentences=2).sentences) == 2


def test_a_single_article_gets_one_sentence():
    digest = compose_story_digest(update(SUMMIT[:1]))
    assert len(digest.sentences) == 1
    assert digest.sentences[0].citations == (1,)


def test_a_sentence_cites_every_article_that_says_it():
    same = [
        article(i, "Storm Ciaran batters southern England with 100mph winds", source=f"S{i}")
        for i in range(1, 5)
    ]
    same.append(article(5, "Thousands without power after Storm Ciaran hits England"))
    digest = compose_story_digest(update(same))
    batters = next(s for s in digest.sentences if "batters" in s.text)
    assert outlets(digest, batters.citations) == {"S1", "S2", "S3", "S4"}


def test_a_paraphrase_in_another_outlet_counts_as_support():
    digest = compose_story_digest(update(SUMMIT))
    chips = next(s for s in digest.sentences if "semiconductor" in s.text)
    assert outlets(digest, chips.citations) == {"Kyodo", "Korea Herald"}


def test_sharing_only_the_names_is_not_support():
    digest = compose_story_digest(update(SUMMIT))
    arrived = next(s for s in digest.sentences if "arrived in Nara" in s.text)
    assert "Reuters" not in outlets(digest, arrived.citations)


def test_sources_are_numbered_in_order_of_first_citation():
    digest = compose_story_digest(update(SUMMIT))
    first_cited = list(dict.fromkeys(n for s in digest.sentences for n in s.citations))
    assert first_cited == list(range(1, len(first_cited) + 1))
    assert [s.number for s in digest.sources] == list(range(1, len(digest.sources) + 1))


def test_every_new_article_is_listed_once():
    digest = compose_story_digest(update(SUMMIT))
    assert sorted(s.url for s in digest.sources) == sorted(a.url for a in SUMMIT)


def test_near_duplicate_sentences_are_not_both_chosen():
    same = [
        article(i, "Storm Ciaran batters southern England with 100mph winds", f"Summary {i}.")
        for i in range(1, 5)
    ]
    same.append(article(5, "Storm Ciaran batters southern England with 100 mph winds"))
    same.append(article(6, "Thousands without power after Storm Ciaran hits England"))
    digest = compose_story_digest(update(same))
    assert sum("batters" in s.text for s in digest.sentences) == 1


def test_a_sentence_mostly_said_already_is_skipped():
    digest = compose_story_digest(update(SUMMIT))
    texts = [s.text for s in digest.sentences]
    assert not any("welcomed President Lee" in t for t in texts)


def test_boilerplate_and_truncated_sentences_are_never_chosen():
    digest = compose_story_digest(update(SUMMIT))
    text = " ".join(s.text for s in digest.sentences)
    for junk in ("Click here", "appeared first on", "(END)", "dominate the talks"):
        assert junk not in text


def test_datelines_are_stripped_from_summaries():
    digest = compose_story_digest(update(SUMMIT))
    assert digest.sentences[0].text.startswith("President Lee Jae-myung arrived")


def test_a_title_becomes_a_sentence_without_its_outlet_suffix():
    digest = compose_story_digest(
        update([article(1, "LIVE: Chiquita and Fyffes agree merger - Reuters", source="Reuters")])
    )
    assert digest.sentences[0].text == "Chiquita and Fyffes agree merger."


def test_a_title_ending_in_a_quote_still_gets_a_full_stop():
    digest = compose_story_digest(update([article(1, "Oprah to Lohan: 'Vultures are ready'")]))
    assert digest.sentences[0].text == "Oprah to Lohan: 'Vultures are ready'."


def test_abbreviations_do_not_end_a_sentence():
    text = "Mr. Lee met U.S. officials in Nara. They talked. Dr. J. Smith agreed."
    assert split_sentences(text) == [
        "Mr. Lee met U.S. officials in Nara.",
        "They talked.",
        "Dr. J. Smith agreed.",
    ]


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        (
            "The polls close at 10 p.m. The count starts at once.",
            ["The polls close at 10 p.m.", "The count starts at once."],
        ),
        (
            "The deal was signed by Apple Inc. It closes in June.",
            ["The deal was signed by Apple Inc.", "It closes in June."],
        ),
        (
            "Lee flew on to the U.S. He meets Biden on Friday.",
            ["Lee flew on to the U.S.", "He meets Biden on Friday."],
        ),
        # a name after them still belongs to the same sentence
        ("Talks in the U.S. Senate stalled.", ["Talks in the U.S. Senate stalled."]),
        ("He arrived at 10 a.m. Tuesday in Nara.", ["He arrived at 10 a.m. Tuesday in Nara."]),
    ],
)
def test_an_abbreviation_that_can_end_a_sentence_does_before_its_next_one(text, sentences):
    """'10 p.m. The count starts' was one sentence: every abbreviation joined what followed."""
    assert split_sentences(text) == sentences


def test_a_greek_question_mark_ends_a_sentence():
    text = "Τι θα γίνει τώρα; Η κυβέρνηση συνεδριάζει αύριο."
    assert split_sentences(text) == ["Τι θα γίνει τώρα;", "Η κυβέρνηση συνεδριάζει αύριο."]


def test_sources_are_capped_and_citations_only_reference_listed_sources():
    burst = [
        article(i, f"Leaders meet in Nara for summit on trade, report {i}", source=f"Outlet {i}")
        for i in range(200)
    ]
    digest = compose_story_digest(update(burst))
    assert len(digest.sources) == MAX_SOURCES
    listed = {s.number for s in digest.sources}
    assert all(set(s.citations) <= listed for s in digest.sentences)
    assert digest.new_count == 200


def test_every_sentence_keeps_its_own_article_when_sources_are_capped():
    crowd = [article(i, "Storm Ciaran batters southern England with winds") for i in range(30)]
    crowd += [
        article(100, "Rail services cancelled across Kent as trees block lines"),
        article(101, "Insurers brace for claims after the storm damages thousands of homes"),
    ]
    digest = compose_story_digest(update(crowd))
    assert len(digest.sentences) >= 2
    assert all(s.citations for s in digest.sentences)


def test_oversized_titles_are_clipped_not_dropped():
    digest = compose_story_digest(update([article(1, "word " * 3000), article(2, "x" * 10_000)]))
    assert digest.sentences
    assert all(len(s.text) <= 401 for s in digest.sentences)


def test_an_update_without_articles_has_no_sentences():
    digest = compose_story_digest(update([]))
    assert (digest.sentences, digest.sources, digest.new_count) == ((), (), 0)


def test_composition_is_deterministic():
    assert compose_story_digest(update(SUMMIT)) == compose_story_digest(update(SUMMIT))


def test_ties_are_broken_by_article_order():
    twins = [article(1, "Alpha beta gamma delta epsilon"), article(2, "Zeta eta theta iota kappa")]
    digest = compose_story_digest(update(twins), max_sentences=1)
    assert digest.sources[0].url == "https://news.example/1"


def test_group_digest_has_one_cited_sentence_per_story():
    other = StoryUpdate(9, "Banana merger", 3, (article(9, "Chiquita and Fyffes agree merger"),))
    digests = compose_group_digest([update(SUMMIT), other])
    assert [len(d.sentences) for d in digests] == [1, 1]
    assert all(d.sentences[0].citations for d in digests)


def test_sentences_split_in_scripts_without_latin_capitals():
    assert split_sentences("Путин прибыл в Пекин. Переговоры продлятся два дня.") == [
        "Путин прибыл в Пекин.",
        "Переговоры продлятся два дня.",
    ]
    assert split_sentences("وصل الرئيس إلى نارا. وسيناقش الزعيمان التجارة.") == [
        "وصل الرئيس إلى نارا.",
        "وسيناقش الزعيمان التجارة.",
    ]
    assert split_sentences("李在明抵达奈良。两国领导人将讨论贸易！会谈持续两天？是的") == [
        "李在明抵达奈良。",
        "两国领导人将讨论贸易！",
        "会谈持续两天？",
        "是的",
    ]
    # a lower-case word after a full stop is no new sentence, in any script
    assert split_sentences("Он прибыл в г. москва вчера.") == ["Он прибыл в г. москва вчера."]


def test_a_japanese_quotation_the_sentence_goes_on_from_is_not_split_off():
    """「…。」と言った was cut after the closing bracket, leaving "と言った。" as a sentence."""
    assert split_sentences("首相は「会談は成功した。」と述べた。両国は合意した。") == [
        "首相は「会談は成功した。」と述べた。",
        "両国は合意した。",
    ]
    assert split_sentences("「会談は成功した。」両国は合意した。") == [
        "「会談は成功した。」",
        "両国は合意した。",
    ]


def test_a_title_in_another_script_is_not_given_a_latin_full_stop():
    digest = compose_story_digest(update([article(1, "李在明抵达奈良。")]))
    assert digest.sentences[0].text == "李在明抵达奈良。"


def test_a_summary_cut_off_mid_sentence_loses_the_cut_sentence():
    cut = article(
        1,
        "Lee arrives in Nara",
        "President Lee arrived in Nara on Tuesday for a two-day summit with Takaichi. "
        "The two leaders are expected to discuss trade, supply chains and the security of the reg",
    )
    lede_cut = article(
        2,
        "Summit opens in Nara",
        "President Lee Jae-myung arrived in Nara on Tuesday for a two-day summit where he and the "
        "Japanese prime minister are expected to discuss trade, supply chains and North Kor",
    )
    deck = article(3, "Leaders in Nara", "Lee and Takaichi open their two-day summit in Nara")
    short_cut = article(4, "Talks in Nara", "Both leaders signalled that further meetings would be")
    # short, and cut inside a word that is no stop word: kept as "...their econo." before
    word_cut = article(5, "Trade on the agenda", "Both leaders want closer ties for their econo")
    items = [cut, lede_cut, deck, short_cut, word_cut]
    digest = compose_story_digest(update(items), max_sentences=5, min_sentences=5)
    texts = [s.text for s in digest.sentences]
    assert not any(t.endswith(("reg.", "Kor.", "would be.", "econo.")) for t in texts), texts
    assert "Lee and Takaichi open their two-day summit in Nara." in texts


def test_a_short_deck_ending_in_a_name_or_a_word_is_kept():
    items = [
        article(1, "Summit in Nara", "Lee and Takaichi open their two-day summit in Nara"),
        article(2, "Talks go on", "Both leaders want closer ties between their economies"),
    ]
    digest = compose_story_digest(update(items), max_sentences=4, min_sentences=4)
    texts = [s.text for s in digest.sentences]
    assert "Both leaders want closer ties between their economies." in texts, texts


def test_a_summary_that_repeats_the_title_and_outlet_does_not_outrank_the_title():
    # Google News descriptions are the headline and the outlet's name, nothing more
    items = [
        article(i, f"Mt. Gox files for US bankruptcy protection - {name}", source=name)
        for i, name in enumerate(["Reuters", "Bloomberg", "CNBC"], start=1)
    ]
    items = [
        type(a)(
            a.article_id,
            a.title,
            f"{a.title.rsplit(' - ', 1)[0]}  {a.source}",
            a.url,
            a.source,
            a.published,
        )
        for a in items
    ]
    digest = compose_story_digest(update(items))
    assert digest.sentences[0].text == "Mt. Gox files for US bankruptcy protection."
    assert digest.sentences[0].citations == (1, 2, 3)


MTA = [
    "Metro-North worker struck and killed by train in East Harlem",
    "Metro-North employee killed by train in Harlem identified",
    "Metro-North worker killed by train while working on the tracks",
    "Hudson line service restored after two-hour suspension",
]


def test_paraphrased_headlines_are_said_once():
    digest = compose_story_digest(update([article(i, t) for i, t in enumerate(MTA, start=1)]))
    texts = [s.text for s in digest.sentences]
    assert sum("killed by train" in t for t in texts) == 1, texts
    assert "Hudson line service restored after two-hour suspension." in texts


def test_a_fact_one_outlet_reports_still_makes_the_summary():
    quake = [
        article(
            1,
            "Quake hits central Turkey - Reuters",
            "A magnitude 6.8 earthquake struck central Turkey on Monday, officials said. "
            "Buildings collapsed in several towns near Malatya.",
            source="Reuters",
        ),
        article(
            2,
            "Strong earthquake in Turkey",
            "A strong earthquake hit central Turkey on Monday, collapsing buildings near Malatya. "
            "At least 12 people were killed, the interior minister said.",
        ),
        article(
            3,
            "Rescuers search rubble in Malatya",
            "Rescuers searched collapsed buildings in Malatya after a 6.8 magnitude quake struck "
            "central Turkey. Schools will stay closed for a week.",
        ),
    ]
    texts = [s.text for s in compose_story_digest(update(quake)).sentences]
    assert "At least 12 people were killed, the interior minister said." in texts, texts


def test_a_possessive_does_not_make_a_new_fact_a_paraphrase():
    items = [
        article(1, "McDonald's reports drop in February global sales"),
        article(2, "McDonald's sales tank in February as snow keeps diners home"),
    ]
    assert len(compose_story_digest(update(items)).sentences) == 2


def test_the_lede_of_an_item_without_a_title_is_kept():
    lede = "The central bank raised rates by half a point on Tuesday, its biggest move in decades."
    summary = f"{lede} Markets fell sharply after the decision. Analysts expect more hikes."
    made_up = summary[:120].rsplit(" ", 1)[0] + "…"  # what the parser titles such an item
    digest = compose_story_digest(update([article(1, made_up, summary)]))
    assert digest.sentences[0].text == lede


def test_chinese_and_japanese_sentences_are_candidates_and_end_in_a_full_width_stop():
    summary = "韩国总统李在明周二抵达奈良，与日本首相高市早苗举行为期两天的首脑会谈！？双方将讨论贸易问题。"
    assert split_sentences(summary) == [
        "韩国总统李在明周二抵达奈良，与日本首相高市早苗举行为期两天的首脑会谈！？",
        "双方将讨论贸易问题。",
    ]
    digest = compose_story_digest(update([article(1, "李在明抵达奈良举行首脑会谈", summary)]))
    assert digest.sentences[0].text.startswith("韩国总统李在明周二抵达奈良")
    digest = compose_story_digest(update([article(1, "李在明抵达奈良举行首脑会谈")]))
    assert digest.sentences[0].text == "李在明抵达奈良举行首脑会谈。"


def test_urdu_sentences_split_at_the_urdu_full_stop():
    assert split_sentences("صدر نارا پہنچ گئے۔ بات چیت دو دن جاری رہے گی۔") == [
        "صدر نارا پہنچ گئے۔",
        "بات چیت دو دن جاری رہے گی۔",
    ]

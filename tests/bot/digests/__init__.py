"""Digest composition and rendering tests; shared article factories live here."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.digests.compose import DigestArticle, StoryUpdate

PUBLISHED = datetime(2025, 11, 25, 9, 0, tzinfo=UTC)


def article(
    i: int, title: str, summary: str = "", *, source: str | None = None, url: str | None = None
) -> DigestArticle:
    return DigestArticle(
        i, title, summary, url or f"https://news.example/{i}", source or f"Outlet {i}", PUBLISHED
    )


def update(articles: list[DigestArticle], *, story_id: int = 42, total: int = 12) -> StoryUpdate:
    return StoryUpdate(
        story_id,
        "Lee's Nara Summit Reinforces Korea-Japan Ties Amid Trade and Security Challenges",
        total,
        tuple(articles),
    )


SUMMIT = [
    article(
        101,
        "Lee arrives in Nara for two-day summit with Takaichi - Yonhap",
        "SEOUL, Nov. 25 (Yonhap) -- President Lee Jae-myung arrived in Nara on Tuesday for a "
        "two-day summit with Japanese Prime Minister Sanae Takaichi. The leaders are expected to "
        "discuss trade, supply chains and North Korea. (END)",
        source="Yonhap",
        url="https://en.yna.co.kr/view/AEN20251125000100315",
    ),
    article(
        102,
        "Korea, Japan leaders meet in Nara, pledge closer economic ties",
        "South Korean President Lee Jae-myung and Prime Minister Sanae Takaichi met in Nara on "
        "Tuesday and pledged closer economic cooperation. The two leaders agreed to launch talks "
        "on semiconductor supply chains. Click here to subscribe to our newsletter.",
        source="Kyodo",
        url="https://english.kyodonews.net/news/2025/11/nara-summit.html",
    ),
    article(
        103,
        "Lee, Takaichi agree to start chip supply chain talks at Nara summit",
        "Lee and Takaichi agreed to launch talks on semiconductor supply chains, officials said. "
        "Mr. Lee also raised the issue of wartime forced labour. The leaders will hold a joint "
        "press conference on Wednesday.",
        source="Korea Herald",
        url="https://www.koreaherald.com/article/10620001",
    ),
    article(
        104,
        "What to expect from the Nara summit?",
        "Analysts expect little progress on historical disputes. The post What to expect from "
        "the Nara summit? appeared first on NHK World.",
        source="NHK",
        url="https://www3.nhk.or.jp/nhkworld/en/news/20251125_10/",
    ),
    article(
        105,
        "Takaichi hosts Lee in her home prefecture as Seoul and Tokyo seek steadier ties",
        "Prime Minister Sanae Takaichi welcomed President Lee Jae-myung to Nara, her home "
        "prefecture, on Tuesday. North Korea's missile launches and U.S. tariffs are expected "
        "to dominate the talks…",
        source="Reuters",
        url="https://www.reuters.com/world/asia-pacific/takaichi-hosts-lee-nara-2025-11-25/",
    ),
]

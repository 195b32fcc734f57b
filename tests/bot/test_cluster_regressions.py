"""`storywire cluster` on bad input, reruns on one database, and restarts of the story matcher."""

from __future__ import annotations

import io
import json
import sys
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bot.app import MATCHER_LEASE, Services, assign_and_notify
from bot.cli import assign_pending_stories, main
from bot.config import Settings
from bot.following import follow_topic, record_chat
from bot.stories.matcher import ArticleText
from bot.stories.service import StoryService
from store.articles import NewArticle, insert_articles
from store.db import session_scope
from store.leases import lease_holder
from store.models import Article, Follow, OutboxMessage, Story
from tests.conftest import T0

IOS_A = "Apple unveils iOS 7.1 update with CarPlay"
IOS_B = "Apple releases iOS 7.1 with CarPlay support"
PLANE = "Malaysia Airlines jet missing over South China Sea"


def _line(id_: object, title: object, published: object = "2014-03-10T10:00:00Z", **extra) -> str:  # type: ignore[no-untyped-def]
    return json.dumps({"id": id_, "title": title, "published": published, **extra})


def _cluster(env, data: bytes, *extra: str) -> tuple[int, list[dict]]:  # type: ignore[no-untyped-def]
    src = env / "in.jsonl"
    src.write_bytes(data)
    out = env / "out.jsonl"
    status = main(["cluster", str(src), "-o", str(out), "--quiet", *extra])
    rows = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
    return status, rows


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _three(middle: bytes) -> bytes:
    return (_line("a", IOS_A) + "\n").encode() + middle + (_line("b", IOS_B) + "\n").encode()


def test_a_bom_at_file_start_does_not_cost_the_first_line(env, capsys):
    status, rows = _cluster(env, "\ufeff".encode() + _three(b""))
    assert status == 0
    assert [r["id"] for r in rows] == ["a", "b"]
    assert "skipped" not in capsys.readouterr().err


def test_invalid_utf8_line_is_skipped_with_its_number(env, capsys):
    bad = b'{"id": "x", "title": "caf\xe9 \xff", "published": "2014-03-10T10:00:00Z"}\n'
    status, rows = _cluster(env, _three(bad))
    assert status == 0
    assert [r["id"] for r in rows] == ["a", "b"]
    assert "line 2: skipped" in capsys.readouterr().err


def test_a_lone_surrogate_in_a_title_is_skipped(env, capsys, db_engine):
    bad = b'{"id": "s", "title": "Apple \\ud800 iOS", "published": "2014-03-10T10:00:00Z"}\n'
    status, rows = _cluster(env, _three(bad), "--database", _url(db_engine))
    assert status == 0
    assert [r["id"] for r in rows] == ["a", "b"]
    assert "line 2: skipped" in capsys.readouterr().err


def test_a_nul_character_in_the_text_does_not_stop_the_run(env, db_engine):
    bad = (_line("n", "Apple \u0000 iOS 7.1 with CarPlay", summary="x\u0000y") + "\n").encode()
    status, rows = _cluster(env, _three(bad), "--database", _url(db_engine))
    assert status == 0
    assert [r["id"] for r in rows] == ["a", "n", "b"]


@pytest.mark.parametrize("published", ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00"])
def test_a_date_at_the_start_of_the_calendar_does_not_crash(env, published):
    status, rows = _cluster(env, _three((_line("y", PLANE, published) + "\n").encode()))
    assert status == 0
    assert {r["id"] for r in rows} >= {"a", "b"}
    assert rows[0]["story"] == rows[-1]["story"]


def test_a_far_future_date_does_not_expire_the_stories_of_the_stream(env, capsys):
    future = (_line("y", PLANE, "9999-12-31T23:59:59Z") + "\n").encode()
    status, rows = _cluster(env, _three(future))
    assert status == 0
    stories = {r["id"]: r["story"] for r in rows}
    assert stories["a"] == stories["b"]
    assert "line 2: skipped" in capsys.readouterr().err


def test_numeric_ids_come_back_as_numbers(env):
    data = (_line(1, IOS_A) + "\n" + _line("2", IOS_B) + "\n").encode()
    status, rows = _cluster(env, data)
    assert status == 0
    assert [r["id"] for r in rows] == [1, "2"]


@pytest.mark.parametrize("raw_id", ["NaN", "Infinity", "true"])
def test_ids_that_are_not_strings_or_finite_numbers_are_skipped(env, capsys, raw_id):
    bad = f'{{"id": {raw_id}, "title": "{PLANE}", "published": "2014-03-10T10:00:00Z"}}\n'
    status, rows = _cluster(env, _three(bad.encode()))
    assert status == 0
    assert [r["id"] for r in rows] == ["a", "b"]
    assert "line 2: skipped" in capsys.readouterr().err


def test_a_very_long_id_is_skipped_not_left_without_a_story(env, capsys):
    long = (_line("x" * 5000, PLANE) + "\n").encode()
    status, rows = _cluster(env, _three(long))
    assert status == 0
    assert all(r["story"] is not None for r in rows)
    assert [r["id"] for r in rows] == ["a", "b"]
    assert "line 2: skipped" in capsys.readouterr().err


def test_an_output_in_a_missing_directory_is_one_error_line(env, capsys):
    src = env / "in.jsonl"
    src.write_bytes(_three(b""))
    status = main(["cluster", str(src), "-o", str(env / "no" / "such" / "out.jsonl"), "--quiet"])
    assert status == 1
    err = capsys.readouterr().err
    assert "cannot write" in err and "Traceback" not in err


def test_dash_reads_the_input_from_stdin(env, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\ufeff".encode() + _three(b""))))
    assert main(["cluster", "-", "--quiet"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"]
    assert rows[0]["story"] == rows[1]["story"]


def test_a_second_run_on_one_database_stores_each_article_once(env, db_engine):
    data = _three((_line("p", PLANE) + "\n").encode())
    first = _cluster(env, data, "--database", _url(db_engine))
    second = _cluster(env, data, "--database", _url(db_engine))
    assert first[0] == second[0] == 0
    assert first[1] == second[1]
    with session_scope(db_engine) as session:
        assert session.execute(sa.select(sa.func.count()).select_from(Article)).scalar_one() == 3
        counts = session.execute(
            sa.select(Story.article_count).where(Story.merged_into_id.is_(None))
        ).scalars()
        assert sorted(counts) == [1, 2]


def _store(engine: Engine, title: str, minutes: int) -> None:
    with session_scope(engine) as session:
        insert_articles(
            None,
            [
                NewArticle(
                    f"k:{title}", None, None, title, "", "", "", T0 + timedelta(minutes=minutes)
                )
            ],
            session=session,
            fetched_at=T0 + timedelta(minutes=minutes),
        )


def test_a_restarted_matcher_decides_like_the_one_that_never_stopped(db_engine):
    # window 8 h: the bankruptcy story's last article is at 0:30, so at 9:00 it has expired
    live = StoryService.open(db_engine, window_hours=8)
    for title, minutes in [
        ("Sbarro files for bankruptcy again", 0),
        ("Pizza chain Sbarro files for Chapter 11 bankruptcy", 30),
        ("Polar vortex returns to the Midwest", 7 * 60),
        ("Titanfall review: the verdict", 8 * 60 + 12),
    ]:
        _store(db_engine, title, minutes)
        live.assign_pending()
    restarted = StoryService.open(db_engine, window_hours=8)
    probe = ArticleText(
        "Sbarro seeks bankruptcy protection for second time", T0 + timedelta(hours=9)
    )
    assert live.matcher.match(probe) == restarted.matcher.match(probe) is None
    assert live.matcher.active_count == restarted.matcher.active_count == 2


def test_an_article_dated_year_one_does_not_stall_matching(db_engine):
    with session_scope(db_engine) as session:
        insert_articles(
            None,
            [NewArticle("k:old", None, None, PLANE, "", "", "", datetime(1, 1, 1, tzinfo=UTC))],
            session=session,
            fetched_at=T0,
        )
    StoryService.open(db_engine).assign_pending()
    StoryService.open(db_engine)  # a restart replays it
    _store(db_engine, IOS_A, 0)
    [step] = StoryService.open(db_engine).assign_pending()
    assert step.is_new_story


async def test_poll_once_leaves_matching_to_the_instance_holding_the_matcher_lease(db_engine):
    def wall_clock() -> datetime:
        return datetime.now(UTC)

    bot = Services(
        settings=Settings(_env_file=None),  # type: ignore[call-arg]
        engine=db_engine,
        clock=wall_clock,  # the command line has no other
        stories=StoryService.open(db_engine, clock=wall_clock),
        holder="the bot",
    )
    _store(db_engine, "Sbarro files for bankruptcy again", 0)
    assert await assign_and_notify(bot) == 1  # the running bot holds the matcher lease
    _store(db_engine, "Pizza chain Sbarro files for Chapter 11 bankruptcy", 1)
    assert await assign_pending_stories(Settings(_env_file=None), db_engine) is None  # type: ignore[call-arg]
    with session_scope(db_engine) as session:
        assert session.execute(
            sa.select(Article.story_id).order_by(Article.id)
        ).scalars().all() == [
            1,
            None,
        ]


async def test_poll_once_matches_and_lets_go_of_the_lease_when_no_one_holds_it(db_engine):
    _store(db_engine, "Sbarro files for bankruptcy again", 0)
    assert await assign_pending_stories(Settings(_env_file=None), db_engine) == 1  # type: ignore[call-arg]
    assert lease_holder(db_engine, MATCHER_LEASE, now=datetime.now(UTC)) is None  # let go


async def test_poll_once_follows_the_stories_keywords_match_and_says_so(db_engine):
    """`poll --once` matched articles but had no keyword step: no chat was ever made to follow
    the stories it matched, and the running bot's own step did not look at them either."""
    record_chat(
        db_engine, 7, type="private", title=None, username="u", now=T0, default_timezone="UTC"
    )
    follow_topic(db_engine, 7, "Sbarro", now=T0)
    _store(db_engine, "Sbarro files for bankruptcy again", 0)
    assert await assign_pending_stories(Settings(_env_file=None), db_engine) == 1  # type: ignore[call-arg]
    with session_scope(db_engine) as session:
        [story_id] = session.execute(sa.select(Article.story_id)).scalars().all()
        follows = session.execute(sa.select(Follow.chat_id, Follow.story_id)).all()
        notices = session.execute(sa.select(OutboxMessage.chat_id, OutboxMessage.kind)).all()
    assert follows == [(7, story_id)]
    assert notices == [(7, "notice")]


def test_an_existing_output_is_replaced_not_appended(env):
    (env / "out.jsonl").write_text('{"id": "old", "story": 9}\n')
    status, rows = _cluster(env, _three(b""))
    assert status == 0
    assert [r["id"] for r in rows] == ["a", "b"]


def test_a_database_that_cannot_be_opened_is_one_error_line(env, capsys):
    src = env / "in.jsonl"
    src.write_bytes(_three(b""))
    assert main(["cluster", str(src), "--quiet", "--database", "no-such-scheme"]) == 1
    err = capsys.readouterr().err
    assert "cannot open the database" in err and "Traceback" not in err

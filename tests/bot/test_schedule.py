"""When digests are due: debounce, HH:MM and time zone parsing, and DST-correct local times."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from bot.digests.schedule import Debounce, next_digest_at, parse_hhmm, parse_timezone

BERLIN = ZoneInfo("Europe/Berlin")
T = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def test_debounce_waits_for_quiet():
    d = Debounce(quiet=timedelta(minutes=10), max_wait=timedelta(minutes=60))
    assert not d.due(
        first_unsent_at=T, last_unsent_at=T + timedelta(minutes=5), now=T + timedelta(minutes=9)
    )
    assert d.due(
        first_unsent_at=T, last_unsent_at=T + timedelta(minutes=5), now=T + timedelta(minutes=15)
    )


def test_debounce_gives_up_waiting_after_max_wait():
    d = Debounce(quiet=timedelta(minutes=10), max_wait=timedelta(minutes=60))
    assert d.due(
        first_unsent_at=T, last_unsent_at=T + timedelta(minutes=59), now=T + timedelta(minutes=60)
    )


@pytest.mark.parametrize(
    "text", ["25:99", "24:00", "8", "08:60", "", "<b>08:00</b>", "08:00:00", "x" * 5000]
)
def test_bad_times_are_refused(text):
    with pytest.raises(ValueError):
        parse_hhmm(text)


def test_good_times_parse():
    assert parse_hhmm("8:05") == time(8, 5)
    assert parse_hhmm(" 23:59 ") == time(23, 59)


@pytest.mark.parametrize(
    "text",
    [
        "Mars/Olympus",
        "../../etc/passwd",
        "/etc/localtime",
        "",
        "<script>",
        "x" * 300,
        # files of the system's zone directory that are no place: the server's own setting,
        # leap-second and duplicate trees, the "-00" zone
        "localtime",
        "posixrules",
        "Factory",
        "right/Europe/Berlin",
        "posix/Europe/Berlin",
    ],
)
def test_bad_zones_are_refused(text):
    with pytest.raises(ValueError):
        parse_timezone(text)


def test_zone_names_are_case_insensitive():
    assert parse_timezone("europe/berlin").key == "Europe/Berlin"


def test_next_digest_is_today_when_still_ahead():
    assert next_digest_at(time(18, 0), BERLIN, after=T) == datetime(2026, 3, 10, 17, 0, tzinfo=UTC)


def test_next_digest_is_tomorrow_when_passed():
    after = datetime(2026, 3, 10, 17, 0, tzinfo=UTC)
    assert next_digest_at(time(18, 0), BERLIN, after=after) == datetime(
        2026, 3, 11, 17, 0, tzinfo=UTC
    )


def test_local_time_holds_across_spring_forward():
    before = next_digest_at(time(8, 0), BERLIN, after=datetime(2026, 3, 28, 0, 0, tzinfo=UTC))
    after = next_digest_at(time(8, 0), BERLIN, after=before)
    assert before == datetime(2026, 3, 28, 7, 0, tzinfo=UTC)  # CET, UTC+1
    assert after == datetime(2026, 3, 29, 6, 0, tzinfo=UTC)  # CEST, UTC+2
    assert after - before == timedelta(hours=23)


def test_local_time_holds_across_fall_back():
    before = next_digest_at(time(8, 0), BERLIN, after=datetime(2026, 10, 24, 0, 0, tzinfo=UTC))
    after = next_digest_at(time(8, 0), BERLIN, after=before)
    assert after - before == timedelta(hours=25)
    assert after.astimezone(BERLIN).hour == 8


def test_skipped_local_time_runs_at_the_end_of_the_gap():
    when = next_digest_at(time(2, 30), BERLIN, after=datetime(2026, 3, 28, 12, 0, tzinfo=UTC))
    assert when.astimezone(BERLIN) == datetime(2026, 3, 29, 3, 0, tzinfo=BERLIN)


def test_repeated_local_time_runs_once():
    first = next_digest_at(time(2, 30), BERLIN, after=datetime(2026, 10, 24, 12, 0, tzinfo=UTC))
    second = next_digest_at(time(2, 30), BERLIN, after=first)
    assert first == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # the first 02:30 (CEST)
    assert second.astimezone(BERLIN) == datetime(2026, 10, 26, 2, 30, tzinfo=BERLIN)

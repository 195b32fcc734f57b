"""When digests are due: the follower debounce rule and a chat's next local digest time."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

_HHMM = re.compile(r"^\s*(\d{1,2})[:.h](\d{2})\s*$")


@dataclass(frozen=True, slots=True)
class Debounce:
    """Send once a story has been quiet for `quiet`, or `max_wait` after its first unsent article."""

    quiet: timedelta = timedelta(minutes=10)
    max_wait: timedelta = timedelta(minutes=60)

    def due(self, *, first_unsent_at: datetime, last_unsent_at: datetime, now: datetime) -> bool:
        return now - last_unsent_at >= self.quiet or now - first_unsent_at >= self.max_wait


def parse_hhmm(text: str) -> time:
    """'08:30' -> time(8, 30); ValueError with a short reason otherwise."""
    match = _HHMM.match(text)
    if not match:
        raise ValueError("use the 24-hour form HH:MM, e.g. 08:30")
    hour, minute = int(match.group(1)), int(match.group(2))
    if hour > 23 or minute > 59:
        raise ValueError("use the 24-hour form HH:MM, with hours 00-23 and minutes 00-59")
    return time(hour, minute)


def _not_a_place(folded: str) -> bool:
    """Files in the system's zone directory that are not zones a group means: "localtime" is
    whatever the server is set to, "right/..." counts leap seconds, "Factory" shows "-00"."""
    return folded in {"localtime", "posixrules", "factory"} or folded.startswith(
        ("right/", "posix/")
    )


def parse_timezone(text: str) -> ZoneInfo:
    """An IANA zone such as Europe/Berlin; ValueError otherwise (never a path or a bare offset)."""
    name = text.strip()
    if (
        not name
        or len(name) > 64
        or ".." in name
        or name.startswith("/")
        or _not_a_place(name.casefold())
    ):
        raise ValueError("use an IANA time zone such as Europe/Berlin or America/New_York")
    try:
        zone = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        lowered = {z.lower(): z for z in available_timezones()}
        if name.lower() in lowered:
            return ZoneInfo(lowered[name.lower()])
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin"
        ) from None
    return zone


def stored_timezone(name: str) -> ZoneInfo:
    """A chat's saved zone. Zones `parse_timezone` refuses today were accepted before: their
    groups keep their schedule ("posix/Asia/Tokyo" reads as Asia/Tokyo; "localtime" stays what
    it always meant). ValueError only for a name no zone file has."""
    try:
        return parse_timezone(name)
    except ValueError:
        folded = name.strip()
        for tree in ("posix/", "right/"):
            if folded.casefold().startswith(tree):
                return parse_timezone(folded[len(tree) :])
        try:
            return ZoneInfo(folded)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {name!r}") from None


def local_occurrence(day: date, at: time, zone: ZoneInfo) -> datetime:
    """`at` on `day` in `zone`, as UTC. A time skipped by a DST jump runs at the first valid
    instant after it (02:30 on a spring-forward night runs at 03:00); a repeated time runs once,
    at its first occurrence."""
    naive = datetime.combine(day, at)
    as_utc = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if as_utc.astimezone(zone).replace(tzinfo=None) == naive:
        return as_utc
    # Non-existent local time: from the earlier reading (before the gap), step to the gap's end.
    probe = naive.replace(tzinfo=zone, fold=1).astimezone(UTC).replace(second=0, microsecond=0)
    for _ in range(24 * 60):
        if probe.astimezone(zone).replace(tzinfo=None) >= naive:
            return probe
        probe += timedelta(minutes=1)
    return as_utc


def next_digest_at(at: time, zone: ZoneInfo, *, after: datetime) -> datetime:
    """The first UTC instant strictly after `after` when the local clock in `zone` shows `at`."""
    local_day = after.astimezone(zone).date()
    for offset in range(0, 3):
        when = local_occurrence(local_day + timedelta(days=offset), at, zone)
        if when > after:
            return when
    raise AssertionError("unreachable: a local time occurs at least once in three days")


def digest_day(at: time, zone: ZoneInfo, *, until: datetime) -> date:
    """The local day whose digest time `at` was the latest to pass by `until`. Not always the
    date the clock showed then: a time skipped at midnight runs early the next day."""
    local_day = until.astimezone(zone).date()
    for offset in range(0, 3):
        day = local_day - timedelta(days=offset)
        if local_occurrence(day, at, zone) <= until:
            return day
    raise AssertionError("unreachable: a local time occurs at least once in three days")

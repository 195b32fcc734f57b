"""`storywire demo`, the README's first command: the whole pipeline, offline, on sample feeds."""

from __future__ import annotations

import re
from collections import Counter

from bot.config import Settings
from bot.demo import run_demo


async def test_the_demo_prints_each_digest_once_with_its_sources():
    lines: list[str] = []
    printed = await run_demo(Settings(_env_file=None), out=lines.append)  # type: ignore[call-arg]
    text = "\n".join(lines)
    messages = text.split("┌─ to ")[1:]
    assert printed == len(messages) > 0
    story = [m for m in messages if "· story digest ·" in m]
    group = [m for m in messages if "· group digest ·" in m]
    assert story and group
    # the group's digest at 18:00 Berlin on each of the two simulated days, each day once
    days = [re.search(r"Top stories — (.+)", m).group(1) for m in group]  # type: ignore[union-attr]
    assert days == ["Mon 10 Mar 2014", "Tue 11 Mar 2014"]
    for message in story:
        assert re.search(r"Updated \(\d+ articles?\)", message), message
        cited = {int(n) for n in re.findall(r"\[(\d+)\]", message.split("Sources")[0])}
        listed = re.search(r"Sources \((\d+) articles?\)", message)
        assert listed and cited and max(cited) <= int(listed.group(1)), message
    # nothing is sent twice, at the same tick or a later one (the first line says when)
    bodies = Counter(m.split("\n", 1)[1] for m in messages)
    assert not [m for m, n in bodies.items() if n > 1]
    assert f"Demo done: printed {len(story)} story digests, {len(group)} group digests." in text

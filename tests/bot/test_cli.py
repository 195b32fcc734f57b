"""The `storywire` command: feeds management, polling, clustering and its error lines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bot.cli import main
from tests.conftest import T0
from tests.fakes.feeds import Item, rss


def _serve_two_feeds(feed_server) -> list[str]:  # type: ignore[no-untyped-def]
    urls = []
    for name in ("one", "two"):
        items = [
            Item(f"{name} story {i}", f"http://n.example/{name}/{i}", f"{name}{i}", T0)
            for i in range(3)
        ]
        feed_server.expect_request(f"/{name}.xml").respond_with_data(
            rss(items, title=f"Feed {name}"), content_type="application/rss+xml"
        )
        urls.append(feed_server.url_for(f"/{name}.xml"))
    return urls


def test_import_then_poll_once_stores_articles_without_a_token(env, feed_server):
    urls = _serve_two_feeds(feed_server)
    listing = env / "feeds.txt"
    listing.write_text("# my feeds\n" + "\n".join(urls) + "\n")
    exe = shutil.which("storywire") or sys.executable
    args = [exe] if exe.endswith("storywire") else [exe, "-m", "bot"]
    environ = {k: v for k, v in os.environ.items() if k != "TELEGRAM_BOT_TOKEN"}
    environ["DATABASE_URL"] = f"sqlite:///{env / 'cli.db'}"
    imported = subprocess.run(
        [*args, "feeds", "import", str(listing)],
        capture_output=True,
        text=True,
        env=environ,
        cwd=env,
        timeout=60,
    )
    assert imported.returncode == 0, imported.stderr
    assert "imported 2 feeds" in imported.stdout
    polled = subprocess.run(
        [*args, "poll", "--once"], capture_output=True, text=True, env=environ, cwd=env, timeout=60
    )
    assert polled.returncode == 0, polled.stderr
    assert "6 new articles" in polled.stdout
    listed = subprocess.run(
        [*args, "feeds", "list"], capture_output=True, text=True, env=environ, cwd=env, timeout=60
    )
    assert listed.returncode == 0
    assert listed.stdout.count("active") == 2 and " 3 " in listed.stdout


def test_invalid_feed_url_is_one_error_line(env, capsys):
    assert main(["feeds", "add", "ftp://example.org/feed"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid feed URL" in err[0]


def test_duplicate_feed_is_refused(env, capsys):
    assert main(["feeds", "add", "https://example.org/feed"]) == 0
    assert main(["feeds", "add", "https://example.org/feed"]) == 1
    assert "already registered" in capsys.readouterr().err


def test_unreadable_import_file_is_one_error_line(env, capsys):
    assert main(["feeds", "import", str(env / "missing.opml")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_garbage_import_file_is_refused(env, capsys):
    bad = env / "bad.opml"
    bad.write_bytes(b"<opml><body></body></opml>")
    assert main(["feeds", "import", str(bad)]) == 1
    assert "no feeds" in capsys.readouterr().err


def test_opml_export_then_import_round_trips(env, capsys, tmp_path, monkeypatch):
    assert main(["feeds", "add", "https://a.example/rss", "--name", "A & Co"]) == 0
    assert main(["feeds", "add", "https://b.example/atom"]) == 0
    out = env / "feeds.opml"
    assert main(["feeds", "export", "-o", str(out)]) == 0
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'other.db'}")
    capsys.readouterr()
    assert main(["feeds", "import", str(out)]) == 0
    assert "imported 2 feeds" in capsys.readouterr().out


def test_importing_a_file_too_big_for_a_feed_list_is_refused_unread(env, capsys, monkeypatch):
    """It read the whole file first: `feeds import /dev/zero` never came back."""
    monkeypatch.setattr("bot.feeds.opml.MAX_FEED_LIST_BYTES", 1024)
    big = env / "big.txt"
    big.write_text("https://a.example/rss\n" * 100)
    assert main(["feeds", "import", str(big)]) == 1
    err = capsys.readouterr().err
    assert "larger than 1 KiB" in err and "not a feed list" in err, err
    assert main(["feeds", "import", "/dev/zero"]) == 1


def test_remove_unknown_feed_is_an_error(env, capsys):
    assert main(["feeds", "remove", "42"]) == 1
    assert "no feed" in capsys.readouterr().err


def test_malformed_setting_stops_with_one_line_naming_it(env, capsys, monkeypatch):
    monkeypatch.setenv("POLL_INTERVAL_SECONDS", "soon")
    assert main(["feeds", "list"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "POLL_INTERVAL_SECONDS" in err[0]


def test_run_without_token_names_the_setting(env, capsys):
    assert main(["run"]) == 1
    assert "TELEGRAM_BOT_TOKEN" in capsys.readouterr().err


def test_cluster_skips_bad_lines_and_keeps_input_order(env, capsys):
    lines = [
        {
            "id": "a",
            "title": "Apple unveils iOS 7.1 update with CarPlay",
            "published": "2014-03-10T10:00:00Z",
        },
        "not json at all",
        {
            "id": "b",
            "title": "Apple releases iOS 7.1 with CarPlay support",
            "published": "2014-03-10T10:05:00Z",
            "source": "Reuters",
        },
        {"id": "c", "title": "", "published": "2014-03-10T10:06:00Z"},
        {
            "id": "d",
            "title": "Malaysia Airlines jet missing over South China Sea",
            "published": "2014-03-10T10:07:00+00:00",
        },
        {"id": "e", "title": "Bad date", "published": "yesterday"},
    ]
    src = env / "in.jsonl"
    src.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    out = env / "out.jsonl"
    assert main(["cluster", str(src), "-o", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "line 2:" in err and "line 4:" in err and "line 6:" in err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "d"]
    assert rows[0]["story"] == rows[1]["story"] != rows[2]["story"]


def test_cluster_missing_input_is_an_error(env, capsys):
    assert main(["cluster", str(Path(env) / "nope.jsonl")]) == 1
    assert "cannot read" in capsys.readouterr().err

"""What an operator deploying Storywire runs into: settings, the database URL, migrations of an
existing database, start-up and shutdown of `storywire run`, and the feeds commands."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from bot.app import MATCHER_LEASE, assign_and_notify
from bot.cli import main
from bot.config import SettingsError, load_settings
from bot.feeds.opml import read_feed_list
from store.db import make_engine
from store.leases import lease_holder
from store.migrate import alembic_config, current_revision, upgrade
from tests.conftest import PG_URL, pg_schema_url
from tests.e2e.harness import e2e_settings, running_bot, services_of
from tests.fakes.bot_api import FakeBotApi

OPML = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<opml version="2.0"><head><title>x</title></head>'
    b'<body><outline text="News"><outline text="A" xmlUrl="https://a.example/rss"/>'
    b'<outline text="Deeper"><outline text="B" xmlUrl="https://b.example/rss"/></outline>'
    b"</outline></body></opml>"
)
TS = "2026-03-10 12:00:00.000000"


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request, tmp_path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A database with no schema yet: a SQLite file, or a throwaway PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    if not PG_URL:
        pytest.skip("STORYWIRE_TEST_DATABASE_URL is not set")
    with pg_schema_url("op") as url:
        yield url


# --- migrations ---------------------------------------------------------------------------------


def _fill_revision_0001(engine: Engine) -> None:
    with engine.begin() as conn:
        for statement in (
            "INSERT INTO chat (id, type, status, timezone, digest_enabled, created_at, updated_at)"
            f" VALUES (7, 'private', 'active', 'UTC', false, '{TS}', '{TS}')",
            "INSERT INTO story (id, headline, article_count, source_count, first_published_at,"
            f" last_published_at, created_at, updated_at) VALUES (1, 'h', 1, 1, '{TS}', '{TS}',"
            f" '{TS}', '{TS}')",
            "INSERT INTO article (id, entry_key, title, summary, source, author, published_at,"
            f" fetched_at, story_id) VALUES (1, 'k', 't', '', 's', '', '{TS}', '{TS}', 1)",
            "INSERT INTO follow (id, chat_id, story_id, last_digested_article_id, created_at)"
            f" VALUES (1, 7, 1, 0, '{TS}')",
        ):
            conn.execute(sa.text(statement))


def test_upgrading_a_0001_database_keeps_its_stories_follows_and_articles(empty_database_url):
    engine = make_engine(empty_database_url)
    try:
        upgrade(engine, "0001")
        _fill_revision_0001(engine)
        upgrade(engine)
        with engine.connect() as conn:
            articles = conn.execute(sa.text("SELECT id, story_id FROM article")).all()
            follows = conn.execute(sa.text("SELECT id, story_id FROM follow")).all()
            if engine.dialect.name == "sqlite":
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert (
            current_revision(engine)
            == ScriptDirectory.from_config(alembic_config()).get_current_head()
        )
        assert [tuple(r) for r in articles] == [(1, 1)]
        assert [tuple(r) for r in follows] == [(1, 1)]
    finally:
        engine.dispose()


@pytest.mark.skipif(not PG_URL, reason="STORYWIRE_TEST_DATABASE_URL is not set")
def test_processes_migrating_one_postgresql_database_at_once_all_start():
    code = (
        "import sys; from store.db import make_engine; from store.migrate import upgrade; "
        "upgrade(make_engine(sys.argv[1]))"
    )
    with pg_schema_url("op") as url:
        processes = [
            subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE, text=True)
            for _ in range(6)
        ]
        failures = []
        for process in processes:
            _, err = process.communicate(timeout=90)
            if process.returncode != 0:
                failures.append(err.strip().splitlines()[-1])
        assert failures == []


# --- settings -----------------------------------------------------------------------------------


def test_a_token_whose_bot_id_is_not_a_number_is_malformed():
    settings = load_settings(_env_file=None, telegram_bot_token="abc:def")
    with pytest.raises(SettingsError, match="TELEGRAM_BOT_TOKEN is malformed"):
        settings.require_token()


@pytest.mark.parametrize("secret", ["a+b/c=", "with space", "x" * 257])
def test_a_webhook_secret_telegram_refuses_is_a_settings_error(secret):
    with pytest.raises(SettingsError, match="WEBHOOK_SECRET_TOKEN"):
        load_settings(
            _env_file=None, webhook_url="https://bot.example/", webhook_secret_token=secret
        )


def test_a_plain_http_webhook_url_is_a_settings_error():
    with pytest.raises(SettingsError, match="WEBHOOK_URL"):
        load_settings(_env_file=None, webhook_url="http://bot.example/", webhook_secret_token="s")


@pytest.mark.parametrize("agent", ["Störywire/1", "a\nb", "   "])
def test_a_user_agent_that_cannot_be_a_header_is_a_settings_error(agent):
    """Non-ASCII was a traceback at the first fetch; a newline failed every fetch until each
    feed was disabled."""
    with pytest.raises(SettingsError, match="USER_AGENT"):
        load_settings(_env_file=None, user_agent=agent)


def test_an_env_file_that_is_not_utf8_is_one_line(tmp_path):
    env = tmp_path / ".env"
    env.write_bytes(b"LOG_LEVEL=\xff\xfe\n")
    with pytest.raises(SettingsError, match="not UTF-8"):
        load_settings(_env_file=env)


def test_feeds_remove_and_removefeed_find_a_url_as_it_was_added():
    from bot.feeds.urls import feed_lookup_keys

    assert feed_lookup_keys("https://Example.ORG/rss.xml") == [
        "https://Example.ORG/rss.xml",
        "https://example.org/rss.xml",
    ]
    assert feed_lookup_keys("https://news.example")[-1] == "https://news.example/"
    assert feed_lookup_keys("7") == ["7"]


@pytest.mark.parametrize("zone", ["Factory", "posixrules", "localtime"])
def test_a_default_timezone_chats_could_not_use_is_refused(zone):
    with pytest.raises(SettingsError, match="DEFAULT_TIMEZONE"):
        load_settings(_env_file=None, default_timezone=zone)


def test_a_default_timezone_in_lower_case_is_spelled_as_iana_does():
    settings = load_settings(_env_file=None, default_timezone="europe/berlin")
    assert settings.default_timezone == "Europe/Berlin"


# --- the database URL ---------------------------------------------------------------------------


def test_a_sqlite_path_under_home_is_opened_there(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    engine = make_engine("sqlite:///~/storywire/data.db")
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    assert (tmp_path / "storywire" / "data.db").is_file()
    assert not (tmp_path / "~").exists()


def test_a_data_dir_under_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = load_settings(_env_file=None, data_dir="~/sw")
    assert settings.resolved_database_url == f"sqlite:///{(tmp_path / 'sw' / 'storywire.db')}"


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "postgresql+psycopg2://u@127.0.0.1/db",
        "nosuchdb://u@h/db",
        "postgresql://postgres@127.0.0.1:1/storywire",
    ],
)
def test_a_database_url_that_cannot_be_opened_is_one_line_naming_it(env, capsys, monkeypatch, url):
    monkeypatch.setenv("DATABASE_URL", url)
    assert main(["feeds", "list"]) in (1, 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "DATABASE_URL" in err[0], err


def test_postgresql_without_its_driver_says_what_to_install(env, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@127.0.0.1/db")
    assert main(["feeds", "list"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "storywire[postgres]" in err[0], err


# --- storywire run --------------------------------------------------------------------------------


async def _storywire_run(
    tmp_path: Path,
    token: str,
    api_url: str,
    *,
    started: Awaitable[object] | None = None,
    **env: str,
) -> tuple[int, str]:
    """Run `storywire run` to its end: exit status and stderr. `started` is awaited meanwhile."""
    environ = dict(
        os.environ,
        TELEGRAM_BOT_TOKEN=token,
        TELEGRAM_API_BASE_URL=api_url,
        DATABASE_URL=f"sqlite:///{tmp_path / 'run.db'}",
        **env,
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "run",
        env=environ,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        if started is not None:
            await started
        _, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, err.decode()


async def test_a_token_telegram_rejects_is_one_line_without_the_token(tmp_path):
    token = "999999:WRONG-token-well-formed"
    async with FakeBotApi() as api:
        code, err = await _storywire_run(tmp_path, token, api.url)
    assert code == 1, err
    assert "Traceback" not in err and token not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "TELEGRAM_BOT_TOKEN" in lines[0], err


async def test_an_unreachable_bot_api_is_one_line_naming_the_setting(tmp_path):
    code, err = await _storywire_run(tmp_path, "123456:TEST-TOKEN", "http://127.0.0.1:1")
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "TELEGRAM_API_BASE_URL" in lines[0], err


def _webhook_env(listen: str, port: int) -> dict[str, str]:
    return {
        "WEBHOOK_URL": "https://bot.example/",
        "WEBHOOK_SECRET_TOKEN": "s3cret",
        "WEBHOOK_LISTEN": listen,
        "WEBHOOK_PORT": str(port),
    }


@contextmanager
def _occupied_port(port: int = 0) -> Iterator[int]:
    """A loopback port another program listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield sock.getsockname()[1]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("listen", ["999.1.1.1", "1.2.3", "not an address", "-bot-.example", ""])
def test_a_webhook_listen_that_is_no_address_is_a_settings_error(listen):
    with pytest.raises(SettingsError, match="WEBHOOK_LISTEN"):
        load_settings(_env_file=None, webhook_listen=listen)


@pytest.mark.parametrize("listen", ["0.0.0.0", "127.0.0.1", "::", "::1", "localhost", "bot.lan"])
def test_a_webhook_listen_address_or_host_name_is_accepted(listen):
    assert load_settings(_env_file=None, webhook_listen=listen).webhook_listen == listen


async def test_a_webhook_port_in_use_is_one_line_naming_it(tmp_path):
    """It was a traceback from deep inside tornado, after the webhook was set with Telegram."""
    async with FakeBotApi() as api:
        with _occupied_port() as port:
            code, err = await _storywire_run(
                tmp_path, api.token, api.url, **_webhook_env("127.0.0.1", port)
            )
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"127.0.0.1:{port}" in lines[0] and "WEBHOOK_PORT" in lines[0], err
    assert "in use" in lines[0], err
    assert api.calls("setWebhook") == []


async def test_a_webhook_address_this_machine_does_not_have_is_one_line(tmp_path):
    # 192.0.2.1 is TEST-NET-1: no interface has it, and binding it asks no one
    async with FakeBotApi() as api:
        code, err = await _storywire_run(
            tmp_path, api.token, api.url, **_webhook_env("192.0.2.1", 8443)
        )
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "192.0.2.1:8443" in lines[0], err
    assert "WEBHOOK_LISTEN" in lines[0], err


async def test_a_webhook_port_taken_while_the_bot_starts_is_one_line(tmp_path):
    """The port was free when checked, and taken before the webhook server bound it."""
    port = _free_port()
    async with FakeBotApi() as api:
        # the webhook server binds right after this answer; the test takes the port meanwhile
        api.delay("setWebhook", 2)
        with ExitStack() as stack:

            async def take_port() -> None:
                await api.wait_for(lambda: bool(api.calls("setWebhook")), within=30)
                stack.enter_context(_occupied_port(port))

            code, err = await _storywire_run(
                tmp_path,
                api.token,
                api.url,
                started=take_port(),
                **_webhook_env("127.0.0.1", port),
            )
    assert code == 1, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("storywire: ") and f"127.0.0.1:{port}" in last, err
    assert "in use" in last, err


async def test_stopping_the_bot_lets_its_matcher_lease_go(api, tmp_path):
    settings = e2e_settings(api.url, f"sqlite:///{tmp_path / 'lease.db'}")
    async with running_bot(settings) as application:
        services = services_of(application)
        await assign_and_notify(services)
        now = datetime.now(UTC)
        assert lease_holder(services.engine, MATCHER_LEASE, now=now) == services.holder
        engine = services.engine
    assert lease_holder(engine, MATCHER_LEASE, now=datetime.now(UTC) + timedelta(seconds=1)) is None


# --- feeds commands -------------------------------------------------------------------------------


def test_an_opml_file_with_a_byte_order_mark_is_read_as_opml():
    entries = read_feed_list(b"\xef\xbb\xbf" + OPML)
    assert [e.url for e in entries] == ["https://a.example/rss", "https://b.example/rss"]


def test_a_feed_is_removed_by_the_url_it_was_added_with(env, capsys):
    assert main(["feeds", "add", "HTTPS://News.Example.ORG"]) == 0
    assert main(["feeds", "remove", "HTTPS://News.Example.ORG"]) == 0
    assert "removed feed 1" in capsys.readouterr().out


def test_exporting_into_a_missing_directory_is_one_line(env, capsys):
    assert main(["feeds", "export", "-o", str(env / "missing" / "feeds.opml")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0], err


def test_an_opml_title_longer_than_a_feed_name_is_shortened(
    env, capsys, monkeypatch, empty_database_url
):
    monkeypatch.setenv("DATABASE_URL", empty_database_url)
    listing = env / "long.opml"
    listing.write_text(
        f'<opml version="2.0"><body><outline text="{"T" * 300}" xmlUrl="https://a.example/rss"/>'
        '<outline text="ok" xmlUrl="https://b.example/rss"/></body></opml>'
    )
    assert main(["feeds", "import", str(listing)]) == 0
    assert "imported 2 feeds" in capsys.readouterr().out


def test_a_feed_name_longer_than_the_column_is_one_line(
    env, capsys, monkeypatch, empty_database_url
):
    monkeypatch.setenv("DATABASE_URL", empty_database_url)
    assert main(["feeds", "add", "https://a.example/rss", "--name", "N" * 300]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--name" in err[0], err


def test_a_plain_list_may_separate_url_and_title_with_a_tab():
    entries = read_feed_list(b"https://a.example/rss\tOutlet A\nhttps://b.example/rss  B\n")
    assert [(e.url, e.title) for e in entries] == [
        ("https://a.example/rss", "Outlet A"),
        ("https://b.example/rss", "B"),
    ]


def test_webhook_mode_without_the_webhook_server_installed_is_one_line(env, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tornado", None)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123456:TEST-TOKEN")
    monkeypatch.setenv("TELEGRAM_API_BASE_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("WEBHOOK_URL", "https://bot.example/")
    monkeypatch.setenv("WEBHOOK_SECRET_TOKEN", "s3cret")
    assert main(["run"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "python-telegram-bot[webhooks]" in err[0], err


def test_a_story_window_shorter_than_the_top_stories_day_is_refused():
    """/top and the group digest list a day's stories with Follow buttons; with a 12 h window
    following one of them would answer 'this story has ended'."""
    with pytest.raises(SettingsError, match="STORY_WINDOW_HOURS"):
        load_settings(_env_file=None, story_window_hours=12)
    assert load_settings(_env_file=None, story_window_hours=24).story_window_hours == 24


async def test_a_machine_clock_far_from_the_database_is_corrected_and_reported(db_engine, caplog):
    from bot.app import Services, sync_clock
    from store.db import DatabaseClock

    clock = DatabaseClock(db_engine, local=lambda: datetime.now(UTC) - timedelta(seconds=45))
    services = Services(settings=e2e_settings("http://127.0.0.1:9", "sqlite://"), engine=db_engine)
    services.clock = clock
    with caplog.at_level("WARNING", logger="bot.app"):
        await sync_clock(services)
    assert abs((services.now() - datetime.now(UTC)).total_seconds()) < 1
    assert "45.0 s behind the database's" in caplog.text


async def test_a_running_bot_keeps_the_database_clock(api, tmp_path):
    from store.db import DatabaseClock

    settings = e2e_settings(api.url, f"sqlite:///{tmp_path / 'clock.db'}")
    async with running_bot(settings, clock=None) as app:
        assert isinstance(services_of(app).clock, DatabaseClock)
        assert abs((services_of(app).now() - datetime.now(UTC)).total_seconds()) < 1

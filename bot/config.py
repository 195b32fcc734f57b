"""Settings for the whole process, read from the environment and `.env`.

Built once in `main()` and passed down; nothing reads `os.environ` elsewhere.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_API_BASE_URL = "https://api.telegram.org"
# What Telegram accepts: a token is a numeric bot id, a colon and a secret; setWebhook's secret is
# 1-256 of these characters. Anything else Telegram refuses only once the bot is starting.
TOKEN_SHAPE = re.compile(r"^\d+:[A-Za-z0-9_-]+$")
WEBHOOK_SECRET_SHAPE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
# A DNS host name: dot-separated labels of letters, digits and inner hyphens.
HOST_NAME_SHAPE = re.compile(
    r"^(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


class SettingsError(Exception):
    """A setting is missing or malformed; the message names it in one line."""


class Settings(BaseSettings):
    """Every knob Storywire has. `.env.example` documents each one."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        env_ignore_empty=True,
    )

    telegram_bot_token: SecretStr | None = None
    telegram_api_base_url: str = DEFAULT_API_BASE_URL
    webhook_url: str | None = None
    webhook_listen: str = "127.0.0.1"
    webhook_port: int = Field(default=8443, ge=1, le=65535)
    webhook_secret_token: SecretStr | None = None

    data_dir: Path = Path("data")
    database_url: str | None = None
    admin_user_ids: Annotated[frozenset[int], NoDecode] = frozenset()

    poll_interval_seconds: int = Field(default=900, ge=30, le=86400)
    poll_concurrency: int = Field(default=20, ge=1, le=500)
    poll_per_host_concurrency: int = Field(default=4, ge=1, le=100)
    parse_processes: int = Field(default=2, ge=0, le=64)
    http_timeout_seconds: float = Field(default=20.0, gt=0, le=300)
    max_feed_bytes: int = Field(default=2 * 1024 * 1024, ge=1024, le=100 * 1024 * 1024)
    max_redirects: int = Field(default=5, ge=0, le=20)
    feed_failure_limit: int = Field(default=12, ge=1, le=1000)
    user_agent: str = "Storywire/0.1 (+https://github.com/storywire/storywire)"

    poll_tick_seconds: float = Field(default=60, ge=0.05, le=3600)
    delivery_tick_seconds: float = Field(default=5, ge=0.05, le=3600)
    rate_limit_max_retries: int = Field(default=2, ge=0, le=10)

    # at least a day: /top and the group digest offer Follow for any story with news in 24 h
    story_window_hours: int = Field(default=48, ge=24, le=24 * 30)
    digest_quiet_minutes: int = Field(default=10, ge=0, le=24 * 60)
    digest_max_wait_minutes: int = Field(default=60, ge=1, le=7 * 24 * 60)
    group_digest_size: int = Field(default=5, ge=1, le=20)
    default_timezone: str = "UTC"

    log_level: str = "INFO"

    @field_validator("admin_user_ids", mode="before")
    @classmethod
    def _parse_ids(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = [p for p in value.replace(";", ",").replace(" ", ",").split(",") if p]
            try:
                return frozenset(int(p) for p in parts)
            except ValueError as exc:
                raise ValueError("expected comma-separated Telegram user ids") from exc
        return value

    @field_validator("data_dir")
    @classmethod
    def _expand_data_dir(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        if value is None:
            return None
        try:
            make_url(value.strip())
        except ArgumentError as exc:
            raise ValueError(
                "not a database URL: use sqlite:///path/to/file.db or postgresql://user@host/db"
            ) from exc
        return value.strip()

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, value: str | None) -> str | None:
        if value is not None and not value.strip().lower().startswith("https://"):
            raise ValueError("Telegram only delivers webhooks to an https:// URL")
        return value.strip() if value is not None else None

    @field_validator("webhook_listen")
    @classmethod
    def _check_webhook_listen(cls, value: str) -> str:
        value = value.strip()
        try:
            ipaddress.ip_address(value)
        except ValueError:
            # a last label of digits only is a mistyped IPv4 address (999.1.1.1, 10.0.1), no name
            last = value.rstrip(".").rsplit(".", 1)[-1]
            if not HOST_NAME_SHAPE.match(value) or last.isdecimal():
                raise ValueError(
                    "expected an IP address (such as 127.0.0.1, 0.0.0.0 or ::) or a host name"
                ) from None
        return value

    @field_validator("webhook_secret_token")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not WEBHOOK_SECRET_SHAPE.match(value.get_secret_value()):
            raise ValueError("use 1 to 256 of the characters A-Z, a-z, 0-9, _ and -")
        return value

    @field_validator("telegram_api_base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("user_agent")
    @classmethod
    def _check_user_agent(cls, value: str) -> str:
        # it goes in every request's header: anything else fails each fetch, until every feed
        # is disabled for it
        value = value.strip()
        if not value or not value.isascii() or not value.isprintable():
            raise ValueError("must be printable ASCII on one line (it is sent as a header)")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        value = value.strip().upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return value

    @field_validator("default_timezone")
    @classmethod
    def _check_tz(cls, value: str) -> str:
        # The rules /timezone applies: a zone a chat could not choose is no default for one.
        from bot.digests.schedule import parse_timezone

        return parse_timezone(value).key

    @property
    def resolved_database_url(self) -> str:
        """DATABASE_URL, or a SQLite file in the data directory (created on first use)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'storywire.db').as_posix()}"

    @property
    def bot_api_base_url(self) -> str:
        """PTB wants the URL that the token is appended to."""
        return f"{self.telegram_api_base_url}/bot"

    @property
    def bot_file_base_url(self) -> str:
        return f"{self.telegram_api_base_url}/file/bot"

    def require_token(self) -> str:
        if self.telegram_bot_token is None or not self.telegram_bot_token.get_secret_value():
            raise SettingsError(
                "TELEGRAM_BOT_TOKEN is not set: get one from @BotFather and put it in .env"
            )
        token = self.telegram_bot_token.get_secret_value().strip()
        if not TOKEN_SHAPE.match(token):
            raise SettingsError("TELEGRAM_BOT_TOKEN is malformed: expected '<bot id>:<secret>'")
        return token


def load_settings(**overrides: Any) -> Settings:
    """Build Settings or raise SettingsError with one line naming the bad setting."""
    try:
        return Settings(**overrides)
    except UnicodeDecodeError:
        raise SettingsError(".env is not UTF-8 text: save it as UTF-8") from None
    except OSError as exc:
        raise SettingsError(f"cannot read .env: {exc.strerror or exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "_".join(str(p) for p in first.get("loc", ())).upper() or "settings"
        raise SettingsError(f"setting {name} is invalid: {first.get('msg', 'bad value')}") from None

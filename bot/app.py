"""The composition root: `build_application(settings)` wires Telegram, the store and the jobs.

Services are opened in `post_init` and closed in `post_shutdown`; handlers reach them through
`context.services`. The JobQueue only ticks: the database holds every schedule, and every job is
safe to run twice (leases keep a second poller or sender out).
"""

from __future__ import annotations

import asyncio
import functools
import html
import logging
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.engine import Engine
from sqlmodel import Session
from telegram import Bot, BotCommand, LinkPreviewOptions, Update
from telegram.constants import ParseMode
from telegram.error import InvalidToken, NetworkError
from telegram.ext import (
    AIORateLimiter,
    Application,
    ApplicationBuilder,
    BaseUpdateProcessor,
    CallbackContext,
    ContextTypes,
    Defaults,
    ExtBot,
)

from bot.config import Settings, SettingsError
from bot.delivery import OutboxSender
from bot.digests.queue import DigestPolicy, queue_group_digests, queue_story_digests
from bot.digests.schedule import Debounce
from bot.feeds.fetch import make_http_client
from bot.feeds.poller import FeedPoller, parser_pool, poll_policy
from bot.following import StoryCard, follow_matching_topics
from bot.leases import renewing
from bot.stories.service import StoryService
from store.db import DatabaseClock, make_engine
from store.leases import LeaseTake, process_holder, release_lease, take_lease
from store.migrate import upgrade
from store.models import Chat, Feed
from store.outbox import OutgoingPart, enqueue

log = logging.getLogger(__name__)

COMMANDS = [
    BotCommand("top", "today's top stories"),
    BotCommand("follow", "follow a story id or keywords"),
    BotCommand("following", "what this chat follows"),
    BotCommand("unfollow", "stop following a story or keywords"),
    BotCommand("story", "one story with its latest articles"),
    BotCommand("search", "find stories by words"),
    BotCommand("digest", "daily digest: on, off or HH:MM"),
    BotCommand("timezone", "time zone for the daily digest"),
    BotCommand("help", "what Storywire does"),
]


@dataclass
class Services:
    """Everything handlers and jobs need, built once per process."""

    settings: Settings
    engine: Engine
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    http: httpx.AsyncClient | None = None
    stories: StoryService | None = None
    sender: OutboxSender | None = None
    digest_policy: DigestPolicy = field(default_factory=DigestPolicy)
    poll_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    parsers: Executor | None = None
    holder: str = field(default_factory=process_holder)  # this process, for leases
    # True while this process holds the matcher lease since its matcher was last rebuilt
    matcher_lease_held: bool = False

    def now(self) -> datetime:
        return self.clock()

    @property
    def story_window(self) -> timedelta:
        """How long a story takes new articles after its last one (the matcher's window)."""
        return timedelta(hours=self.settings.story_window_hours)


class PerChatUpdates(BaseUpdateProcessor):
    """One chat's updates in order, different chats' at once.

    PTB handles updates one at a time by default, and the rate limiter waits inside a reply
    when a group passes Telegram's 20 messages a minute: one busy group then held up every
    other chat's answers (about 3 s for each of its messages over the limit). A chat's own
    updates stay in order (a /follow before the /unfollow that follows it).
    """

    def __init__(self, max_concurrent_updates: int = 256) -> None:
        super().__init__(max_concurrent_updates)
        self._chats: dict[int | None, tuple[asyncio.Lock, int]] = {}

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        chat = update.effective_chat if isinstance(update, Update) else None
        key = chat.id if chat is not None else None
        lock, users = self._chats.get(key, (None, 0))
        lock = lock or asyncio.Lock()
        self._chats[key] = (lock, users + 1)
        try:
            async with lock:
                await coroutine
        finally:
            lock, users = self._chats[key]
            if users == 1:
                del self._chats[key]
            else:
                self._chats[key] = (lock, users - 1)

    async def initialize(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass


class StorywireContext(CallbackContext[ExtBot, dict, dict, dict]):
    """`context.services` instead of string keys into bot_data."""

    @property
    def services(self) -> Services:
        return self.bot_data["services"]


def build_application(
    settings: Settings,
    *,
    engine: Engine | None = None,
    clock: Callable[[], datetime] | None = None,
) -> Application:
    """The PTB Application for `storywire run` (and for end-to-end tests, in process)."""
    from handlers import register

    token = settings.require_token()
    application = (
        ApplicationBuilder()
        .token(token)
        .base_url(settings.bot_api_base_url)
        .base_file_url(settings.bot_file_base_url)
        .defaults(
            Defaults(
                parse_mode=ParseMode.HTML,
                # a command deleted before the answer (anti-spam bots do) is still answered
                allow_sending_without_reply=True,
                link_preview_options=LinkPreviewOptions(is_disabled=True),
            )
        )
        # Overall 30/s and 20/min per group; a RetryAfter is waited out and retried this many
        # times here before the outbox reschedules the row itself.
        .rate_limiter(AIORateLimiter(max_retries=settings.rate_limit_max_retries))
        .context_types(ContextTypes(context=StorywireContext))
        .concurrent_updates(PerChatUpdates())
        .post_init(_post_init)
        .post_shutdown(_post_shutdown)
        .build()
    )
    services = Services(
        settings=settings,
        engine=engine or make_engine(settings.resolved_database_url),
        digest_policy=DigestPolicy(
            debounce=Debounce(
                quiet=timedelta(minutes=settings.digest_quiet_minutes),
                max_wait=timedelta(minutes=settings.digest_max_wait_minutes),
            ),
            group_size=settings.group_digest_size,
        ),
    )
    # Tests pass their own clock; a real run keeps the database's time (see DatabaseClock).
    services.clock = clock if clock is not None else DatabaseClock(services.engine)
    application.bot_data["services"] = services
    register(application)
    application.add_error_handler(_on_error)
    jobs = application.job_queue
    assert jobs is not None, "python-telegram-bot[job-queue] is required"
    jobs.run_repeating(poll_tick, interval=settings.poll_tick_seconds, first=1, name="poll")
    jobs.run_repeating(
        delivery_tick, interval=settings.delivery_tick_seconds, first=1, name="delivery"
    )
    if isinstance(services.clock, DatabaseClock):
        interval = CLOCK_SYNC_INTERVAL.total_seconds()
        jobs.run_repeating(clock_tick, interval=interval, first=interval, name="clock")
    return application


async def _post_init(application: Application) -> None:
    services: Services = application.bot_data["services"]
    await asyncio.to_thread(upgrade, services.engine)
    await sync_clock(services)
    services.http = make_http_client(poll_policy(services.settings).limits)
    services.parsers = parser_pool(services.settings.parse_processes)
    # Not rebuilt here: assign_and_notify rebuilds it when it first takes the matcher lease.
    services.stories = StoryService.open(
        services.engine,
        window_hours=services.settings.story_window_hours,
        clock=services.clock,
        rebuild=False,
    )
    services.sender = OutboxSender(
        services.engine, application.bot, clock=services.clock, holder=services.holder
    )
    await application.bot.set_my_commands(COMMANDS)
    me = application.bot.username
    log.info("Storywire is up as @%s", me)


async def _post_shutdown(application: Application) -> None:
    services: Services = application.bot_data["services"]
    if services.sender is not None:
        await services.sender.release()
    if services.stories is not None:
        # Kept between ticks so this instance need not rebuild; at exit, another instance
        # should not wait MATCHER_LEASE_TTL to take matching over.
        await asyncio.to_thread(release_lease, services.engine, MATCHER_LEASE, services.holder)
        services.matcher_lease_held = False
    if services.http is not None:
        await services.http.aclose()
    if services.parsers is not None:
        services.parsers.shutdown(cancel_futures=True)
    services.engine.dispose()


CLOCK_SYNC_INTERVAL = timedelta(minutes=10)
CLOCK_SKEW_WARNING = timedelta(seconds=2)


async def sync_clock(services: Services) -> None:
    """Measure how far this machine's clock is from the database's; warn when it is far."""
    clock = services.clock
    if not isinstance(clock, DatabaseClock):
        return
    try:
        offset = await asyncio.to_thread(clock.sync)
    except Exception:  # noqa: BLE001 - keep the last offset; the next sync tries again
        log.warning("could not read the database's clock; keeping the last offset", exc_info=True)
        return
    if abs(offset) >= CLOCK_SKEW_WARNING:
        log.warning(
            "this machine's clock is %.1f s %s the database's; using the database's time "
            "(is NTP running here?)",
            abs(offset.total_seconds()),
            "behind" if offset > timedelta(0) else "ahead of",
        )


async def clock_tick(context: StorywireContext) -> None:
    await sync_clock(context.services)


MATCHER_LEASE = "matcher"
MATCHER_LEASE_TTL = timedelta(minutes=5)


async def poll_tick(context: StorywireContext) -> None:
    """Poll due feeds, match new articles to stories, follow stories that match topics."""
    services = context.services
    if services.http is None or services.stories is None or services.poll_lock.locked():
        return
    async with services.poll_lock:
        poller = FeedPoller(
            services.engine,
            services.http,
            poll_policy(services.settings),
            clock=services.clock,
            holder=services.holder,
            parsers=services.parsers,
            on_disabled=functools.partial(_queue_feed_disabled_notice, services),
        )
        summary = await poller.poll_due()
        if summary.feeds:
            log.info(summary.line())
        await assign_and_notify(services)


async def assign_and_notify(services: Services) -> int:
    """Match unassigned articles; follow stories matching topics and tell those chats.

    One instance matches at a time: each keeps its stories in memory, and two matching the same
    articles would start the same story twice. The matcher lease says which; an instance that
    takes it over from another first rebuilds its memory from the database, where the other's
    work went. So does one whose lease ran out and was held by another process in between
    (`storywire poll --once`, say), even if that one has let it go again.
    """
    assert services.stories is not None
    engine, holder = services.engine, services.holder
    take = await asyncio.to_thread(
        take_lease, engine, MATCHER_LEASE, holder, ttl=MATCHER_LEASE_TTL, now=services.now()
    )
    if take is LeaseTake.REFUSED:
        services.matcher_lease_held = False
        log.info("another instance holds the matcher lease; not matching articles")
        return 0
    if take is LeaseTake.TAKEN:
        services.matcher_lease_held = False
    keep = renewing(engine, MATCHER_LEASE, holder, ttl=MATCHER_LEASE_TTL, clock=services.clock)
    async with keep as kept:
        if not services.matcher_lease_held:
            await asyncio.to_thread(services.stories.rebuild)
            services.matcher_lease_held = True
        assignments = await asyncio.to_thread(services.stories.assign_pending)
    if kept.lost or kept.lapsed:
        services.matcher_lease_held = False
    # the stories matched or merged are found from the database, not from `assignments`: what
    # a crash before this step, or another writer, left behind is checked too
    await asyncio.to_thread(
        follow_matching_topics,
        services.engine,
        now=services.now(),
        on_follow=functools.partial(queue_topic_notice, now=services.now()),
    )
    return len(assignments)


def queue_topic_notice(
    session: Session, chat_id: int, story: StoryCard, topic: str, *, now: datetime
) -> None:
    """Tell a chat its keywords now follow a story; runs in the transaction that follows it.

    The key is new for each follow, not the chat and story alone: a chat that unfollowed the
    keywords and follows them again is told again when they follow the story again. The follow
    is created once, in this same transaction, so the notice cannot be queued twice."""
    text = (
        f"Now following <b>{html.escape(story.headline)}</b> because it matches "
        f"“{html.escape(topic)}”. Updates will follow; /unfollow {story.id} to stop."
    )
    enqueue(
        chat_id,
        [OutgoingPart(text)],
        session=session,
        kind="notice",
        story_id=story.id,
        dedup_key=f"topic:{chat_id}:{story.id}:{uuid.uuid4().hex}",
        now=now,
    )


def _queue_feed_disabled_notice(services: Services, feed: Feed, session: Session) -> None:
    """Tell the operators (ADMIN_USER_IDS who have talked to the bot) that a feed was switched
    off. Runs inside the poller's transaction that disables the feed: both land or neither."""
    now = services.now()
    admins = [a for a in services.settings.admin_user_ids if session.get(Chat, a) is not None]
    text = (
        f"Feed {feed.id} was disabled: {html.escape(feed.url)}\n"
        f"Reason: {html.escape(feed.disabled_reason or 'too many failures')}\n"
        "Re-add it with /addfeed once it works again, or remove it with "
        f"/removefeed {feed.id}."
    )
    for admin in admins:
        enqueue(
            admin,
            [OutgoingPart(text)],
            session=session,
            kind="notice",
            dedup_key=f"feed-disabled:{feed.id}:{admin}:{now.date().isoformat()}",
            now=now,
        )


async def delivery_tick(context: StorywireContext) -> None:
    """Queue due digests, then drain the outbox."""
    services = context.services
    if services.sender is None:
        return
    now = services.now()
    await asyncio.to_thread(
        queue_story_digests, services.engine, now=now, policy=services.digest_policy
    )
    await asyncio.to_thread(
        queue_group_digests, services.engine, now=now, policy=services.digest_policy
    )
    await services.sender.drain()


async def _on_error(update: object, context: StorywireContext) -> None:
    """Log with context; tell the user something short, never a traceback."""
    chat_id = None
    if isinstance(update, Update) and update.effective_chat is not None:
        chat_id = update.effective_chat.id
    log.error(
        "error while handling an update (chat %s): %s",
        chat_id,
        context.error,
        exc_info=context.error,
    )
    if not isinstance(update, Update):
        return
    sorry = "Sorry, something went wrong on our side. Please try again in a minute."
    if update.callback_query is not None:
        # A button press: the answer is the reply, and it stops the button's spinner, which
        # otherwise turns until Telegram gives up on it. A press already answered, or too old to
        # answer, is told in the chat instead.
        try:
            await update.callback_query.answer(sorry)
            return
        except Exception:  # noqa: BLE001 - the error handler must never raise
            log.info("could not answer the failed button press in chat %s", chat_id)
    if update.effective_message is not None:
        try:
            await update.effective_message.reply_text(sorry)
        except Exception:  # noqa: BLE001 - the error handler must never raise
            log.warning("could not tell chat %s about the error", chat_id)


async def check_token(settings: Settings) -> None:
    """Ask the Bot API who we are; SettingsError in one line if it refuses the token.

    Left to `run_polling`, a revoked token ends in PTB's traceback, which prints the token."""
    bot = Bot(
        settings.require_token(),
        base_url=settings.bot_api_base_url,
        base_file_url=settings.bot_file_base_url,
    )
    try:
        async with bot:
            pass
    except InvalidToken:
        raise SettingsError(
            "TELEGRAM_BOT_TOKEN was rejected by Telegram: revoked or mistyped? "
            "Check it with @BotFather"
        ) from None
    except NetworkError as exc:
        raise SettingsError(
            f"cannot reach the Bot API at TELEGRAM_API_BASE_URL "
            f"({settings.telegram_api_base_url}): {exc}"
        ) from None


def _cannot_listen(settings: Settings, exc: OSError) -> SettingsError:
    host = settings.webhook_listen
    where = f"[{host}]" if ":" in host else host
    return SettingsError(
        f"cannot listen for webhooks on {where}:{settings.webhook_port} "
        f"(WEBHOOK_LISTEN, WEBHOOK_PORT): {exc.strerror or exc}"
    )


def check_webhook_listen(settings: Settings) -> None:
    """Bind WEBHOOK_LISTEN:WEBHOOK_PORT as the webhook server will, then let go; SettingsError in
    one line if it cannot (a name that does not resolve, an address not on this machine, a port
    in use).

    PTB binds only once it has started the bot and set the webhook with Telegram, and a failure
    there ends `run_webhook` in a traceback."""
    from tornado.netutil import bind_sockets

    try:
        sockets = bind_sockets(settings.webhook_port, settings.webhook_listen)
    except OSError as exc:
        raise _cannot_listen(settings, exc) from None
    for sock in sockets:
        sock.close()


def run(settings: Settings) -> None:
    """`storywire run`: long polling, or a webhook when WEBHOOK_URL is set."""
    secret = (
        settings.webhook_secret_token.get_secret_value() if settings.webhook_secret_token else ""
    )
    if settings.webhook_url and not secret:
        raise SettingsError("WEBHOOK_SECRET_TOKEN is required when WEBHOOK_URL is set")
    if settings.webhook_url:
        try:
            import tornado  # noqa: F401  (PTB's webhook server)
        except ImportError:
            raise SettingsError(
                "WEBHOOK_URL is set but the webhook server is not installed: "
                "pip install 'python-telegram-bot[webhooks]'"
            ) from None
        check_webhook_listen(settings)
    asyncio.run(check_token(settings))
    application = build_application(settings)
    if settings.webhook_url:
        try:
            application.run_webhook(
                listen=settings.webhook_listen,
                port=settings.webhook_port,
                url_path="telegram",
                webhook_url=f"{settings.webhook_url.rstrip('/')}/telegram",
                secret_token=secret,
                allowed_updates=Update.ALL_TYPES,
            )
        except OSError as exc:
            # The bind, from inside the updater's start_webhook, unwrapped: the port was taken
            # after the check above. PTB has shut the application down by the time it gets here.
            raise _cannot_listen(settings, exc) from None
    else:
        application.run_polling(allowed_updates=Update.ALL_TYPES)

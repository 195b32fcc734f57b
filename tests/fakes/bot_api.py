"""A loopback Telegram Bot API server for tests (aiohttp on 127.0.0.1, a free port).

It answers a real python-telegram-bot client the way Telegram does, for the methods Storywire
uses: long-polling `getUpdates` (offset, limit, timeout, allowed_updates), `sendMessage` with
Telegram's HTML parser (its error messages and byte offsets, entities in UTF-16 units, the
4096-unit limit), edits, callback answers, commands, chats and members. It records what the bot
sent, lets a test play the user (messages, button presses, membership changes, group upgrades)
and injects faults: 429 with retry_after, 403, 400 with migrate_to_chat_id, 5xx, dropped
connections and delays.

    async with FakeBotApi() as api:
        async with Bot(api.token, base_url=api.bot_base_url) as bot:
            ...

Requests arrive as PTB sends them (form fields, objects as JSON strings inside them), as JSON
bodies, as multipart forms or as GET query strings; the method name is case-insensitive.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from aiohttp import web

from tests.fakes.telegram_html import HtmlParseError, _strip, parse_telegram_html, utf16_length

__all__ = [
    "ApiCall",
    "FakeBotApi",
    "Fault",
    "HtmlParseError",
    "SentMessage",
    "parse_telegram_html",
    "utf16_length",
]

MAX_TEXT_UTF16 = 4096
MAX_CALLBACK_DATA_BYTES = 64
# Telegram leaves these out when a bot never chose its allowed_updates (or sent an empty list).
NOT_DELIVERED_BY_DEFAULT = frozenset({"chat_member", "message_reaction", "message_reaction_count"})
OBJECT_FIELDS = frozenset({
    "reply_markup", "link_preview_options", "reply_parameters", "entities", "commands", "scope",
    "allowed_updates",
})  # fmt: skip
TRUE_STRINGS = frozenset({"true", "1", "True"})
TOKEN_SHAPE = re.compile(r"^\d+:[\w-]+$")
COMMAND_NAME = re.compile(r"^[a-z0-9_]{1,32}$")
# A command begins the text or follows whitespace: /cmd or /cmd@botname.
BOT_COMMAND = re.compile(r"(?<!\S)/[A-Za-z0-9_]{1,64}(?:@[A-Za-z0-9_]{3,32})?")


# --- records -----------------------------------------------------------------------------------


@dataclass
class SentMessage:
    """A message the bot sent or edited, as the bot asked for it."""

    chat_id: int
    message_id: int
    text: str  # as the bot sent it: HTML source when parse_mode is HTML
    plain_text: str  # what the user sees: entities parsed, whitespace trimmed
    parse_mode: str | None
    reply_markup: dict[str, Any] | None
    disable_notification: bool = False
    link_preview_options: dict[str, Any] | None = None
    entities: list[dict[str, Any]] = field(default_factory=list)
    method: str = "sendMessage"
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class ApiCall:
    """One request as the server understood it (method as the client spelled it)."""

    method: str
    params: dict[str, Any]
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class Fault:
    """An answer the next matching calls get instead of (or before) the real one.

    `method` None matches every method, `chat_id` None every chat. With `status` set the call
    answers that error; with `drop` the connection closes without an answer (after doing the
    work when `processed`, as when Telegram acted and the answer was lost); `delay` seconds
    pass first, and a fault with only a delay then answers normally.
    """

    method: str | None
    chat_id: int | None = None
    times: int = 1
    status: int | None = None
    description: str = ""
    parameters: dict[str, Any] | None = None
    delay: float = 0.0
    drop: bool = False
    processed: bool = False

    def matches(self, method: str, chat_id: int | None) -> bool:
        return (self.method is None or self.method == method) and (
            self.chat_id is None or self.chat_id == chat_id
        )


class _ApiError(Exception):
    def __init__(self, code: int, description: str, **parameters: Any) -> None:
        super().__init__(description)
        self.code, self.description, self.parameters = code, description, parameters


# --- request values (strings from forms and queries, native values from JSON) -----------------


def _int(params: dict[str, Any], key: str, default: int = 0) -> int:
    value = params.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _ApiError(400, f"Bad Request: invalid {key} specified") from None


def _bool(params: dict[str, Any], key: str) -> bool:
    value = params.get(key, False)
    return value is True or value in TRUE_STRINGS


def _object(params: dict[str, Any], key: str) -> Any:
    value = params.get(key)
    if isinstance(value, str) and value:
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise _ApiError(400, f"Bad Request: can't parse {key} JSON object") from None
    return value or None


def _update_type(update: dict[str, Any]) -> str:
    return next(key for key in update if key != "update_id")


# --- the server --------------------------------------------------------------------------------


class FakeBotApi:
    """A loopback Bot API server; all state is per instance. Start it with `async with`."""

    def __init__(
        self, token: str = "123456:TEST-TOKEN", *, username: str = "storywire_test_bot"
    ) -> None:
        self.token = token
        self.bot_user: dict[str, Any] = {
            "id": int(token.split(":", 1)[0]),
            "is_bot": True,
            "first_name": "Storywire",
            "username": username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self.url = ""
        self.sent: list[SentMessage] = []
        self.requests: list[ApiCall] = []
        self.callback_answers: list[dict[str, Any]] = []
        self.chats: dict[int, dict[str, Any]] = {}
        self.members: dict[tuple[int, int], str] = {}
        self.blocked: set[int] = set()  # every send to these chats answers 403
        self.unknown_chats: set[int] = set()  # every call naming these chats answers 400
        self.migrated: dict[int, int] = {}  # old group id -> supergroup id
        self.webhook_url = ""
        self.send_delay = 0.0  # seconds between recording a message and answering (crash tests)
        self.allowed_updates: frozenset[str] | None = None  # None: Telegram's default set
        self._faults: list[Fault] = []
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._query_ids = itertools.count(1)
        self._open_queries: set[str] = set()
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._messages: dict[tuple[int, int], dict[str, Any]] = {}
        self._commands: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._poller = 0  # bumped by each getUpdates; an older long poll then ends in 409
        self._closing = False
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> FakeBotApi:
        app = web.Application(client_max_size=50 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closing = True  # pending long polls and delays end now, not at their timeout
        await self._notify()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def bot_base_url(self) -> str:
        """PTB's `base_url`: PTB appends the token and then `/method`."""
        return f"{self.url}/bot"

    @property
    def file_base_url(self) -> str:
        """PTB's `base_file_url` (no file downloads are served)."""
        return f"{self.url}/file/bot"

    @property
    def commands(self) -> list[dict[str, Any]]:
        """The commands set for the default scope and every language."""
        return self._commands.get(('{"type": "default"}', ""), [])

    # --- what a test reads -------------------------------------------------------------------

    def sent_to(self, chat_id: int) -> list[SentMessage]:
        return [m for m in self.sent if m.chat_id == chat_id]

    def calls(self, method: str) -> list[dict[str, Any]]:
        """The parameters of every call of `method` (faulted ones included), oldest first."""
        return [c.params for c in self.requests if c.method.lower() == method.lower()]

    async def wait_for(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        """Wait until `predicate()` holds; it is checked whenever the server's state changes."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(predicate)

    async def wait_for_messages(
        self, n: int, chat_id: int | None = None, within: float = 5.0
    ) -> list[SentMessage]:
        """Wait until the bot has sent `n` messages (to `chat_id`, if given) and return them all."""

        def sent() -> list[SentMessage]:
            return self.sent if chat_id is None else self.sent_to(chat_id)

        try:
            await self.wait_for(lambda: len(sent()) >= n, within)
        except TimeoutError:
            texts = [m.text for m in sent()]
            where = "" if chat_id is None else f" to chat {chat_id}"
            raise TimeoutError(
                f"waited for {n} messages{where}, got {len(texts)}: {texts}"
            ) from None
        return sent()

    # --- what a test does: play the users ------------------------------------------------------

    async def inject_message(
        self,
        chat_id: int,
        text: str,
        *,
        user_id: int | None = None,
        chat_type: str | None = None,
        username: str | None = None,
        sender_chat_id: int | None = None,
        **extra: Any,
    ) -> int:
        """A user writes `text` in the chat; returns the update_id.

        Commands (`/cmd`, `/cmd@bot args`) get bot_command entities as Telegram gives them, so
        PTB's CommandHandler matches. `extra` is merged into the Message.
        """
        chat = self._chat(chat_id, chat_type)
        message = self._new_message(
            chat, self._user(self._default_user(chat_id, user_id), username)
        )
        message["text"] = text
        commands = [
            {"type": "bot_command", "offset": utf16_length(text[: m.start()]), "length": n}
            for m in BOT_COMMAND.finditer(text)
            if (n := utf16_length(m.group()))
        ]
        if commands:
            message["entities"] = commands
        if sender_chat_id is not None:
            message["sender_chat"] = self._chat(sender_chat_id)
        message.update(extra)
        return await self._push({"message": message})

    async def inject_callback_query(
        self, chat_id: int, user_id: int | None, data: str, *, message_id: int | None = None
    ) -> int:
        """A user presses an inline button with this callback_data; returns the update_id.

        The button sits on the bot's message `message_id` (default: the bot's latest message in
        the chat, or a stand-in message when it has sent none).
        """
        chat = self._chat(chat_id)
        message = self._bot_message(chat["id"], message_id)
        query_id = str(next(self._query_ids) * 7919)
        self._open_queries.add(query_id)
        query = {
            "id": query_id,
            "from": self._user(self._default_user(chat_id, user_id)),
            "chat_instance": f"ci{chat_id}",
            "data": data,
            "message": message,
        }
        return await self._push({"callback_query": query})

    async def inject_my_chat_member(
        self,
        chat_id: int,
        user_id: int,
        old_status: str | None = None,
        new_status: str | None = None,
        chat_type: str | None = None,
        *,
        old: str | None = None,
        new: str | None = None,
    ) -> int:
        """The bot's own membership changes (added to a group, removed, blocked by the user).

        `user_id` made the change; returns the update_id. `old`/`new` are older names.
        """
        before, after = old_status or old or "left", new_status or new or "member"
        chat = self._chat(chat_id, chat_type)
        self.members[(chat_id, self.bot_user["id"])] = after

        def member(status: str) -> dict[str, Any]:
            data: dict[str, Any] = {"status": status, "user": self._bot_as_user()}
            data.update(_member_fields(status))
            return data

        change = {
            "chat": chat,
            "from": self._user(user_id),
            "date": int(time.time()),
            "old_chat_member": member(before),
            "new_chat_member": member(after),
        }
        return await self._push({"my_chat_member": change})

    async def inject_migration(self, old_chat_id: int, new_chat_id: int) -> int:
        """A group becomes a supergroup; returns the update_id of the migrate_to_chat_id message.

        Telegram posts a service message in each chat (the migrate_from_chat_id one follows with
        the next update_id); from then on, sends to the old id answer 400 with the new id.
        """
        old = self._chat(old_chat_id, "group")
        new = self._chat(new_chat_id, "supergroup", title=old.get("title"))
        self.migrate_chat(old_chat_id, new_chat_id)
        admin = self._user(1000)
        update_id = await self._push(
            {"message": {**self._new_message(old, admin), "migrate_to_chat_id": new_chat_id}}
        )
        await self._push(
            {"message": {**self._new_message(new, admin), "migrate_from_chat_id": old_chat_id}}
        )
        return update_id

    def set_chat_member_status(self, chat_id: int, user_id: int, status: str) -> None:
        """What getChatMember answers: creator, administrator, member, restricted, left, kicked."""
        self.members[(chat_id, user_id)] = status

    # --- what a test does: faults ----------------------------------------------------------------

    def add_fault(self, fault: Fault) -> Fault:
        """Queue a fault; the first queued fault matching a call is used (and counted down)."""
        if fault.method is not None:
            fault.method = fault.method.lower()
        self._faults.append(fault)
        return fault

    def fail(
        self,
        method: str | None,
        status: int,
        description: str,
        *,
        times: int = 1,
        chat_id: int | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> Fault:
        """The next `times` calls of `method` (for `chat_id`, if given) answer with this error."""
        return self.add_fault(Fault(method, chat_id, times, status, description, parameters))

    def rate_limit(
        self, method: str | None, retry_after: int, *, times: int = 1, chat_id: int | None = None
    ) -> Fault:
        """429 "Too Many Requests: retry after N" with parameters.retry_after."""
        description = f"Too Many Requests: retry after {retry_after}"
        retry = {"retry_after": retry_after}
        return self.fail(method, 429, description, times=times, chat_id=chat_id, parameters=retry)

    def forbid(
        self,
        method: str | None,
        *,
        description: str = "Forbidden: bot was blocked by the user",
        times: int = 1,
        chat_id: int | None = None,
    ) -> Fault:
        """403 for the next calls; see `block` for a chat that stays blocked."""
        return self.fail(method, 403, description, times=times, chat_id=chat_id)

    def server_error(
        self, method: str | None, status: int = 502, *, times: int = 1, chat_id: int | None = None
    ) -> Fault:
        """A 5xx answer, "Bad Gateway" for 502 as Telegram's front end gives it."""
        return self.fail(method, status, HTTPStatus(status).phrase, times=times, chat_id=chat_id)

    def drop(
        self,
        method: str | None,
        *,
        times: int = 1,
        chat_id: int | None = None,
        processed: bool = False,
    ) -> Fault:
        """Close the connection without an answer; with `processed`, after doing the work."""
        return self.add_fault(Fault(method, chat_id, times, drop=True, processed=processed))

    def delay(
        self, method: str | None, seconds: float, *, times: int = 1, chat_id: int | None = None
    ) -> Fault:
        """Answer the next calls normally, `seconds` late (to make clients time out)."""
        return self.add_fault(Fault(method, chat_id, times, delay=seconds))

    def block(self, chat_id: int) -> None:
        """Every send to the chat answers 403 (blocked by the user, or kicked from a group)."""
        self.blocked.add(chat_id)

    def unblock(self, chat_id: int) -> None:
        self.blocked.discard(chat_id)

    def migrate_chat(self, old_chat_id: int, new_chat_id: int) -> None:
        """Sends to the old group answer 400 with migrate_to_chat_id, with no updates posted."""
        self._chat(new_chat_id, "supergroup")
        self.migrated[old_chat_id] = new_chat_id

    migrate_on_send = migrate_chat  # the older name, used by the delivery tests

    async def inject_callback(
        self, chat_id: int, data: str, *, user_id: int | None = None, message_id: int | None = None
    ) -> int:
        """The older form of `inject_callback_query`, data before user."""
        return await self.inject_callback_query(chat_id, user_id, data, message_id=message_id)

    def set_member_status(self, chat_id: int, user_id: int, status: str) -> None:
        """The older name of `set_chat_member_status`."""
        self.set_chat_member_status(chat_id, user_id, status)

    # --- state ---------------------------------------------------------------------------------

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _push(self, update: dict[str, Any]) -> int:
        update["update_id"] = next(self._update_ids)
        self._updates.append(update)
        await self._notify()
        return update["update_id"]

    def _chat(
        self, chat_id: int, chat_type: str | None = None, *, title: str | None = None
    ) -> dict[str, Any]:
        """The chat, made on first sight; the type follows Telegram's id ranges unless given."""
        known = self.chats.get(chat_id)
        if known is not None and chat_type in (None, known["type"]):
            return known
        kind = chat_type or (
            "private" if chat_id > 0 else "supergroup" if chat_id <= -(10**12) else "group"
        )
        chat: dict[str, Any] = {"id": chat_id, "type": kind}
        if kind == "private":
            chat.update(first_name=f"User{chat_id}", username=f"user{chat_id}")
        else:
            chat["title"] = title or (known or {}).get("title") or f"Group {chat_id}"
        self.chats[chat_id] = chat
        return chat

    @staticmethod
    def _default_user(chat_id: int, user_id: int | None) -> int:
        return user_id if user_id is not None else (chat_id if chat_id > 0 else 1000)

    @staticmethod
    def _user(user_id: int, username: str | None = None) -> dict[str, Any]:
        return {
            "id": user_id,
            "is_bot": False,
            "first_name": f"User{user_id}",
            "username": username or f"user{user_id}",
        }

    def _bot_as_user(self) -> dict[str, Any]:
        return {k: self.bot_user[k] for k in ("id", "is_bot", "first_name", "username")}

    def _new_message(self, chat: dict[str, Any], sender: dict[str, Any]) -> dict[str, Any]:
        ids = self._message_ids.setdefault(chat["id"], itertools.count(1))
        message = {"message_id": next(ids), "date": int(time.time()), "chat": chat, "from": sender}
        self._messages[(chat["id"], message["message_id"])] = message
        return message

    def _bot_message(self, chat_id: int, message_id: int | None) -> dict[str, Any]:
        """The bot's message a button press refers to, made up if the bot never sent it."""
        bot_id = self.bot_user["id"]
        if message_id is None:
            mine = [m for (c, _), m in self._messages.items() if c == chat_id]
            mine = [m for m in mine if m["from"]["id"] == bot_id]
            if mine:
                return mine[-1]
        elif (chat_id, message_id) in self._messages:
            return self._messages[(chat_id, message_id)]
        message = self._new_message(self.chats[chat_id], self._bot_as_user())
        if message_id is not None:
            del self._messages[(chat_id, message["message_id"])]
            message["message_id"] = message_id
            self._messages[(chat_id, message_id)] = message
        message["text"] = "…"
        return message

    def _take_fault(self, method: str, chat_id: int | None) -> Fault | None:
        for fault in self._faults:
            if fault.matches(method, chat_id):
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    async def _pause(self, seconds: float) -> None:
        """Sleep as a slow server would, but end at once when the server closes."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds), self._changed:
                await self._changed.wait_for(lambda: self._closing)

    # --- HTTP ----------------------------------------------------------------------------------

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                body = await request.json()
                if not isinstance(body, dict):
                    raise _ApiError(400, "Bad Request: the request body must be a JSON object")
                params.update(body)
            else:  # form-urlencoded or multipart; uploaded files are left out
                form = await request.post()
                params.update({k: v for k, v in form.items() if isinstance(v, str)})
        for key in OBJECT_FIELDS & params.keys():
            params[key] = _object(params, key)
        return params

    def _chat_id(self, params: dict[str, Any]) -> int | None:
        """chat_id as a number; an @username is looked up among the chats seen."""
        value = params.get("chat_id")
        if value is None or value == "":
            return None
        if isinstance(value, str) and value.startswith("@"):
            found = [c for c, chat in self.chats.items() if chat.get("username") == value[1:]]
            if not found:
                raise _ApiError(400, "Bad Request: chat not found")
            return found[0]
        return _int(params, "chat_id")

    @staticmethod
    def _error(
        code: int, description: str, parameters: dict[str, Any] | None = None
    ) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
        if parameters:
            body["parameters"] = parameters
        return web.json_response(body, status=code)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        token, method = request.match_info["token"], request.match_info["method"]
        if token != self.token:
            # Telegram: 404 for a token of the wrong shape, 401 for a well-formed unknown one.
            if not TOKEN_SHAPE.match(token):
                return self._error(404, "Not Found")
            return self._error(401, "Unauthorized")
        try:
            params = await self._params(request)
            chat_id = self._chat_id(params)
        except _ApiError as exc:
            return self._error(exc.code, exc.description, exc.parameters)
        lowered = method.lower()
        self.requests.append(ApiCall(method, params))
        await self._notify()
        handler = getattr(self, f"_m_{lowered}", None)
        fault = self._take_fault(lowered, chat_id)
        if fault is not None:
            if fault.delay:
                await self._pause(fault.delay)
            if fault.status is not None:
                return self._error(fault.status, fault.description, fault.parameters)
            if fault.drop and not fault.processed:
                return self._hang_up(request)
        if handler is None:
            return self._error(404, "Not Found")
        try:
            result = await handler(params, chat_id)
        except _ApiError as exc:
            return self._error(exc.code, exc.description, exc.parameters)
        finally:
            await self._notify()
        if fault is not None and fault.drop:
            return self._hang_up(request)
        return web.json_response({"ok": True, "result": result})

    @staticmethod
    def _hang_up(request: web.Request) -> web.Response:
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=HTTPStatus.INTERNAL_SERVER_ERROR)  # never reaches the client

    # --- checks shared by the methods ----------------------------------------------------------

    def _target(self, chat_id: int | None) -> dict[str, Any]:
        """The chat a send or edit goes to, or Telegram's error for it."""
        if chat_id is None:
            raise _ApiError(400, "Bad Request: chat_id is empty")
        if chat_id in self.unknown_chats:
            raise _ApiError(400, "Bad Request: chat not found")
        if chat_id in self.migrated:
            raise _ApiError(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                migrate_to_chat_id=self.migrated[chat_id],
            )
        chat = self._chat(chat_id)
        if chat_id in self.blocked:
            raise _ApiError(403, BLOCKED[chat["type"]])
        return chat

    @staticmethod
    def _formatted(params: dict[str, Any]) -> tuple[str, str, list[dict[str, Any]], str | None]:
        """(text as sent, visible text, entities, parse_mode), or Telegram's 400."""
        raw = "" if params.get("text") is None else str(params["text"])
        parse_mode = params.get("parse_mode") or None
        if not raw.strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        if parse_mode is None:
            text, entities = raw, list(params.get("entities") or [])
        elif parse_mode.lower() == "html":
            try:
                text, entities = parse_telegram_html(raw)
            except HtmlParseError as exc:
                raise _ApiError(400, f"Bad Request: can't parse entities: {exc}") from None
        elif parse_mode.lower() in {"markdown", "markdownv2"}:
            text, entities = raw, []  # Markdown is not parsed here; Storywire sends HTML
        else:
            raise _ApiError(400, "Bad Request: unsupported parse_mode")
        text, entities = _strip(text, entities)
        if not text:
            raise _ApiError(400, "Bad Request: message text is empty")
        if utf16_length(text) > MAX_TEXT_UTF16:
            raise _ApiError(400, "Bad Request: message is too long")
        return raw, text, entities, parse_mode

    @staticmethod
    def _markup(params: dict[str, Any]) -> dict[str, Any] | None:
        markup = params.get("reply_markup")
        if markup is None:
            return None
        if not isinstance(markup, dict):
            raise _ApiError(400, "Bad Request: can't parse reply keyboard markup JSON object")
        for row in markup.get("inline_keyboard", []):
            for button in row:
                data = button.get("callback_data")
                if data is not None and not 1 <= len(data.encode()) <= MAX_CALLBACK_DATA_BYTES:
                    raise _ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
        return markup

    def _replied(self, chat_id: int, params: dict[str, Any]) -> dict[str, Any] | None:
        reply = params.get("reply_parameters") or {}
        message_id = reply.get("message_id") or params.get("reply_to_message_id")
        if not message_id:
            return None
        found = self._messages.get((chat_id, int(message_id)))
        if found is None:
            if reply.get("allow_sending_without_reply") or _bool(
                params, "allow_sending_without_reply"
            ):
                return None
            raise _ApiError(400, "Bad Request: message to be replied not found")
        return {k: v for k, v in found.items() if k != "reply_to_message"}

    def _editable(self, chat_id: int, params: dict[str, Any]) -> dict[str, Any]:
        message_id = _int(params, "message_id")
        if not message_id:
            raise _ApiError(400, "Bad Request: message identifier is not specified")
        message = self._messages.get((chat_id, message_id))
        if message is None:
            raise _ApiError(400, "Bad Request: message to edit not found")
        if message["from"]["id"] != self.bot_user["id"]:
            raise _ApiError(400, "Bad Request: message can't be edited")
        return message

    def _deliverable(self) -> list[dict[str, Any]]:
        """Pending updates of the types the bot asked for; Telegram never keeps the others."""
        chosen = self.allowed_updates

        def wanted(update: dict[str, Any]) -> bool:
            kind = _update_type(update)
            return kind not in NOT_DELIVERED_BY_DEFAULT if chosen is None else kind in chosen

        self._updates = [u for u in self._updates if wanted(u)]
        return self._updates

    # --- methods, named _m_<method in lower case> ----------------------------------------------

    async def _m_getme(self, params: dict[str, Any], chat_id: int | None) -> Any:
        return self.bot_user

    async def _m_getupdates(self, params: dict[str, Any], chat_id: int | None) -> Any:
        if self.webhook_url:
            raise _ApiError(409, CONFLICT_WEBHOOK)
        offset = _int(params, "offset")
        limit = min(max(_int(params, "limit", 100), 1), 100)
        timeout = max(_int(params, "timeout"), 0)
        if "allowed_updates" in params:
            chosen = params["allowed_updates"]
            self.allowed_updates = frozenset(chosen) if chosen else None
        if offset > 0:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        elif offset < 0:
            self._updates = self._updates[offset:]
        self._poller += 1
        me = self._poller
        async with self._changed:
            self._changed.notify_all()  # an older long poll ends: only one poller at a time
            if not self._deliverable() and timeout and not self._closing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._changed.wait_for(
                            lambda: bool(self._deliverable()) or self._closing or self._poller != me
                        )
        if self._poller != me:
            raise _ApiError(409, CONFLICT_POLLER)
        return self._deliverable()[:limit]

    async def _m_deletewebhook(self, params: dict[str, Any], chat_id: int | None) -> Any:
        self.webhook_url = ""
        if _bool(params, "drop_pending_updates"):
            self._updates.clear()
        return True

    async def _m_setwebhook(self, params: dict[str, Any], chat_id: int | None) -> Any:
        url = str(params.get("url") or "")
        if url and not url.startswith("https://"):
            raise _ApiError(
                400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook"
            )
        self.webhook_url = url
        if "allowed_updates" in params:
            self.allowed_updates = frozenset(params["allowed_updates"] or ()) or None
        if _bool(params, "drop_pending_updates"):
            self._updates.clear()
        return True

    async def _m_getwebhookinfo(self, params: dict[str, Any], chat_id: int | None) -> Any:
        info: dict[str, Any] = {
            "url": self.webhook_url,
            "has_custom_certificate": False,
            "pending_update_count": len(self._deliverable()),
        }
        if self.allowed_updates is not None:
            info["allowed_updates"] = sorted(self.allowed_updates)
        return info

    @staticmethod
    def _commands_key(params: dict[str, Any]) -> tuple[str, str]:
        scope = params.get("scope") or {"type": "default"}
        return json.dumps(scope, sort_keys=True), str(params.get("language_code") or "")

    async def _m_setmycommands(self, params: dict[str, Any], chat_id: int | None) -> Any:
        commands = list(params.get("commands") or [])
        if len(commands) > 100 or not all(
            COMMAND_NAME.match(str(c.get("command", ""))) for c in commands
        ):
            raise _ApiError(400, "Bad Request: BOT_COMMAND_INVALID")
        self._commands[self._commands_key(params)] = commands
        return True

    async def _m_getmycommands(self, params: dict[str, Any], chat_id: int | None) -> Any:
        return self._commands.get(self._commands_key(params), [])

    async def _m_deletemycommands(self, params: dict[str, Any], chat_id: int | None) -> Any:
        self._commands.pop(self._commands_key(params), None)
        return True

    async def _m_sendmessage(self, params: dict[str, Any], chat_id: int | None) -> Any:
        chat = self._target(chat_id)
        raw, text, entities, parse_mode = self._formatted(params)
        markup = self._markup(params)
        replied = self._replied(chat["id"], params)
        message = self._new_message(chat, self._bot_as_user())
        message["text"] = text
        if chat.get("is_forum") and params.get("message_thread_id") not in (None, ""):
            message["message_thread_id"] = int(params["message_thread_id"])
            message["is_topic_message"] = True  # sent into a forum topic, as Telegram marks it
        if entities:
            message["entities"] = entities
        if markup is not None and "inline_keyboard" in markup:
            message["reply_markup"] = markup  # Telegram echoes inline keyboards only
        if replied is not None:
            message["reply_to_message"] = replied
        self.sent.append(
            SentMessage(
                chat["id"],
                message["message_id"],
                raw,
                text,
                parse_mode,
                markup,
                _bool(params, "disable_notification"),
                params.get("link_preview_options"),
                entities,
            )
        )
        if self.send_delay:  # recorded (Telegram accepted it) before the answer goes back
            await self._notify()
            await self._pause(self.send_delay)
        return message

    async def _m_editmessagetext(self, params: dict[str, Any], chat_id: int | None) -> Any:
        if params.get("inline_message_id"):
            self._formatted(params)
            return True
        chat = self._target(chat_id)
        message = self._editable(chat["id"], params)
        raw, text, entities, parse_mode = self._formatted(params)
        markup = self._markup(params)
        inline = markup if markup is not None and "inline_keyboard" in markup else None
        current = (message.get("text"), message.get("entities", []), message.get("reply_markup"))
        if current == (text, entities, inline):
            raise _ApiError(400, NOT_MODIFIED)
        message.update(
            text=text, entities=entities, reply_markup=inline, edit_date=int(time.time())
        )
        for key in ("entities", "reply_markup"):
            if not message[key]:
                del message[key]
        self.sent.append(
            SentMessage(
                chat["id"],
                message["message_id"],
                raw,
                text,
                parse_mode,
                markup,
                link_preview_options=params.get("link_preview_options"),
                entities=entities,
                method="editMessageText",
            )
        )
        return message

    async def _m_editmessagereplymarkup(self, params: dict[str, Any], chat_id: int | None) -> Any:
        if params.get("inline_message_id"):
            return True
        chat = self._target(chat_id)
        message = self._editable(chat["id"], params)
        markup = self._markup(params)
        if markup == message.get("reply_markup"):
            raise _ApiError(400, NOT_MODIFIED)
        message.pop("reply_markup", None)
        if markup:
            message["reply_markup"] = markup
        message["edit_date"] = int(time.time())
        text = message.get("text", "")
        self.sent.append(
            SentMessage(
                chat["id"],
                message["message_id"],
                text,
                text,
                None,
                markup,
                method="editMessageReplyMarkup",
            )
        )
        return message

    async def _m_answercallbackquery(self, params: dict[str, Any], chat_id: int | None) -> Any:
        query_id = str(params.get("callback_query_id") or "")
        if query_id not in self._open_queries:
            raise _ApiError(400, QUERY_TOO_OLD)
        self._open_queries.discard(query_id)
        self.callback_answers.append(params)
        return True

    async def _m_getchatmember(self, params: dict[str, Any], chat_id: int | None) -> Any:
        if chat_id is None or chat_id in self.unknown_chats:
            raise _ApiError(400, "Bad Request: chat not found")
        user_id = _int(params, "user_id")
        if not user_id:
            raise _ApiError(400, "Bad Request: user not found")
        status = self.members.get((chat_id, user_id), "member")
        user = self._bot_as_user() if user_id == self.bot_user["id"] else self._user(user_id)
        return {"status": status, "user": user, **_member_fields(status)}

    async def _m_getchat(self, params: dict[str, Any], chat_id: int | None) -> Any:
        if chat_id is None or chat_id in self.unknown_chats:
            raise _ApiError(400, "Bad Request: chat not found")
        gifts = dict.fromkeys(GIFT_TYPES, False)
        full = {"accent_color_id": 0, "max_reaction_count": 11, "accepted_gift_types": gifts}
        return {**self._chat(chat_id), **full}


CONFLICT_WEBHOOK = (
    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete "
    "the webhook first"
)
CONFLICT_POLLER = (
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is "
    "running"
)
QUERY_TOO_OLD = "Bad Request: query is too old and response timeout expired or query ID is invalid"
GIFT_TYPES = (
    "unlimited_gifts", "limited_gifts", "unique_gifts", "premium_subscription",
    "gifts_from_channels",
)  # fmt: skip
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)
BLOCKED = {
    "private": "Forbidden: bot was blocked by the user",
    "group": "Forbidden: bot was kicked from the group chat",
    "supergroup": "Forbidden: bot was kicked from the supergroup chat",
    "channel": "Forbidden: bot is not a member of the channel chat",
}
ADMIN_RIGHTS = (
    "can_manage_chat", "can_delete_messages", "can_manage_video_chats", "can_restrict_members",
    "can_promote_members", "can_change_info", "can_invite_users", "can_post_stories",
    "can_edit_stories", "can_delete_stories",
)  # fmt: skip
RESTRICTIONS = (
    "can_send_messages", "can_send_audios", "can_send_documents", "can_send_photos",
    "can_send_videos", "can_send_video_notes", "can_send_voice_notes", "can_send_polls",
    "can_send_other_messages", "can_add_web_page_previews", "can_change_info",
    "can_invite_users", "can_pin_messages", "can_manage_topics", "can_edit_tag",
    "can_react_to_messages",
)  # fmt: skip


def _member_fields(status: str) -> dict[str, Any]:
    """The fields a ChatMember of this status must carry (PTB refuses it without them)."""
    if status == "creator":
        return {"is_anonymous": False}
    if status == "administrator":
        return {"can_be_edited": False, "is_anonymous": False, **dict.fromkeys(ADMIN_RIGHTS, True)}
    if status == "restricted":
        return {"is_member": True, "until_date": 0, **dict.fromkeys(RESTRICTIONS, False)}
    if status == "kicked":
        return {"until_date": 0}
    return {}

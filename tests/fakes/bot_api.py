"""A loopback Telegram Bot API server for tests (aiohttp on 127.0.0.1).

It implements the methods Storywire uses with Telegram's documented semantics: long-polling
`getUpdates` with offsets, `sendMessage` with HTML entity validation and the 4096-character limit
(Telegram's 400 errors), `editMessageText`, `answerCallbackQuery`, `setMyCommands`,
`getChatMember`. It records what the bot sent, lets a test inject user messages, button presses,
membership changes and group migrations, and injects faults: 429 with retry_after, 403 blocked,
400 with migrate_to_chat_id, 5xx, dropped connections.

    async with FakeBotApi() as api:
        bot = Bot(api.token, base_url=api.bot_base_url)
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from aiohttp import web

ALLOWED_TAGS = {
    "b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre",
    "blockquote", "tg-spoiler", "span", "tg-emoji",
}  # fmt: skip
OBJECT_FIELDS = {"reply_markup", "link_preview_options", "commands", "scope", "allowed_updates",
                 "reply_parameters", "entities"}  # fmt: skip
BAD_AMPERSAND = re.compile(r"&(?!(?:lt|gt|amp|quot|#\d{1,7}|#x[0-9a-fA-F]{1,6});)")
BARE_LT = re.compile(r"<(?![a-zA-Z/])")


class EntityError(ValueError):
    pass


class _TelegramHTML(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ALLOWED_TAGS:
            raise EntityError(f'Unsupported start tag "{tag}"')
        if tag == "a" and not dict(attrs).get("href"):
            raise EntityError("Can't find end of a URL")
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            raise EntityError(f'Unmatched end tag "{tag}"')
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_html(text: str) -> str:
    """The visible text of Telegram HTML, or EntityError as Telegram would refuse it."""
    if BARE_LT.search(text):
        raise EntityError("Unexpected < character")
    if BAD_AMPERSAND.search(text):
        raise EntityError("Unsupported HTML entity or bare & character")
    parser = _TelegramHTML()
    parser.feed(text)
    parser.close()
    if parser.stack:
        raise EntityError(f'Can\'t find end tag corresponding to start tag "{parser.stack[-1]}"')
    return html.unescape("".join(parser.text))


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@dataclass
class SentMessage:
    chat_id: int
    message_id: int
    text: str  # as the bot sent it (HTML when parse_mode is HTML)
    parse_mode: str | None
    reply_markup: dict[str, Any] | None
    method: str = "sendMessage"
    at: float = field(default_factory=time.monotonic)


@dataclass
class Fault:
    method: str
    chat_id: int | None
    times: int
    status: int | None = None  # HTTP status / error_code; None means drop the connection
    description: str = ""
    parameters: dict[str, Any] | None = None
    delay: float = 0.0


class FakeBotApi:
    """See the module docstring. All state is per instance; start it with `async with`."""

    def __init__(
        self, token: str = "123456:TEST-TOKEN", *, username: str = "storywire_test_bot"
    ) -> None:
        self.token = token
        self.bot_user = {
            "id": int(token.split(":", 1)[0]),
            "is_bot": True,
            "first_name": "Storywire",
            "username": username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self.sent: list[SentMessage] = []
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.callback_answers: list[dict[str, Any]] = []
        self.commands: list[dict[str, Any]] = []
        self.chats: dict[int, dict[str, Any]] = {}
        self.members: dict[tuple[int, int], str] = {}
        self.blocked: set[int] = set()
        self.unknown_chats: set[int] = set()
        self.send_delay = 0.0  # seconds between recording a message and answering (crash tests)
        self._faults: list[Fault] = []
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._message_ids: dict[int, itertools.count] = {}
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> FakeBotApi:
        app = web.Application(client_max_size=10 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def bot_base_url(self) -> str:
        return f"{self.url}/bot"

    # --- what a test asks --------------------------------------------------------------------

    def sent_to(self, chat_id: int) -> list[SentMessage]:
        return [m for m in self.sent if m.chat_id == chat_id]

    def calls(self, method: str) -> list[dict[str, Any]]:
        return [p for m, p in self.requests if m.lower() == method.lower()]

    async def wait_for(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        """Wait until `predicate()` holds (checked whenever the server's state changes)."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(predicate)

    async def wait_for_messages(
        self, n: int, chat_id: int | None = None, within: float = 10.0
    ) -> list[SentMessage]:
        def enough() -> bool:
            return len(self.sent if chat_id is None else self.sent_to(chat_id)) >= n

        await self.wait_for(enough, within)
        return self.sent if chat_id is None else self.sent_to(chat_id)

    # --- what a test does --------------------------------------------------------------------

    def _chat(
        self, chat_id: int, chat_type: str | None = None, title: str | None = None
    ) -> dict[str, Any]:
        known = self.chats.get(chat_id)
        if known is None or chat_type:
            kind = chat_type or (
                "private" if chat_id > 0 else "supergroup" if chat_id < -(10**12) else "group"
            )
            known = {"id": chat_id, "type": kind}
            if kind == "private":
                known["first_name"] = "User"
            else:
                known["title"] = title or f"Group {chat_id}"
            self.chats[chat_id] = known
        return known

    def _user(self, user_id: int, username: str | None = None) -> dict[str, Any]:
        return {
            "id": user_id,
            "is_bot": False,
            "first_name": f"User{user_id}",
            "username": username or f"user{user_id}",
        }

    async def _push(self, update: dict[str, Any]) -> int:
        update_id = next(self._update_ids)
        update["update_id"] = update_id
        async with self._changed:
            self._updates.append(update)
            self._changed.notify_all()
        return update_id

    async def inject_message(
        self,
        chat_id: int,
        text: str,
        *,
        user_id: int | None = None,
        chat_type: str | None = None,
        sender_chat_id: int | None = None,
        **extra: Any,
    ) -> int:
        """A user writes `text` in the chat; commands get their bot_command entity."""
        chat = self._chat(chat_id, chat_type)
        user_id = user_id if user_id is not None else (chat_id if chat_id > 0 else 1000)
        message: dict[str, Any] = {
            "message_id": next(self._ids(chat_id)),
            "date": int(time.time()),
            "chat": chat,
            "from": self._user(user_id),
            "text": text,
            **extra,
        }
        if sender_chat_id is not None:
            message["sender_chat"] = self._chat(sender_chat_id)
        if text.startswith("/"):
            command = text.split()[0]
            message["entities"] = [
                {"type": "bot_command", "offset": 0, "length": utf16_length(command)}
            ]
        return await self._push({"message": message})

    async def inject_callback(
        self, chat_id: int, data: str, *, user_id: int | None = None, message_id: int = 1
    ) -> int:
        """A user presses an inline button whose callback_data is `data`."""
        chat = self._chat(chat_id)
        user_id = user_id if user_id is not None else (chat_id if chat_id > 0 else 1000)
        query = {
            "id": str(next(self._update_ids) * 7919),
            "from": self._user(user_id),
            "chat_instance": f"ci{chat_id}",
            "data": data,
            "message": {
                "message_id": message_id,
                "date": int(time.time()),
                "chat": chat,
                "from": self.bot_user,
                "text": "…",
            },
        }
        return await self._push({"callback_query": query})

    async def inject_my_chat_member(
        self, chat_id: int, *, user_id: int, old: str, new: str, chat_type: str | None = None
    ) -> int:
        """The bot's own membership changes (added to a group, removed, blocked by a user)."""
        chat = self._chat(chat_id, chat_type)

        def member(status: str) -> dict[str, Any]:
            data: dict[str, Any] = {"status": status, "user": self.bot_user}
            if status == "kicked":
                data["until_date"] = 0
            return data

        change = {"chat": chat, "from": self._user(user_id), "date": int(time.time()),
                  "old_chat_member": member(old), "new_chat_member": member(new)}  # fmt: skip
        return await self._push({"my_chat_member": change})

    async def inject_migration(self, old_chat_id: int, new_chat_id: int) -> None:
        """A group becomes a supergroup: Telegram posts a service message in each chat."""
        old = self._chat(old_chat_id, "group")
        new = self._chat(new_chat_id, "supergroup", title=old.get("title"))
        now = int(time.time())
        await self._push({"message": {"message_id": next(self._ids(old_chat_id)), "date": now, "chat": old,
                                      "from": self._user(1000), "migrate_to_chat_id": new_chat_id}})  # fmt: skip
        await self._push({"message": {"message_id": next(self._ids(new_chat_id)), "date": now, "chat": new,
                                      "from": self._user(1000), "migrate_from_chat_id": old_chat_id}})  # fmt: skip

    def set_member_status(self, chat_id: int, user_id: int, status: str) -> None:
        self.members[(chat_id, user_id)] = status

    def fail(self, method: str, status: int, description: str, *, times: int = 1, chat_id: int | None = None,
             parameters: dict[str, Any] | None = None) -> None:  # fmt: skip
        """The next `times` calls of `method` (for `chat_id`, if given) answer with this error."""
        self._faults.append(Fault(method.lower(), chat_id, times, status, description, parameters))

    def rate_limit(
        self, method: str, retry_after: int, *, times: int = 1, chat_id: int | None = None
    ) -> None:
        self.fail(method, 429, f"Too Many Requests: retry after {retry_after}", times=times,
                  chat_id=chat_id, parameters={"retry_after": retry_after})  # fmt: skip

    def migrate_on_send(self, old_chat_id: int, new_chat_id: int) -> None:
        self._chat(new_chat_id, "supergroup")
        self.fail("sendMessage", 400, "Bad Request: group chat was upgraded to a supergroup chat",
                  times=1, chat_id=old_chat_id, parameters={"migrate_to_chat_id": new_chat_id})  # fmt: skip

    def drop(self, method: str, *, times: int = 1, chat_id: int | None = None) -> None:
        """The next `times` calls of `method` get their connection closed without an answer."""
        self._faults.append(Fault(method.lower(), chat_id, times, None))

    # --- the server --------------------------------------------------------------------------

    def _ids(self, chat_id: int) -> itertools.count:
        return self._message_ids.setdefault(chat_id, itertools.count(1))

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                params.update(await request.json())
            else:
                form = await request.post()
                params.update({k: v for k, v in form.items() if isinstance(v, str)})
        for key in OBJECT_FIELDS & params.keys():
            if isinstance(params[key], str):
                with contextlib.suppress(json.JSONDecodeError):
                    params[key] = json.loads(params[key])
        return params

    def _take_fault(self, method: str, chat_id: int | None) -> Fault | None:
        for fault in self._faults:
            if fault.method == method and (fault.chat_id is None or fault.chat_id == chat_id):
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    @staticmethod
    def _error(
        code: int, description: str, parameters: dict[str, Any] | None = None
    ) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
        if parameters:
            body["parameters"] = parameters
        return web.json_response(body, status=code)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return self._error(401, "Unauthorized")
        method = request.match_info["method"]
        params = await self._params(request)
        lowered = method.lower()
        chat_id = (
            int(params["chat_id"]) if str(params.get("chat_id", "")).lstrip("-").isdigit() else None
        )
        self.requests.append((method, params))
        fault = self._take_fault(lowered, chat_id)
        if fault is not None:
            if fault.status is None:
                assert request.transport is not None
                request.transport.abort()
                return web.Response(status=500)
            return self._error(fault.status, fault.description, fault.parameters)
        handler = getattr(self, f"_m_{lowered}", None)
        if handler is None:
            return self._error(404, "Not Found")
        try:
            result = await handler(params, chat_id)
        except _ApiError as exc:
            return self._error(exc.code, exc.description, exc.parameters)
        async with self._changed:
            self._changed.notify_all()
        return web.json_response({"ok": True, "result": result})

    # --- methods (named _m_<lowercase method>) -------------------------------------------------

    async def _m_getme(self, params: dict[str, Any], chat_id: int | None) -> Any:
        return self.bot_user

    async def _m_getupdates(self, params: dict[str, Any], chat_id: int | None) -> Any:
        offset = int(params.get("offset") or 0)
        limit = min(int(params.get("limit") or 100), 100)
        timeout = float(params.get("timeout") or 0)
        async with self._changed:
            if offset:
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
            if not self._updates and timeout > 0:
                try:
                    async with asyncio.timeout(timeout):
                        await self._changed.wait_for(lambda: bool(self._updates))
                except TimeoutError:
                    pass
            return self._updates[:limit]

    async def _m_deletewebhook(self, params: dict[str, Any], chat_id: int | None) -> Any:
        return True

    async def _m_setmycommands(self, params: dict[str, Any], chat_id: int | None) -> Any:
        self.commands = list(params.get("commands") or [])
        return True

    async def _m_getmycommands(self, params: dict[str, Any], chat_id: int | None) -> Any:
        return self.commands

    async def _m_deletemycommands(self, params: dict[str, Any], chat_id: int | None) -> Any:
        self.commands = []
        return True

    def _check_chat(self, chat_id: int | None) -> dict[str, Any]:
        if chat_id is None or chat_id in self.unknown_chats:
            raise _ApiError(400, "Bad Request: chat not found")
        if chat_id in self.blocked:
            raise _ApiError(403, "Forbidden: bot was blocked by the user")
        return self._chat(chat_id)

    @staticmethod
    def _visible(text: str, parse_mode: str | None) -> str:
        if not text or not text.strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        if parse_mode and parse_mode.upper() == "HTML":
            try:
                text = parse_html(text)
            except EntityError as exc:
                raise _ApiError(400, f"Bad Request: can't parse entities: {exc}") from None
        if utf16_length(text) > 4096:
            raise _ApiError(400, "Bad Request: message is too long")
        if not text.strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        return text

    async def _m_sendmessage(self, params: dict[str, Any], chat_id: int | None) -> Any:
        chat = self._check_chat(chat_id)
        text = str(params.get("text", ""))
        parse_mode = params.get("parse_mode")
        visible = self._visible(text, parse_mode)
        message_id = next(self._ids(chat["id"]))
        markup = (
            params.get("reply_markup") if isinstance(params.get("reply_markup"), dict) else None
        )
        self.sent.append(SentMessage(chat["id"], message_id, text, parse_mode, markup))
        result = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": chat,
            "from": self.bot_user,
            "text": visible,
        }
        if markup:
            result["reply_markup"] = markup
        if self.send_delay:  # recorded (Telegram accepted it) before the answer goes back
            async with self._changed:
                self._changed.notify_all()
            await asyncio.sleep(self.send_delay)
        return result

    async def _m_editmessagetext(self, params: dict[str, Any], chat_id: int | None) -> Any:
        chat = self._check_chat(chat_id)
        text = str(params.get("text", ""))
        visible = self._visible(text, params.get("parse_mode"))
        message_id = int(params.get("message_id") or 0)
        markup = (
            params.get("reply_markup") if isinstance(params.get("reply_markup"), dict) else None
        )
        self.sent.append(
            SentMessage(
                chat["id"], message_id, text, params.get("parse_mode"), markup, "editMessageText"
            )
        )
        return {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": chat,
            "from": self.bot_user,
            "text": visible,
        }

    async def _m_answercallbackquery(self, params: dict[str, Any], chat_id: int | None) -> Any:
        self.callback_answers.append(params)
        return True

    async def _m_getchatmember(self, params: dict[str, Any], chat_id: int | None) -> Any:
        user_id = int(params["user_id"])
        status = self.members.get((chat_id or 0, user_id), "member")
        member: dict[str, Any] = {"status": status, "user": self._user(user_id)}
        if status == "creator":
            member["is_anonymous"] = False
        elif status == "administrator":
            member.update(
                dict.fromkeys(
                    [
                        "can_be_edited",
                        "is_anonymous",
                        "can_manage_chat",
                        "can_delete_messages",
                        "can_manage_video_chats",
                        "can_restrict_members",
                        "can_promote_members",
                        "can_change_info",
                        "can_invite_users",
                        "can_post_stories",
                        "can_edit_stories",
                        "can_delete_stories",
                    ],
                    False,
                )  # fmt: skip
            )
        elif status == "kicked":
            member["until_date"] = 0
        return member

    async def _m_getchat(self, params: dict[str, Any], chat_id: int | None) -> Any:
        chat = self._check_chat(chat_id)
        return {**chat, "accent_color_id": 0, "max_reaction_count": 11, "accepted_gift_types": {
            "unlimited_gifts": False, "limited_gifts": False, "unique_gifts": False,
            "premium_subscription": False}}  # fmt: skip


class _ApiError(Exception):
    def __init__(
        self, code: int, description: str, parameters: dict[str, Any] | None = None
    ) -> None:
        super().__init__(description)
        self.code, self.description, self.parameters = code, description, parameters

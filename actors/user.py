"""One actor per user (``user:<chat_id>`` under the ``users`` dynamic supervisor).

It owns the user's settings (PostgreSQL ``settings`` + ``settings_changes``, cached in
Redis) and their standing (reachable, locked, paused, subscription), and answers the
bot's commands. It keeps its shard's copy current (`UserSettingsChanged`: thresholds,
whether alerts may go out, until when), so deciding an event needs no message to any
user actor: the shard hands what passes to the notify gate, which records the token in
the token's processed-token memory in Redis atomically and only then sends the
notification and the tracking request. So a repeat event or a restart of anything can
never notify twice (see ``actors.notify_gate``).

Store outages never crash the actor: commands are answered with `Unavailable` and
nothing changes.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any, Final

import structlog

from actors.filter_shard import shard_name, shard_of
from actors.store.handle import StoreHandle
from actors.user_store import (
    STORE_ERRORS,
    UserRecord,
    cache_settings,
    cached_settings,
    load_presets,
    load_user,
    save_settings,
    set_reachable,
)
from messages.billing import SubscriptionChanged
from messages.delivery import ChatBlocked
from messages.filters import FIELD_LABELS, FilterError, FilterSettings, format_value, preset_by_name
from messages.settings import FilterSettingsSection
from messages.tracking import TrackedBy
from messages.users import (
    ApplyPreset,
    GetSettings,
    GetStatus,
    GetTracked,
    Pause,
    RefreshUser,
    Register,
    Resume,
    SetFilter,
    SettingsRejected,
    SettingsUpdated,
    SettingsView,
    TrackedList,
    TrackedToken,
    Unavailable,
    UserSettingsChanged,
    UserStatus,
    setting_rows,
)
from runtime import ASK_ERRORS, Actor, MailboxSpec, NameNotFound, Ref

__all__ = ["UserActor", "user_name"]

log = structlog.get_logger(__name__)

MULTIPLIERS: Final = "multipliers"
"""Who answers /tracked (`TrackedBy`)."""


def user_name(chat_id: int) -> str:
    return f"user:{chat_id}"


class UserActor(Actor):
    """See the module docs. ``initial`` is the record the directory loaded in bulk; it is
    used by the first incarnation only (a restarted one reloads, settings may have changed).
    """

    mailbox = MailboxSpec(capacity=500)

    def __init__(
        self,
        user_id: int,
        store: StoreHandle,
        config: FilterSettingsSection | None = None,
        initial: UserRecord | None = None,
    ) -> None:
        self.user_id = user_id
        self.store = store
        self.config = config or FilterSettingsSection()
        self.initial = initial
        self.record = initial or UserRecord(chat_id=user_id)
        self._shard: Ref | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def started(self) -> None:
        if self.initial is None or self.ctx.incarnation > 1:
            await self._reload(fallback=True)
        await self._push()

    async def _reload(self, *, fallback: bool = False) -> None:
        """Read the user from PostgreSQL; on a restart during an outage fall back to the
        Redis settings cache and the last known standing."""
        now = self.ctx.clock.wall()
        try:
            record = await load_user(self.store.pool(), self.user_id, now)
        except STORE_ERRORS:
            if not fallback:
                raise
            record = None
            try:
                cached = await cached_settings(self.store.redis(), self.user_id)
            except STORE_ERRORS:
                cached = None
            if cached is None and self.initial is None:
                raise
            if cached is not None:
                self.record = self.record.with_settings(*cached)
            log.warning("user_reload_degraded", user_id=self.user_id)
            return
        if record is None:
            record = UserRecord(chat_id=self.user_id, reachable=False)
        self.record = record
        with contextlib.suppress(*STORE_ERRORS):
            await cache_settings(
                self.store.redis(), self.user_id, record.settings, record.settings_version
            )

    def _active(self, now: float) -> bool:
        """May this user receive alerts at all (paused aside)?"""
        record = self.record
        return record.reachable and not record.locked and record.subscribed(now)

    async def _push(self) -> None:
        """Tell the shard this user's row (settings and whether alerts may go out)."""
        active = self._active(self.ctx.clock.wall())
        shard = self._shard
        if shard is None or not shard.alive:
            try:
                shard = self._shard = self.ctx.lookup(
                    shard_name(shard_of(self.user_id, self.config.shards))
                )
            except NameNotFound:
                log.error("user_no_shard", user_id=self.user_id)
                return
        await shard.tell(
            UserSettingsChanged(
                user_id=self.user_id,
                settings=self.record.settings,
                active=active,
                until=self.record.subscribed_until or 0.0,
            )
        )

    # -- messages ------------------------------------------------------------------------

    async def receive(self, message: Any) -> Any:
        try:
            return await self._command(message)
        except STORE_ERRORS as exc:
            log.warning(
                "user_command_store_error",
                user_id=self.user_id,
                command=type(message).__name__,
                error=repr(exc)[:200],
            )
            return Unavailable()

    async def _command(self, message: Any) -> Any:
        if isinstance(message, GetStatus):
            return self._status()
        if isinstance(message, GetSettings):
            settings = self.record.settings
            return SettingsView(
                chat_id=self.user_id, settings=settings, rows=setting_rows(settings)
            )
        if isinstance(message, SetFilter):
            try:
                new = self.record.settings.with_text(message.field, message.text)
            except FilterError as exc:
                return SettingsRejected(chat_id=self.user_id, field=exc.field, message=exc.message)
            label = FIELD_LABELS.get(message.field, message.field)
            shown = format_value(message.field, getattr(new, message.field))
            return await self._save(new, f"{label} is now {shown}.")
        if isinstance(message, ApplyPreset):
            try:
                presets = await load_presets(self.store.pool())
                preset = preset_by_name(message.name, presets)
            except FilterError as exc:
                return SettingsRejected(chat_id=self.user_id, field=exc.field, message=exc.message)
            return await self._save(
                preset.apply_to(self.record.settings), f"Preset {preset.name} applied."
            )
        if isinstance(message, Pause):
            return await self._save(
                self.record.settings.with_changes(paused=True),
                "Alerts paused. Send /resume to get them again.",
            )
        if isinstance(message, Resume):
            text = "Alerts resumed."
            if not self.record.subscribed(self.ctx.clock.wall()):
                text += " You have no active subscription, so none will arrive until you subscribe."
            return await self._save(self.record.settings.with_changes(paused=False), text)
        if isinstance(message, GetTracked):
            return await self._tracked(message.limit)
        if isinstance(message, RefreshUser | SubscriptionChanged):
            await self._reload()
            await self._push()
            return self._status()
        if isinstance(message, Register):
            await self._reload()
            if not self.record.reachable:  # the directory's write was not seen: be sure
                await set_reachable(self.store.pool(), self.user_id, True)
                self.record = replace(self.record, reachable=True)
            await self._push()
            return self._status("Welcome back! Your settings are as you left them.")
        if isinstance(message, ChatBlocked):
            await self._blocked()
            return None
        log.warning("user_unexpected", user_id=self.user_id, message=type(message).__name__)
        return None

    async def _blocked(self) -> None:
        """The user blocked the bot: no more alerts until they send /start again."""
        self.record = replace(self.record, reachable=False)
        await self._push()
        await set_reachable(self.store.pool(), self.user_id, False)

    async def _save(self, new: FilterSettings, text: str) -> Any:
        old = self.record.settings
        changed = tuple(name for name in FIELD_LABELS if getattr(old, name) != getattr(new, name))
        if changed:
            now = self.ctx.clock.wall()
            version = await save_settings(self.store.pool(), self.user_id, old, new, now)
            self.record = self.record.with_settings(new, version)
            try:
                await cache_settings(self.store.redis(), self.user_id, new, version)
            except STORE_ERRORS:
                log.warning("user_settings_cache_failed", user_id=self.user_id)
            await self._push()
        else:
            text = "Nothing changed: " + text[:1].lower() + text[1:]
        return SettingsUpdated(
            chat_id=self.user_id,
            settings=new,
            rows=setting_rows(new),
            changed=changed,
            message=text,
        )

    def _status(self, message: str = "") -> UserStatus:
        record = self.record
        now = self.ctx.clock.wall()
        subscribed = record.subscribed(now)
        if not message:
            if record.locked:
                message = "Your account is locked. Please contact support."
            elif not subscribed:
                message = "You have no active subscription: subscribe to receive alerts."
            elif record.settings.paused:
                message = "Alerts are paused. Send /resume to get them again."
        return UserStatus(
            chat_id=self.user_id,
            reachable=record.reachable,
            locked=record.locked,
            paused=record.settings.paused,
            subscribed=subscribed,
            subscription_expires_at=record.subscribed_until if subscribed else None,
            settings=record.settings,
            rows=setting_rows(record.settings),
            message=message,
        )

    async def _tracked(self, limit: int) -> TrackedList | Unavailable:
        """The tokens the multiplier index follows for this user, newest first: it is told
        of every notification the gate releases (the gate keeps only who was told, by
        token, which cannot be listed by user)."""
        try:
            found = await self.ctx.lookup(MULTIPLIERS).ask(TrackedBy(self.user_id), timeout=5.0)
        except ASK_ERRORS as exc:
            log.warning("user_tracked_unavailable", user_id=self.user_id, error=repr(exc)[:200])
            return Unavailable()
        if not isinstance(found, list):
            log.warning("user_tracked_unexpected", user_id=self.user_id, reply=type(found).__name__)
            return Unavailable()
        tokens = [
            TrackedToken(
                token_key=line.token_key,
                chain=line.token_key.partition(":")[0],
                symbol=line.symbol,
                fdv_at_notify=line.fdv_at_notify,
                notified_at=line.notified_at,
            )
            for line in found[: max(0, limit)]
        ]
        return TrackedList(chat_id=self.user_id, tokens=tuple(tokens))

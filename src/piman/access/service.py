"""Accounts, API tokens and browser sessions: the access capability, built for the manager.

Theory of operation
-------------------
- A **login** checks a password (Argon2id, in a worker thread; at most two at once so a flood of
  logins cannot take the manager's memory) behind the :class:`~piman.access.throttle.LoginThrottle`
  (per name and per client address), then makes a session: a random id whose SHA-256 goes to the
  store and which the cookie carries signed with the manager's session key.
- A **session** is valid until it is idle for ``access.session_idle`` or ``access.session_max``
  after login, whichever comes first; its last use is written at most once a minute.
- An **API token** is looked up by its SHA-256; a revoked or expired token, or one whose user was
  removed, is no token. It acts with its user's role *now* (demote the user, the token follows).
  What a token resolved to is remembered for :data:`TOKEN_CACHE_SECONDS` (never past its expiry;
  at most :data:`TOKEN_CACHE_SIZE` tokens), so a script's burst of requests costs one lookup, not
  two store queries each; a revocation, a removed user or a new role made through this manager
  forgets them all at once, and one made through another manager sharing the store counts after
  at most that second.
- **Bootstrap**: when the store has no user at start, ``admin`` is created with the password in
  ``$PIMAN_ADMIN_PASSWORD`` or a random one written once to ``data_dir/initial-admin-password``
  (mode 0600); the log names the file, never the password.
- Every change to accounts goes to the audit log with the principal who made it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from piman.access.roles import Role, parse_role
from piman.access.secrets import (
    check_password_policy,
    digest,
    hash_password,
    new_password,
    new_session_id,
    new_token,
    sign,
    token_prefix,
    unsign,
    verify_password,
)
from piman.access.throttle import LoginThrottle
from piman.config.access import AccessSettings
from piman.context import AccessHandle, AppContext, Built, Principal
from piman.errors import AuthError, ConfigError, ConfigProblem, NotFoundError, RateLimited
from piman.fleet.ports import Repositories
from piman.fleet.records import SessionRecord, TokenRecord, UserRecord

__all__ = [
    "ADMIN_PASSWORD_ENV",
    "INITIAL_PASSWORD_FILE",
    "LOCAL_KEY_FILE",
    "LOCAL_PREFIX",
    "SESSION_KEY_FILE",
    "AccessService",
    "build",
    "check_user_name",
]

logger = logging.getLogger(__name__)

ADMIN_PASSWORD_ENV = "PIMAN_ADMIN_PASSWORD"
INITIAL_PASSWORD_FILE = "initial-admin-password"
SESSION_KEY_FILE = "session.key"
LOCAL_KEY_FILE = "local.key"  # root on the manager machine: the CLI without a token
LOCAL_PREFIX = "local."
TOUCH_EVERY = timedelta(seconds=60)  # how often a session's or token's last use is written
PRUNE_EVERY = 3600.0
TOKEN_CACHE_SECONDS = 1.0  # how long what a token resolved to is remembered (by self.clock)
TOKEN_CACHE_SIZE = 1024  # tokens remembered at most (least recently used forgotten first)
HASHING_AT_ONCE = 2
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-@")


def check_user_name(name: str) -> str:
    """A user name: 1–64 of lower-case letters, digits, ``. _ - @``; ValueError otherwise."""
    if not 1 <= len(name) <= 64 or not set(name) <= _NAME_CHARS:
        raise ValueError(
            f"{name!r} is not a user name (1-64 of lower-case letters, digits and . _ - @)"
        )
    return name


def _now() -> datetime:
    return datetime.now(UTC)


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 (never readable by others, whatever the umask)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def load_session_key(data_dir: Path, name: str = SESSION_KEY_FILE) -> bytes:
    """The manager's session key (``data_dir/session.key``), made on first use (0600)."""
    path = data_dir / name
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        try:
            _write_private(path, key)
        except FileExistsError:  # another process made it first
            key = path.read_bytes()
    if len(key) < 32:
        raise ConfigError(
            [ConfigProblem(str(path), "", "the session key is shorter than 32 bytes")]
        )
    return key


class AccessService:
    """The :class:`~piman.context.AccessHandle` and the service that prunes old sessions."""

    name = "access"

    def __init__(
        self,
        store: Repositories,
        settings: AccessSettings,
        *,
        data_dir: Path,
        session_key: bytes,
        local_key: bytes | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], datetime] = _now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.clock = clock
        self.monotonic = monotonic
        self.settings = settings
        self.data_dir = data_dir
        self.session_key = session_key
        self.local_key = local_key
        # Per name, and per client address (a classroom behind one NAT address shares that).
        self.by_name = LoginThrottle(settings.login_attempts, settings.login_window)
        self.by_address = LoginThrottle(4 * settings.login_attempts, settings.login_window)
        self._hashing = asyncio.Semaphore(HASHING_AT_ONCE)
        self._tokens: OrderedDict[str, tuple[datetime, Principal]] = OrderedDict()
        self._logins = (
            Counter(
                "piman_logins",
                "Password checks (web logins and CLI token requests) by result.",
                ["result"],
                registry=registry,
            )
            if registry is not None
            else None
        )

    # -- passwords -----------------------------------------------------------------------------

    async def _hash(self, password: str) -> str:
        check_password_policy(password)
        async with self._hashing:
            return await asyncio.to_thread(hash_password, password)

    async def check_password(self, name: str, password: str, *, client: str) -> UserRecord:
        """The user whose password this is; AuthError (one message for every failure)."""
        name_key, address_key = name.lower()[:64], client[:64]
        now = self.monotonic()
        waits = (
            self.by_name.retry_after([name_key], now),
            self.by_address.retry_after([address_key], now),
        )
        wait = max((w for w in waits if w is not None), default=None)
        if wait is not None:
            self._count("throttled")
            logger.warning("[login user=%s client=%s] refused: too many failures", name, client)
            raise RateLimited(f"too many failed logins; try again in {int(wait) + 1} s", wait)
        user = await self.store.users.get(name) if len(name) <= 64 else None
        async with self._hashing:
            ok = await asyncio.to_thread(
                verify_password, user.password_hash if user else None, password
            )
        if not ok or user is None:
            self.by_name.failed([name_key], self.monotonic())
            self.by_address.failed([address_key], self.monotonic())
            self._count("failed")
            logger.warning("[login user=%s client=%s] wrong name or password", name, client)
            raise AuthError("wrong user name or password")
        self.by_name.succeeded(name_key)
        self._count("ok")
        return user

    def _count(self, result: str) -> None:
        if self._logins is not None:
            self._logins.labels(result).inc()

    # -- sessions ------------------------------------------------------------------------------

    async def login(self, name: str, password: str, *, client: str) -> tuple[Principal, str]:
        user = await self.check_password(name, password, client=client)
        sid = new_session_id()
        now = self.clock()
        await self.store.sessions.add(
            SessionRecord(
                digest=digest(sid),
                user=user.name,
                created_at=now,
                last_seen_at=now,
                expires_at=now + timedelta(seconds=self.settings.session_max),
                address=client[:64],
            )
        )
        logger.info("[login user=%s client=%s] session started", user.name, client)
        return Principal(user.name, user.role, "session"), sign(sid, self.session_key)

    async def logout(self, cookie: str) -> None:
        sid = unsign(cookie, self.session_key)
        if sid is not None:
            await self.store.sessions.remove(digest(sid))

    async def from_session(self, cookie: str) -> Principal | None:
        sid = unsign(cookie, self.session_key)
        if sid is None:
            return None
        key = digest(sid)
        session = await self.store.sessions.get(key)
        if session is None:
            return None
        now = self.clock()
        idle = timedelta(seconds=self.settings.session_idle)
        if now >= session.expires_at or now - session.last_seen_at >= idle:
            await self.store.sessions.remove(key)
            return None
        user = await self.store.users.get(session.user)
        if user is None:
            return None
        if now - session.last_seen_at >= TOUCH_EVERY:
            await self.store.sessions.touch(key, now)
        return Principal(user.name, user.role, "session")

    # -- the manager machine's own CLI -----------------------------------------------------------

    def from_local(self, secret: str, user: str) -> Principal | None:
        """Root on the manager machine (it can read ``data_dir/local.key``) acts as an admin;
        the audit log names the local account the CLI says ran it (``local:root``)."""
        if self.local_key is None or not secret.startswith(LOCAL_PREFIX):
            return None
        expected = LOCAL_PREFIX + self.local_key.hex()
        if not hmac.compare_digest(secret.encode(), expected.encode()):
            return None
        who = user if re.fullmatch(r"[a-z0-9._ ()-]{1,64}", user or "") else "unknown"
        return Principal(f"local:{who}", Role.ADMIN.value, "local")

    # -- tokens --------------------------------------------------------------------------------

    async def from_token(self, token: str) -> Principal | None:
        prefix = token_prefix(token)
        if prefix is None:
            return None
        key = digest(token)
        now = self.clock()  # the clock of expiries and of the last-use writes, not monotonic
        cached = self._tokens.get(key)
        if cached is not None:
            if cached[0] > now:
                self._tokens.move_to_end(key)
                return cached[1]
            del self._tokens[key]
        record = await self.store.tokens.by_digest(key)
        if record is None or not record.usable(now):
            return None
        user = await self.store.users.get(record.user)
        if user is None:
            return None
        if record.last_used_at is None or now - record.last_used_at >= TOUCH_EVERY:
            await self.store.tokens.touch(record.id, now)
        principal = Principal(user.name, user.role, "token", record.prefix)
        until = now + timedelta(seconds=TOKEN_CACHE_SECONDS)
        if record.expires_at is not None:
            until = min(until, record.expires_at)
        self._tokens[key] = (until, principal)
        if len(self._tokens) > TOKEN_CACHE_SIZE:
            self._tokens.popitem(last=False)
        return principal

    async def tokens(self, user: str | None) -> list[TokenRecord]:
        return await self.store.tokens.list(user)

    async def create_token(
        self, user: str, name: str, expires_at: datetime | None
    ) -> tuple[TokenRecord, str]:
        if not 1 <= len(name) <= 128:
            raise ValueError("a token name has 1 to 128 characters")
        if expires_at is not None and expires_at <= self.clock():
            raise ValueError("the expiry is in the past")
        made = new_token()
        record = await self.store.tokens.add(user, name, made.prefix, made.digest, expires_at)
        return record, made.token

    async def revoke_token(self, token_id: int, *, user: str | None) -> TokenRecord:
        revoked = await self.store.tokens.revoke(token_id, self.clock(), user=user)
        self._tokens.clear()
        return revoked

    # -- users ---------------------------------------------------------------------------------

    async def users(self) -> list[UserRecord]:
        return await self.store.users.list()

    async def add_user(self, name: str, role: str, password: str) -> UserRecord:
        check_user_name(name)
        parsed = parse_role(role)
        return await self.store.users.add(name, parsed.value, await self._hash(password))

    async def remove_user(self, name: str) -> None:
        await self.store.users.remove(name)
        self._tokens.clear()

    async def set_role(self, name: str, role: str) -> UserRecord:
        changed = await self.store.users.set_role(name, parse_role(role).value)
        self._tokens.clear()
        return changed

    async def set_email(self, name: str, email: str | None) -> UserRecord:
        """Set (or with None, clear) a user's e-mail address; ValueError for a malformed one."""
        if email is not None:
            email = email.strip()
            if not re.fullmatch(
                r"[^@\s,;<>?&\"']{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,63}", email
            ):
                raise ValueError(f"{email!r} is not an e-mail address (expected e.g. ada@lab.org)")
        return await self.store.users.set_email(name, email)

    async def set_password(self, name: str, password: str) -> UserRecord:
        if await self.store.users.get(name) is None:
            raise NotFoundError(f"no user named {name!r}")
        return await self.store.users.set_password(name, await self._hash(password))

    # -- start and upkeep ----------------------------------------------------------------------

    async def bootstrap(self) -> None:
        """Create ``admin`` when the store has no user (see the module's docstring)."""
        if await self.store.users.count():
            return
        given = os.environ.get(ADMIN_PASSWORD_ENV)
        password = given or new_password()
        await self.add_user("admin", Role.ADMIN.value, password)
        await self.store.audit.add("manager", "user.add", "admin", "ok", "first start: role admin")
        if given:
            logger.info("created user admin with the password from $%s", ADMIN_PASSWORD_ENV)
            return
        path = self.data_dir / INITIAL_PASSWORD_FILE
        path.unlink(missing_ok=True)
        _write_private(path, (password + "\n").encode())
        logger.warning(
            "created user admin; its password is in %s (mode 0600): log in, change it with "
            "`piman user passwd admin`, then delete the file",
            path,
        )

    async def serve(self) -> None:
        while True:
            now = self.clock()
            idle = now - timedelta(seconds=self.settings.session_idle)
            dropped = await self.store.sessions.prune(idle, now)
            if dropped:
                logger.info("access: %d ended session(s) removed", dropped)
            await asyncio.sleep(PRUNE_EVERY)


def build(ctx: AppContext) -> Built[AccessHandle]:
    """Accounts are always on: the HTTP API refuses everything but login without them."""
    data_dir = ctx.config.manager.data_dir
    service = AccessService(
        ctx.store,
        ctx.config.access,
        data_dir=data_dir,
        session_key=load_session_key(data_dir),
        local_key=load_session_key(data_dir, LOCAL_KEY_FILE),
        registry=ctx.metrics,
    )
    return Built(service, (service,), startup=(service.bootstrap,))

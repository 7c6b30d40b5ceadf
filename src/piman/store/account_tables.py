"""Accounts: users, API tokens and browser sessions (tables and their repositories).

Nothing here can be used to log in: a user row holds an Argon2id hash, a token row the SHA-256
of the token (and a short visible prefix), a session row the SHA-256 of the session id.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from piman.errors import NotFoundError, StoreError
from piman.fleet.records import SessionRecord, TokenRecord, UserRecord
from piman.store.repositories import SessionFactory, utcnow
from piman.store.tables import Base, UtcDateTime

__all__ = [
    "SessionRepository",
    "SessionRow",
    "TokenRepository",
    "TokenRow",
    "UserRepository",
    "UserRow",
]


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class TokenRow(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class SessionRow(Base):
    __tablename__ = "web_sessions"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    address: Mapped[str | None] = mapped_column(String(64))


def _user(row: UserRow) -> UserRecord:
    return UserRecord(
        name=row.name,
        role=row.role,
        password_hash=row.password_hash,
        created_at=row.created_at,
        updated_at=row.updated_at,
        email=row.email,
    )


def _token(row: TokenRow, user: str) -> TokenRecord:
    return TokenRecord(
        id=row.id,
        user=user,
        name=row.name,
        prefix=row.prefix,
        digest=row.digest,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


async def _user_row(s: AsyncSession, name: str) -> UserRow:
    row = await s.scalar(select(UserRow).where(UserRow.name == name))
    if row is None:
        raise NotFoundError(f"no user named {name!r}")
    return row


class UserRepository:
    def __init__(self, session: SessionFactory) -> None:
        self._session = session

    async def list(self) -> list[UserRecord]:
        async with self._session() as s:
            return [_user(r) for r in (await s.scalars(select(UserRow).order_by(UserRow.name)))]

    async def get(self, name: str) -> UserRecord | None:
        async with self._session() as s:
            row = await s.scalar(select(UserRow).where(UserRow.name == name))
            return None if row is None else _user(row)

    async def count(self) -> int:
        async with self._session() as s:
            return int(await s.scalar(select(func.count()).select_from(UserRow)) or 0)

    async def add(self, name: str, role: str, password_hash: str) -> UserRecord:
        now = utcnow()
        try:
            async with self._session() as s:
                row = UserRow(
                    name=name,
                    role=role,
                    password_hash=password_hash,
                    created_at=now,
                    updated_at=now,
                )
                s.add(row)
                await s.flush()
                return _user(row)
        except StoreError as err:
            if isinstance(err.__cause__, IntegrityError):
                raise StoreError(f"a user named {name!r} exists already") from None
            raise

    async def set_role(self, name: str, role: str) -> UserRecord:
        async with self._session() as s:
            row = await _user_row(s, name)
            row.role = role
            row.updated_at = utcnow()
            return _user(row)

    async def set_email(self, name: str, email: str | None) -> UserRecord:
        async with self._session() as s:
            row = await _user_row(s, name)
            row.email = email
            row.updated_at = utcnow()
            return _user(row)

    async def set_password(self, name: str, password_hash: str) -> UserRecord:
        async with self._session() as s:
            row = await _user_row(s, name)
            row.password_hash = password_hash
            row.updated_at = utcnow()
            await s.execute(delete(SessionRow).where(SessionRow.user_id == row.id))
            return _user(row)

    async def remove(self, name: str) -> None:
        async with self._session() as s:
            row = await _user_row(s, name)
            await s.execute(delete(SessionRow).where(SessionRow.user_id == row.id))
            await s.execute(delete(TokenRow).where(TokenRow.user_id == row.id))
            await s.delete(row)


class TokenRepository:
    def __init__(self, session: SessionFactory) -> None:
        self._session = session

    async def add(
        self, user: str, name: str, prefix: str, digest: str, expires_at: datetime | None
    ) -> TokenRecord:
        async with self._session() as s:
            owner = await _user_row(s, user)
            row = TokenRow(
                user_id=owner.id,
                name=name,
                prefix=prefix,
                digest=digest,
                created_at=utcnow(),
                expires_at=expires_at,
            )
            s.add(row)
            await s.flush()
            return _token(row, owner.name)

    async def by_digest(self, digest: str) -> TokenRecord | None:
        async with self._session() as s:
            found = (
                await s.execute(
                    select(TokenRow, UserRow.name)
                    .join(UserRow, TokenRow.user_id == UserRow.id)
                    .where(TokenRow.digest == digest)
                )
            ).first()
            return None if found is None else _token(found[0], found[1])

    async def list(self, user: str | None = None) -> list[TokenRecord]:
        query = (
            select(TokenRow, UserRow.name)
            .join(UserRow, TokenRow.user_id == UserRow.id)
            .order_by(TokenRow.id.desc())
        )
        if user is not None:
            query = query.where(UserRow.name == user)
        async with self._session() as s:
            return [_token(row, name) for row, name in (await s.execute(query)).all()]

    async def revoke(self, token_id: int, at: datetime, *, user: str | None = None) -> TokenRecord:
        query = (
            select(TokenRow, UserRow.name)
            .join(UserRow, TokenRow.user_id == UserRow.id)
            .where(TokenRow.id == token_id)
        )
        if user is not None:
            query = query.where(UserRow.name == user)
        async with self._session() as s:
            found = (await s.execute(query)).first()
            if found is None:
                raise NotFoundError(f"no token with id {token_id}")
            row, owner = found
            if row.revoked_at is None:
                row.revoked_at = at
            return _token(row, owner)

    async def touch(self, token_id: int, at: datetime) -> None:
        async with self._session() as s:
            await s.execute(update(TokenRow).where(TokenRow.id == token_id).values(last_used_at=at))


class SessionRepository:
    def __init__(self, session: SessionFactory) -> None:
        self._session = session

    async def add(self, record: SessionRecord) -> None:
        async with self._session() as s:
            owner = await _user_row(s, record.user)
            s.add(
                SessionRow(
                    digest=record.digest,
                    user_id=owner.id,
                    created_at=record.created_at,
                    last_seen_at=record.last_seen_at,
                    expires_at=record.expires_at,
                    address=record.address,
                )
            )

    async def get(self, digest: str) -> SessionRecord | None:
        async with self._session() as s:
            found = (
                await s.execute(
                    select(SessionRow, UserRow.name)
                    .join(UserRow, SessionRow.user_id == UserRow.id)
                    .where(SessionRow.digest == digest)
                )
            ).first()
        if found is None:
            return None
        row, user = found
        return SessionRecord(
            digest=row.digest,
            user=user,
            created_at=row.created_at,
            last_seen_at=row.last_seen_at,
            expires_at=row.expires_at,
            address=row.address,
        )

    async def touch(self, digest: str, at: datetime) -> None:
        async with self._session() as s:
            await s.execute(
                update(SessionRow).where(SessionRow.digest == digest).values(last_seen_at=at)
            )

    async def remove(self, digest: str) -> None:
        async with self._session() as s:
            await s.execute(delete(SessionRow).where(SessionRow.digest == digest))

    async def prune(self, idle_before: datetime, now: datetime) -> int:
        async with self._session() as s:
            result = await s.execute(
                delete(SessionRow).where(
                    or_(SessionRow.last_seen_at < idle_before, SessionRow.expires_at <= now)
                )
            )
            return int(getattr(result, "rowcount", 0) or 0)

"""Accounts, organizations and their access tokens: who may call, as whom.

An account is a user or an organization. Its id (``acct_...``) is stable and is what predictions and
files record as their owner; its name is unique (case-insensitively) and is its namespace for models
(``alice/sdxl``). Tokens belong to user accounts, several to an account: each has an id (``tok_...``), a
name, a role, and its created, last-used and revoked times; its text is shown once and kept only as a
SHA-256 hash. An organization has user accounts as members; a model under its name is shared by them.

Everything is kept in SQLite (``accounts.sqlite3`` in the home) and in memory, where each call is
authenticated without touching the disk: a revoked token is refused from the next call on. Last-used
times reach the disk at most every ``USAGE_WRITE_S`` per token, and at close.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gateway.auth import ROLE_RULE, TOKEN_PREFIX, Principal, Role, hash_token, parse_authorization
from warmfleet.errors import AlreadyExists, InvalidInput, NotFound, PermissionDenied, Unauthenticated

NAME_RULE = ("must be 1 to 64 characters of letters, digits, '_', '.' and '-', beginning with a letter or "
             "digit")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
USER, ORGANIZATION = "user", "organization"
ADMIN_ACCOUNT = "admin"  # the account `warmfleet up` makes for the operator's first token
USAGE_WRITE_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    kind TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    organization TEXT NOT NULL,
    account TEXT NOT NULL,
    PRIMARY KEY (organization, account)
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    account TEXT NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_used_at REAL,
    revoked_at REAL
);
"""


@dataclass(frozen=True)
class Account:
    """A user or an organization."""

    id: str
    name: str
    kind: str  # USER or ORGANIZATION
    created_at: float


@dataclass(frozen=True)
class TokenInfo:
    """What is known of a token, less its text."""

    id: str
    account: str  # the id of the account it belongs to
    name: str
    role: Role
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None


def check_name(field: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(field, NAME_RULE)


def parse_role(role: str) -> Role:
    try:
        return Role(role or Role.USER.value)
    except ValueError:
        raise InvalidInput("role", ROLE_RULE) from None


class _Db:
    """The SQLite file, written on one thread of its own (``run``) so that the event loop never waits on
    the disk."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="wf-accounts")
        self._db: sqlite3.Connection | None = None

    async def run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if self._db is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self._path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        with self._db:
            return fn(self._db)

    async def close(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None
        await asyncio.get_running_loop().run_in_executor(self._thread, close)
        self._thread.shutdown(wait=False)


class Accounts:
    """The accounts, memberships and tokens, in memory and in ``path``; ``open`` before use."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self._db = _Db(path)
        self._clock = clock
        self._accounts: dict[str, Account] = {}  # by id
        self._by_name: dict[str, Account] = {}  # by name, lower-cased
        self._members: dict[str, set[str]] = {}  # organization id -> member account ids
        self._tokens: dict[str, TokenInfo] = {}  # by id
        self._by_hash: dict[str, str] = {}  # token hash -> token id
        self._principals: dict[str, Principal] = {}  # by token id, dropped when memberships change
        self._last_used: dict[str, float] = {}  # token id -> when it last authenticated, in this process
        self._usage_written: dict[str, float] = {}  # token id -> when its last-used time was last written
        self._writes: set[asyncio.Task] = set()  # last-used writes under way
        self._closed = False

    async def open(self, legacy_tokens: Iterable[tuple[str, str, str]] = ()) -> None:
        """Read everything into memory. ``legacy_tokens`` (hash, name, role), the tokens of a home from
        before accounts, become tokens of an account of that name, once."""
        accounts, members, tokens = await self._db.run(lambda db: (
            db.execute("SELECT id, name, kind, created_at FROM accounts").fetchall(),
            db.execute("SELECT organization, account FROM members").fetchall(),
            db.execute("SELECT id, account, name, role, created_at, last_used_at, revoked_at, hash "
                       "FROM tokens ORDER BY rowid").fetchall()))
        for row in accounts:
            self._remember(Account(*row))
        for org, member in members:
            self._members.setdefault(org, set()).add(member)
        for *fields, digest in tokens:
            info = TokenInfo(fields[0], fields[1], fields[2], Role(fields[3]), *fields[4:])
            self._tokens[info.id], self._by_hash[digest] = info, info.id
        if not self._tokens:
            for digest, name, role in legacy_tokens:
                account = self._by_name.get(name.lower()) or await self._add_account(name, USER)
                await self._add_token(account, "imported", Role(role), digest)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*self._writes)
        await self._write_usage(list(self._tokens))
        await self._db.close()

    # Who is calling

    def authenticate(self, header: str | None) -> Principal:
        """The caller of an ``authorization`` value; ``Unauthenticated`` for an unknown or revoked token."""
        token_id = self._by_hash.get(hash_token(parse_authorization(header)))
        if token_id is None:
            raise Unauthenticated("unknown token")
        info = self._tokens[token_id]
        if info.revoked_at is not None:
            raise Unauthenticated(f"token {info.id} ({info.name!r}) was revoked")
        self._used(info)
        principal = self._principals.get(token_id)
        if principal is None:
            principal = self._principals[token_id] = self._principal(self._accounts[info.account], info)
        return principal

    def link_principal(self, account_id: str) -> Principal:
        """The principal a signed link acts as: the account that owns what it opens, as a plain user."""
        account = self._accounts.get(account_id)
        if account is None:
            raise NotFound(f"account {account_id!r} not found")
        return self._principal(account, None)

    def _principal(self, account: Account, info: TokenInfo | None) -> Principal:
        orgs = frozenset(self._accounts[org].name for org, members in self._members.items()
                         if account.id in members)
        return Principal(account.id, account.name, info.role if info else Role.USER, orgs,
                         info.id if info else "")

    def has_admin(self) -> bool:
        return any(t.role is Role.ADMIN and t.revoked_at is None for t in self._tokens.values())

    def _used(self, info: TokenInfo) -> None:
        now = self._last_used[info.id] = self._clock()  # a dict write: this runs on every call
        if now - self._usage_written.get(info.id, 0.0) >= USAGE_WRITE_S and not self._closed:
            self._usage_written[info.id] = now
            try:
                task = asyncio.get_running_loop().create_task(self._write_usage([info.id]))
            except RuntimeError:  # no loop (a check outside the gateway): written at close
                return
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _write_usage(self, token_ids: list[str]) -> None:
        """Write the last-used times of ``token_ids`` as they are when the write runs."""
        rows = [(self._last_used[t], t) for t in token_ids if t in self._last_used]
        if rows:
            await self._db.run(lambda db: db.executemany(
                "UPDATE tokens SET last_used_at = ? WHERE id = ?", rows))

    # Accounts and organizations

    def account(self, name: str) -> Account:
        found = self._by_name.get(name.lower()) if isinstance(name, str) else None
        if found is None:
            raise NotFound(f"account {name!r} not found")
        return found

    def account_of(self, caller: Principal) -> Account:
        return self._accounts[caller.account]

    def account_by_id(self, account_id: str) -> Account:
        return self._accounts[account_id]

    def accounts(self, caller: Principal) -> list[Account]:
        _admin(caller, "listing accounts")
        return sorted(self._accounts.values(), key=lambda a: a.name.lower())

    def members(self, caller: Principal, organization: str) -> list[Account]:
        org = self._organization(organization)
        if not caller.is_admin and caller.account not in self._members.get(org.id, set()):
            raise NotFound(f"account {organization!r} not found")
        return sorted((self._accounts[m] for m in self._members.get(org.id, set())), key=lambda a: a.name)

    async def create_account(self, caller: Principal, name: str, kind: str = USER) -> Account:
        _admin(caller, "creating accounts")
        check_name("name", name)
        if kind not in (USER, ORGANIZATION):
            raise InvalidInput("kind", f"must be {USER!r} or {ORGANIZATION!r}")
        if name.lower() in self._by_name:
            raise AlreadyExists(f"an account named {self._by_name[name.lower()].name!r} exists")
        return await self._add_account(name, kind)

    async def set_member(self, caller: Principal, organization: str, member: str, is_member: bool) -> None:
        """Add ``member`` (a user account) to ``organization``, or take it out."""
        _admin(caller, "changing an organization's members")
        org, account = self._organization(organization), self.account(member)
        if account.kind != USER:
            raise InvalidInput("member", f"{account.name!r} is an organization; members are user accounts")
        if is_member:
            await self._db.run(lambda db: db.execute(
                "INSERT OR IGNORE INTO members (organization, account) VALUES (?, ?)", (org.id, account.id)))
            self._members.setdefault(org.id, set()).add(account.id)
        else:
            await self._db.run(lambda db: db.execute(
                "DELETE FROM members WHERE organization = ? AND account = ?", (org.id, account.id)))
            self._members.get(org.id, set()).discard(account.id)
        self._principals.clear()

    def _organization(self, name: str) -> Account:
        org = self.account(name)
        if org.kind != ORGANIZATION:
            raise InvalidInput("organization", f"{org.name!r} is a user account, not an organization")
        return org

    async def _add_account(self, name: str, kind: str) -> Account:
        account = Account("acct_" + secrets.token_hex(8), name, kind, self._clock())
        await self._db.run(lambda db: db.execute(
            "INSERT INTO accounts (id, name, kind, created_at) VALUES (?, ?, ?, ?)",
            (account.id, account.name, account.kind, account.created_at)))
        self._remember(account)
        return account

    def _remember(self, account: Account) -> None:
        self._accounts[account.id] = account
        self._by_name[account.name.lower()] = account

    # Tokens

    async def create_token(self, caller: Principal, account: str, name: str, role: str = "user"
                           ) -> tuple[TokenInfo, str]:
        """A new token of ``account`` (an admin's for any account; a user's for its own, with a role no
        higher than its own); returns it with its text, which is not kept."""
        owner = self._visible_account(caller, account)
        check_name("name", name)
        parsed = parse_role(role)
        if owner.kind != USER:
            raise InvalidInput("account", f"{owner.name!r} is an organization: tokens belong to its members")
        if parsed.rank > caller.role.rank:
            raise PermissionDenied(f"a {caller.role.value} token cannot create a {parsed.value} token")
        text = TOKEN_PREFIX + secrets.token_urlsafe(32)
        return await self._add_token(owner, name, parsed, hash_token(text)), text

    def tokens(self, caller: Principal, account: str = "") -> list[TokenInfo]:
        """The tokens of ``account`` ("" : the caller's own; every account's for an admin)."""
        if not account and caller.is_admin:
            found = list(self._tokens.values())
        else:
            owner = self._visible_account(caller, account) if account else self.account_of(caller)
            found = [t for t in self._tokens.values() if t.account == owner.id]
        found = [replace(t, last_used_at=self._last_used.get(t.id, t.last_used_at)) for t in found]
        return sorted(found, key=lambda t: t.created_at)  # stable: tokens of one instant in the order made

    async def revoke_token(self, caller: Principal, token_id: str) -> TokenInfo:
        """Revoke a token (one of the caller's own, or any for an admin): refused from the next call."""
        info = self._tokens.get(token_id) if isinstance(token_id, str) else None
        if info is None or not caller.owns(info.account):
            raise NotFound(f"token {token_id!r} not found")
        if info.revoked_at is None:
            info = replace(info, revoked_at=self._clock())
            await self._db.run(lambda db: db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE id = ?", (info.revoked_at, info.id)))
            self._tokens[info.id] = info
            self._principals.pop(info.id, None)
        return info

    async def bootstrap_admin(self) -> str:
        """A new admin token of the operator's account (``ADMIN_ACCOUNT``, made if missing); its text."""
        account = self._by_name.get(ADMIN_ACCOUNT) or await self._add_account(ADMIN_ACCOUNT, USER)
        text = TOKEN_PREFIX + secrets.token_urlsafe(32)
        await self._add_token(account, "admin", Role.ADMIN, hash_token(text))
        return text

    def _visible_account(self, caller: Principal, name: str) -> Account:
        account = self.account(name)
        if not caller.owns(account.id):
            raise NotFound(f"account {name!r} not found")
        return account

    async def _add_token(self, account: Account, name: str, role: Role, digest: str) -> TokenInfo:
        info = TokenInfo("tok_" + secrets.token_hex(8), account.id, name, role, self._clock())
        await self._db.run(lambda db: db.execute(
            "INSERT INTO tokens (id, hash, account, name, role, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (info.id, digest, info.account, info.name, info.role.value, info.created_at)))
        self._tokens[info.id], self._by_hash[digest] = info, info.id
        return info


def _admin(caller: Principal, what: str) -> None:
    if not caller.is_admin:
        raise PermissionDenied(f"{what} needs an admin token")

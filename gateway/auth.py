"""Bearer-token auth with two roles. Tokens are stored as SHA-256 hashes; the text is shown once."""

from __future__ import annotations

import contextvars
import enum
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

from gateway.store import PredictionStore
from warmfleet.errors import InvalidInput, PermissionDenied, Unauthenticated

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
TOKEN_PREFIX = "wf_"


class Role(str, enum.Enum):
    USER = "user"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's owner name and role."""

    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def may_see(self, spec: Any) -> bool:
        """Whether this caller may see (and run) the model a route serves: a public one, one of theirs,
        or any as an admin."""
        return self.is_admin or spec.visibility != "private" or spec.owner == self.name


# The caller of the RPC being served; set by the auth interceptor for the duration of the call.
current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("current_principal")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_authorization(header: str | None) -> str:
    """The token in an ``authorization`` value: ``Bearer <token>`` (or ``Token <token>``)."""
    if not header:
        raise Unauthenticated("missing authorization: send 'authorization: Bearer <token>'")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() not in ("bearer", "token") or not token.strip():
        raise Unauthenticated("malformed authorization: expected 'Bearer <token>'")
    return token.strip()


class TokenRegistry:
    """Known tokens, by hash, kept in memory and persisted in the store."""

    def __init__(self, store: PredictionStore) -> None:
        self._store = store
        self._by_hash: dict[str, Principal] = {}

    async def load(self) -> None:
        self._by_hash = {h: Principal(name, Role(role)) for h, name, role in await self._store.tokens()}

    def has_admin(self) -> bool:
        return any(p.is_admin for p in self._by_hash.values())

    async def create(self, name: str, role: str = "user") -> str:
        """Create a token for ``name`` with ``role``; returns its text (stored only hashed)."""
        if not _NAME.match(name):
            raise InvalidInput("name", "must be 1 to 64 characters of letters, digits, '_', '.', '-'")
        try:
            parsed = Role(role or "user")
        except ValueError:
            raise InvalidInput("role", "must be 'user' or 'admin'") from None
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = hash_token(token)
        await self._store.add_token(digest, name, parsed.value)
        self._by_hash[digest] = Principal(name, parsed)
        return token

    def authenticate(self, header: str | None) -> Principal:
        principal = self._by_hash.get(hash_token(parse_authorization(header)))
        if principal is None:
            raise Unauthenticated("unknown token")
        return principal


def require_admin() -> Principal:
    principal = current_principal.get()
    if not principal.is_admin:
        raise PermissionDenied("this call needs an admin token")
    return principal

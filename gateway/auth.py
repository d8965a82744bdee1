"""Who is calling: the principal of a call (an account and a role), and how a bearer token is read.

The accounts and their tokens live in ``gateway.accounts``; this module is what every edge and service
needs of them: ``Principal``, the roles, ``current_principal`` and the checks of what a caller may do.
"""

from __future__ import annotations

import contextvars
import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any

from warmfleet.errors import PermissionDenied, Unauthenticated

TOKEN_PREFIX = "wf_"


class Role(str, enum.Enum):
    """What a token may do. ``user``: its account's own predictions, files and models; ``priority``: a
    user whose predictions may ask for a priority above the default; ``admin``: everything."""

    USER = "user"
    PRIORITY = "priority"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]


_RANKS = {Role.USER: 0, Role.PRIORITY: 1, Role.ADMIN: 2}
ROLE_RULE = "must be 'user', 'priority' or 'admin'"


@dataclass(frozen=True)
class Principal:
    """Who is calling: an account (its stable id, which predictions and files record as their owner, and
    its name, its namespace for models), the token's role, the organizations the account is a member of
    (their names: namespaces it shares) and the token's id ("" for a signed link)."""

    account: str
    name: str
    role: Role
    organizations: frozenset[str] = field(default_factory=frozenset)
    token_id: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def may_prioritise(self) -> bool:
        """Whether its predictions may ask for a priority above the default."""
        return self.role.rank >= Role.PRIORITY.rank

    @property
    def namespaces(self) -> frozenset[str]:
        """The model namespaces it may use as its own: its account's name and its organizations'."""
        return self.organizations | {self.name}

    def owns(self, owner: str) -> bool:
        """Whether a prediction or file whose owner is the account id ``owner`` is this caller's (or an
        admin's to see)."""
        return self.is_admin or owner == self.account

    def may_see(self, spec: Any) -> bool:
        """Whether this caller may see (and run) the model a route serves: a public one, one of its
        namespaces (its own or an organization's it is a member of), or any as an admin."""
        return self.is_admin or spec.visibility != "private" or spec.owner in self.namespaces

    def may_write(self, namespace: str) -> bool:
        """Whether it may create or change models under ``namespace``."""
        return self.is_admin or namespace in self.namespaces


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


def require_admin() -> Principal:
    principal = current_principal.get()
    if not principal.is_admin:
        raise PermissionDenied("this call needs an admin token")
    return principal

"""Signed links: URLs that clients follow without the API token (a prediction's ``urls.get`` and
``urls.stream``, its output files, a file's ``urls.get`` and ``urls.download``), as Replicate's stream and
delivery URLs work.

A link is its path and three query parameters: ``owner`` (the account id of whoever owns what it opens),
``expires`` (unix seconds) and ``signature``: hex HMAC-SHA256, under the gateway's key, of the path, the
owner and the expiry. The signature covers the path alone (not the method, host or other parameters), so
a link opens that one prediction's (or file's) URL and nothing else: not another prediction's, nor the
list. Whoever follows a valid link acts as the owner, as a plain user (``Accounts.link_principal``);
a link that does not match, or has expired, is refused with ``PermissionDenied`` (403).

The key is 32 random bytes, made on a gateway home's first start (``url_signing.key``, mode 0600): the
gateways that share one prediction store must share it too, so that each can open the others' links.
Pure code, with the clock passed in; the REST middleware (``gateway.rest.context``) calls ``owner_of``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import math
import os
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

from warmfleet.errors import PermissionDenied

KEY_FILE = "url_signing.key"
KEY_BYTES = 32
OWNER, EXPIRES, SIGNATURE = "owner", "expires", "signature"  # the query parameters of a signed link
LINK_METHODS = ("GET", "HEAD")  # a link reads; what changes state (cancel, delete) takes the token
_CONTEXT = "warmfleet signed link v1"  # a key used for anything else one day signs other messages

# How a response's links are written: (a link's path, its owner's account id) -> the path a client gets.
Sign = Callable[[str, str], str]


def unsigned(path: str, owner: str) -> str:
    """A link as it is, for the token alone to open (a REST context without a signer)."""
    return path


class UrlSigner:
    """Signs links with ``key`` and checks them against ``clock`` (unix seconds)."""

    def __init__(self, key: bytes, clock: Callable[[], float] = time.time) -> None:
        if len(key) < KEY_BYTES:
            raise ValueError(f"a URL signing key is at least {KEY_BYTES} bytes; this one is {len(key)}")
        self._key = key
        self._clock = clock

    def sign(self, path: str, owner: str, ttl_s: float) -> dict[str, str]:
        """The query parameters that let ``path`` be opened as ``owner`` (an account id) for ``ttl_s``
        from now (0 or less: a link already expired)."""
        expires = str(math.floor(self._clock() + ttl_s))
        return {OWNER: owner, EXPIRES: expires, SIGNATURE: self._mac(path, owner, expires)}

    def link(self, path: str, owner: str, ttl_s: float) -> str:
        """``path`` with its signature as the query (``path?owner=...&expires=...&signature=...``)."""
        return f"{path}?{urlencode(self.sign(path, owner, ttl_s))}"

    def links(self, ttl_s: float) -> Sign:
        """``link`` with ``ttl_s``: how one response writes its links."""
        return functools.partial(self.link, ttl_s=ttl_s)

    def verify(self, path: str, params: Mapping[str, str]) -> str:
        """The owner (account id) a link of ``path`` with query ``params`` opens as. ``PermissionDenied``
        when a parameter is missing, when the signature does not match (another path's link, a changed
        owner or expiry, another key) and when the link has expired. The signature is checked first, in
        constant time: a forged link learns nothing of what it would open."""
        owner, expires, signature = params.get(OWNER), params.get(EXPIRES), params.get(SIGNATURE)
        if owner is None or expires is None or signature is None:
            missing = [name for name, value in ((OWNER, owner), (EXPIRES, expires), (SIGNATURE, signature))
                       if value is None]
            raise PermissionDenied(f"the link is incomplete: it lacks {' and '.join(missing)}")
        expected = self._mac(path, owner, expires).encode()
        if not hmac.compare_digest(expected, signature.encode("utf-8", "replace")):
            raise PermissionDenied("the link's signature does not match")
        expiry = int(expires)  # ours, so whole seconds: the signature matched
        if self._clock() >= expiry:
            when = datetime.fromtimestamp(expiry, UTC).isoformat().replace("+00:00", "Z")
            raise PermissionDenied(f"the link expired at {when}; get the prediction or file again for a "
                                   "fresh link, or send the token")
        return owner

    def owner_of(self, method: str, path: str, params: Mapping[str, str]) -> str | None:
        """For a request that sends no token: the owner its signed link opens as (``verify``); None when
        it is no signed link (no ``signature`` parameter, or a method that changes state), for the token
        check to refuse."""
        if method not in LINK_METHODS or SIGNATURE not in params:
            return None
        return self.verify(path, params)

    def _mac(self, path: str, owner: str, expires: str) -> str:
        # A JSON array, not a joined string: no path or owner can be made to read as another's fields.
        message = json.dumps([_CONTEXT, path, owner, expires]).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()


# The key


def key_path(home: Path) -> Path:
    """Where a gateway home keeps its URL signing key (beside the webhook secret)."""
    return home / KEY_FILE


def load_key(path: Path) -> bytes:
    """The key in ``path`` (hex), made on first use: ``KEY_BYTES`` random bytes, mode 0600. Of two
    gateways on one home making it at once, one writes it and both read the same: it is written whole
    to a file of its own, then linked into place, which fails when one is there already."""
    try:
        return _decode_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(KEY_BYTES) + "\n")
    try:
        os.link(draft, path)
    except FileExistsError:
        pass  # another gateway's came first: use that one
    finally:
        draft.unlink()
    return _decode_key(path)


def _decode_key(path: Path) -> bytes:
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < KEY_BYTES:
        raise ValueError(f"{path} must hold a URL signing key: {KEY_BYTES} or more bytes, in hex; delete it "
                         "to make a new one (the links already given out then stop working)")
    return key

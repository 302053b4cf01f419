"""Who is asking: JWTs for sockets and the HTTP API, the service token for trusted backends.

Tokens are HMAC JWTs (HS256 unless `JWT_ALGORITHM` says otherwise) whose `sub` is the
user id as a string. The algorithm list is pinned (no `none`, no RS/HS confusion) and `exp`
and `sub` are required; a small leeway absorbs clock skew between the issuer and us.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from typing import Any

import jwt

log = logging.getLogger(__name__)

DEFAULT_TTL = 24 * 3600.0


def claimed_user_id(value: Any) -> str | None:
    """The handshake's `userId` as a string, for comparison with a JWT `sub` (clients send
    numbers or strings; `1` and `"1"` both match `sub` "1")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    return None


def user_id_of(sub: str | None) -> int | None:
    """A `sub` that is a user row number written canonically ("7", not "07" or "+7")."""
    if sub is None or not (sub.isascii() and sub.isdigit()) or len(sub) > 18:
        return None
    value = int(sub)
    return value if value > 0 and str(value) == sub else None


class TokenService:
    def __init__(self, secret: str, algorithm: str = "HS256", leeway: float = 10.0) -> None:
        self._secret = secret
        self.algorithm = algorithm
        self.leeway = leeway

    def issue(self, user_id: int, ttl: float = DEFAULT_TTL) -> str:
        now = dt.datetime.now(dt.UTC)
        claims = {"sub": str(user_id), "iat": now, "exp": now + dt.timedelta(seconds=ttl)}
        return jwt.encode(claims, self._secret, algorithm=self.algorithm)

    def subject(self, token: Any) -> str | None:
        """The token's `sub` when the token is valid, else None (the reason is logged)."""
        verified = self.verify(token)
        return verified[0] if verified is not None else None

    def verify(self, token: Any) -> tuple[str, float] | None:
        """``(sub, exp)`` of a valid token (`exp` in seconds since the epoch), else None."""
        if not isinstance(token, str) or not token or len(token) > 4096:
            return None
        try:
            claims = jwt.decode(token, self._secret, algorithms=[self.algorithm], leeway=self.leeway,
                                options={"require": ["exp", "sub"]})
        except jwt.InvalidTokenError as exc:
            log.info("token refused: %s", exc)
            return None
        sub, exp = claims.get("sub"), claims.get("exp")
        if not isinstance(sub, str) or isinstance(exp, bool) or not isinstance(exp, int | float):
            return None
        return sub, float(exp)

    def user_id(self, token: Any) -> int | None:
        """The user id a valid token is for."""
        return user_id_of(self.subject(token))


class ServiceToken:
    """The shared secret of trusted backends (`COUP_SERVICE_TOKEN`); None disables the service API."""

    def __init__(self, value: str | None) -> None:
        self._value = value

    @property
    def enabled(self) -> bool:
        return self._value is not None

    def matches(self, presented: str | None) -> bool:
        if self._value is None or presented is None:
            return False
        return secrets.compare_digest(presented.encode(), self._value.encode())


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Actor:
    """The authenticated user behind a socket or an HTTP request."""

    __slots__ = ("id", "name")

    def __init__(self, user_id: int, name: str) -> None:
        self.id = user_id
        self.name = name

    def __repr__(self) -> str:
        return f"<Actor {self.id} {self.name!r}>"

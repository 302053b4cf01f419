"""What a session remembers of the HTTP request that opened it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class HandshakeInfo:
    headers: Mapping[str, str]
    query: Mapping[str, str]
    address: str
    url: str
    secure: bool
    #: server time (seconds since the epoch) when the session opened
    issued: float
    #: whether the request came from another origin than the server's own
    xdomain: bool = False
    extra: dict[str, object] = field(default_factory=dict)

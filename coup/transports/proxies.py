"""Which forwarded headers to believe: only those set by proxies we were told to trust.

`X-Forwarded-For`, `X-Real-Ip` and `X-Forwarded-Proto` are plain request headers: any
client can send them, so believing them from anyone let a client choose the address our
logs and per-address limits see. `COUP_TRUSTED_PROXIES` lists the proxies (addresses or
networks) whose headers count, or ``*`` for "the immediate peer, whoever it is" (a PaaS
router that every connection passes through; the default on Heroku). Behind trusted
proxies the client is the right-most `X-Forwarded-For` hop that is not itself a trusted
proxy (with ``*``: the right-most hop, the one the router appended); `X-Real-Ip` counts
only when there is no `X-Forwarded-For`, because a router that appends to one passes the
other through unchanged.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Sequence

from tornado import httputil
from tornado.netutil import is_valid_ip

Header = Callable[[str], str | None]


class TrustedProxies:
    __slots__ = ("any", "networks")

    def __init__(self, entries: Sequence[str] = ()) -> None:
        self.any = "*" in entries
        self.networks = tuple(ipaddress.ip_network(e, strict=False) for e in entries if e != "*")

    def __bool__(self) -> bool:
        return self.any or bool(self.networks)

    def _listed(self, ip: str) -> bool:
        if not self.networks:  # no proxy listed (the default): nothing to parse, once per connection
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def client(self, peer: str, header: Header) -> tuple[str, str]:
        """The client's address and scheme (``http``/``https``) for a request from `peer`."""
        if not (self.any or self._listed(peer)):
            return peer, "http"
        ip = peer
        forwarded = header("X-Forwarded-For")
        if forwarded:
            for hop in reversed([h.strip() for h in forwarded.split(",")]):
                if not is_valid_ip(hop):
                    break
                ip = hop
                if self.any or not self._listed(hop):
                    break
        else:
            real = (header("X-Real-Ip") or "").strip()
            if is_valid_ip(real):
                ip = real
        scheme = "http"
        proto = header("X-Forwarded-Proto") or header("X-Scheme")
        if proto:
            last = proto.split(",")[-1].strip().lower()
            if last in ("http", "https"):
                scheme = last
        return ip, scheme


class ForwardedAdapter(httputil.HTTPMessageDelegate):
    """Tornado's ``xheaders`` with our rule: sets the request's `remote_ip` and `protocol`."""

    def __init__(self, delegate: httputil.HTTPMessageDelegate, connection: httputil.HTTPConnection,
                 proxies: TrustedProxies) -> None:
        self.delegate = delegate
        self.connection = connection
        self.proxies = proxies

    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        context = self.connection.context  # type: ignore[attr-defined]
        context.remote_ip, context.protocol = self.proxies.client(context._orig_remote_ip, headers.get)
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.delegate.finish()
        self._restore()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()
        self._restore()

    def _restore(self) -> None:
        context = self.connection.context  # type: ignore[attr-defined]
        context.remote_ip, context.protocol = context._orig_remote_ip, context._orig_protocol

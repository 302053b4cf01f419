"""Static files (the demo page) and the headers every HTTP answer carries.

The demo page's Content-Security-Policy used to be a ``<meta>`` tag only, which cannot
carry ``frame-ancestors`` (click-jacking); it is now a response header on every static
file, with ``X-Frame-Options`` for browsers that predate ``frame-ancestors``. Every answer,
API and polling included, gets ``X-Content-Type-Options: nosniff`` and no ``Server``
header (Tornado names itself and its version by default). SockJS's iframe page must stay
frameable, so framing is refused on static files only.
"""

from __future__ import annotations

from tornado import httputil
from tornado.web import HTTPError, OutputTransform, StaticFileHandler

#: what the demo page needs: its own scripts, styles and images, its own server over HTTP and
#: WebSocket, and form posts to itself (SockJS's jsonp transport sends through a hidden form);
#: the same as the page's ``<meta>`` policy, plus what a meta tag cannot say (frame-ancestors)
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; form-action 'self'; "
               "frame-ancestors 'none'")


class SecurityHeaders(OutputTransform):
    """Added to the application (`Application.add_transform`): runs on every response."""

    def transform_first_chunk(self, status_code: int, headers: httputil.HTTPHeaders, chunk: bytes,
                              finishing: bool) -> tuple[int, httputil.HTTPHeaders, bytes]:
        headers.pop("Server", None)
        headers["X-Content-Type-Options"] = "nosniff"
        return status_code, headers, chunk


class PageFileHandler(StaticFileHandler):
    """`StaticFileHandler` that refuses paths no file can have (NUL) with 400, not a 500,
    and sends the page's security policy."""

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", PAGE_POLICY)
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "same-origin")  # no-referrer would make form posts Origin: null

    def parse_url_path(self, url_path: str) -> str:
        if "\x00" in url_path:
            raise HTTPError(400, "a path with NUL")
        return super().parse_url_path(url_path)

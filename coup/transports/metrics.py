"""``GET /metrics``: the node's counters in the Prometheus text format.

Two ways to protect it (README, "Operations"): on the main port it answers only to
``Authorization: Bearer $COUP_METRICS_TOKEN``; on ``COUP_METRICS_PORT`` it answers anyone who
can reach that port (meant for a private network the scraper shares with the nodes).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from tornado.web import Application, RequestHandler

from coup.metrics import MetricsExport


class MetricsHandler(RequestHandler):
    def initialize(self, export: MetricsExport, token: str | None) -> None:
        self.export = export
        self.token = token

    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        if self.token is not None:
            scheme, _, given = self.request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), self.token.encode()):
                self.set_header("WWW-Authenticate", "Bearer")
                self.set_status(401)
                self.finish({"error": {"code": "UNAUTHORIZED", "message": "A valid metrics token is required"}})
                return
        self.set_header("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)
        self.finish(self.export.text())


def metrics_rule(export: MetricsExport, token: str | None) -> tuple[str, type[MetricsHandler], dict[str, object]]:
    return (r"/metrics", MetricsHandler, {"export": export, "token": token})


def metrics_application(export: MetricsExport, log_function: Callable[[Any], None]) -> Application:
    """The metrics port's application: ``/metrics`` and nothing else, no token."""
    return Application([metrics_rule(export, None)], log_function=log_function)

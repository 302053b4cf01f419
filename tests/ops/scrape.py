"""Read a node's `/metrics` with prometheus_client's own parser of the text format."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient


class Scrape:
    """Every sample of one scrape: ``scrape["coup_connects_total", {"namespace": "/"}]``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                        for f in self.families.values() for s in f.samples}

    def __getitem__(self, key: tuple[str, dict[str, str]]) -> float:
        name, labels = key
        return self.samples[name, tuple(sorted(labels.items()))]

    def get(self, name: str, labels: dict[str, str] | None = None, default: float = 0.0) -> float:
        return self.samples.get((name, tuple(sorted((labels or {}).items()))), default)


async def scrape(url: str, token: str | None = None) -> Scrape:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await AsyncHTTPClient().fetch(url, headers=headers, request_timeout=5)
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4"), response.headers
    return Scrape(response.body.decode())

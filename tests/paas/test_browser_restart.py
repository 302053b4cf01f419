"""The demo page in Chromium while the servers are restarted (issue 12.4): two nodes behind
HAProxy (its /readyz health check on), Alice and Bob chatting in study 1 with the page's
default transport (polling, then WebSocket). Each node in turn gets SIGTERM, exits and starts
again, with messages sent before, during and after each restart.

The person sees the reconnecting banner and nothing else: every message shows once on both
pages, none missing (stored rows = shown rows), none left "failed" or unsent, no presence
flap (Bob never shown leaving), and the banner only ever says "재연결 시도 중..." (reconnecting).
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest

from tests.demo.conftest import DESKTOP, DemoPage, browser  # noqa: F401 - `browser` is a fixture
from tests.paas.bed import Bed, wait_for
from tests.paas.test_browser_polling import RECORDER

pytestmark = pytest.mark.timeout(240)

STUDY = 1
USERS = (1, 2)
#: runs before the page's scripts: every state the connection banner takes, and what the
#: page hears about members leaving and users going offline
WATCHER = """
window.__seen = { banner: [], flaps: [] };
document.addEventListener("DOMContentLoaded", () => {
  const banner = document.getElementById("banner");
  const note = () => {
    const states = window.__seen.banner;
    if (states[states.length - 1] !== banner.dataset.state) states.push(banner.dataset.state);
  };
  new MutationObserver(note).observe(banner, { attributes: true, attributeFilter: ["data-state"] });
  note();
});
"""
FLAP_LISTENER = """
(() => {
  const realSet = Object.getOwnPropertyDescriptor(window, "io").set;
  Object.defineProperty(window, "io", {
    configurable: true,
    get: Object.getOwnPropertyDescriptor(window, "io").get,
    set(realIo) {
      realSet((...args) => {
        const socket = realIo(...args);
        for (const event of ["user-offline", "member-left"]) {
          socket.on(event, (payload) => window.__seen.flaps.push([event, payload]));
        }
        return socket;
      });
    },
  });
})();
"""


@pytest.fixture(scope="module")
def bed(make_redis: Any, make_bed: Any) -> Bed:
    return make_bed(make_redis().url(), "browser-restart", nodes=2, health_checks=True,  # type: ignore[no-any-return]
                    env={"COUP_PRESENCE_GRACE": "3", "COUP_DRAIN_SPREAD": "1"})


def test_demo_page_through_restarts_shows_only_the_reconnecting_banner(bed: Bed, browser: Any) -> None:  # noqa: F811
    seq_before = bed.last_seq(STUDY)
    pages: dict[int, DemoPage] = {}
    contexts = []
    sent: dict[int, list[str]] = {user: [] for user in USERS}
    number = 0

    def say(when: str) -> None:
        nonlocal number
        for user, demo in pages.items():
            number += 1
            text = f"u{user} {when} #{number}"
            sent[user].append(text)
            demo.send(text)

    try:
        for user in USERS:
            context = browser.new_context(**DESKTOP)
            contexts.append(context)
            context.add_init_script(RECORDER % json.dumps({"userId": user, "token": bed.token(user)}))
            context.add_init_script(FLAP_LISTENER)
            context.add_init_script(WATCHER)
            page = context.new_page()
            page.set_default_timeout(30_000)
            pages[user] = DemoPage(context, page)
            page.goto(f"{bed.url}/#study-{STUDY}")
        for demo in pages.values():
            demo.wait_ready(STUDY)
        say("before")
        for node in bed.nodes:
            os.kill(node.pid, signal.SIGTERM)
            say(f"while {node.name} drains")
            assert node.process is not None
            assert node.process.wait(timeout=30) == 0
            say(f"while {node.name} is down")
            node.start()
            node.wait_ready()
            for demo in pages.values():  # back, recovered or joined again
                demo.wait_ready(STUDY)
            say(f"after {node.name} restarted")
        for user, demo in pages.items():  # the page marks a message sent on its ack
            for text in sent[user]:
                demo.message(text).and_(demo.page.locator("[data-state='sent']")).wait_for(state="attached")
        rows = bed.messages(STUDY, seq_before)
        stored = sorted(row["content"] for row in rows)
        print(f"\nsent {sum(map(len, sent.values()))}, stored {len(rows)}")
        assert stored == sorted(t for texts in sent.values() for t in texts), "a message was lost or stored twice"
        deadline = time.monotonic() + 20
        for user, demo in pages.items():
            def shown(demo: DemoPage = demo) -> list[int]:
                ids = demo.page.locator("#messages li.msg").evaluate_all("items => items.map(li => li.dataset.id)")
                return [int(i) for i in ids if i]

            wait_for(lambda: {r["id"] for r in rows} <= set(shown()), timeout=max(1.0, deadline - time.monotonic()),
                     what=f"user {user}'s page to show every stored message")
            on_page = shown()
            seen = demo.page.evaluate("window.__seen")
            failed = demo.page.locator("#messages li.msg[data-state='failed']").count()
            print(f"user {user}: shows {len(on_page)} messages ({len(on_page) - len(set(on_page))} twice), "
                  f"failed {failed}; banner states {seen['banner']}; heard {seen['flaps'] or 'no flap'}")
            assert len(on_page) == len(set(on_page)), f"user {user}'s page shows a message twice"
            assert failed == 0, f"user {user}'s page shows a failed send"
            assert set(seen["banner"]) <= {"connecting", "connected", "reconnecting"}, seen["banner"]
            assert "reconnecting" in seen["banner"], "the page never reconnected: nothing was tested"
            assert seen["flaps"] == [], f"user {user} was told someone left: {seen['flaps']}"
            demo.shot(f"paas-restart-user{user}")
            assert not demo.errors, f"JavaScript errors on user {user}'s page: {demo.errors}"
    finally:
        for context in contexts:
            context.close()

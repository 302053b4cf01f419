"""The demo page in Chromium with ``?transport=polling`` (a browser behind a proxy that strips
WebSocket), three users chatting in study 1 through HAProxy in front of 3 isolated nodes.

The page is served by the nodes through the router, signs in with a JWT (demo mode is off on
a deploy, so the token is put where the page keeps its session), and talks long-polling
only. A listener added before the page's scripts run records the `message` events and the
acknowledgements the stock client hands the page; nothing of the page is changed.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.demo.conftest import DESKTOP, DemoPage, browser  # noqa: F401 - `browser` is a fixture
from tests.paas.bed import Bed
from tests.paas.chat import PER_USER, STUDY, USERS, begin, check, contents, sessions_split

pytestmark = pytest.mark.timeout(240)

#: runs before the page's scripts: the session the page would have after signing in, and a
#: listener on the stock client's socket (window.io is wrapped as the vendored bundle sets it)
RECORDER = """
sessionStorage.setItem("coup-demo-session", JSON.stringify(%s));
window.__coup = { messages: [], acks: [] };
(() => {
  let wrapped;
  Object.defineProperty(window, "io", {
    configurable: true,
    get() { return wrapped; },
    set(realIo) {
      wrapped = Object.assign((...args) => {
        const socket = realIo(...args);
        socket.on("message", (message) => window.__coup.messages.push(message));
        const emit = socket.emit;
        socket.emit = function (event, ...rest) {
          const last = rest[rest.length - 1];
          if (event === "message" && typeof last === "function") {
            rest[rest.length - 1] = (...reply) => {
              window.__coup.acks.push(reply);
              return last(...reply);
            };
          }
          return emit.call(this, event, ...rest);
        };
        return socket;
      }, realIo);
    },
  });
})();
"""


@pytest.fixture(scope="module")
def bed(make_redis: Any, make_bed: Any) -> Bed:
    return make_bed(make_redis().url(), "browser")  # type: ignore[no-any-return]


def test_demo_page_long_polling(bed: Bed, browser: Any) -> None:  # noqa: F811
    label = "chromium ?transport=polling"
    run = begin(bed, label)
    texts = contents(label)
    pages: dict[int, DemoPage] = {}
    contexts = []
    try:
        for user in USERS:
            context = browser.new_context(**DESKTOP)
            contexts.append(context)
            context.add_init_script(RECORDER % json.dumps({"userId": user, "token": bed.token(user)}))
            page = context.new_page()
            page.set_default_timeout(30_000)
            pages[user] = DemoPage(context, page)
            page.goto(f"{bed.url}/?transport=polling#study-{STUDY}")
        for user, demo in pages.items():
            try:
                demo.wait_ready(STUDY)
            except Exception as exc:
                demo.shot(f"paas-polling-user{user}-not-ready")
                raise AssertionError(f"user {user}'s page did not connect and join: {exc}\n"
                                     f"{bed.diagnosis(run.routed_before)}") from None
        for i in range(PER_USER):
            for user, demo in pages.items():
                run.sent.append(texts[user][i])
                demo.send(texts[user][i])
        for user, demo in pages.items():  # acknowledged: the page marks a message sent on its ack
            for text in texts[user]:
                demo.message(text).and_(demo.page.locator("[data-state='sent']")).wait_for(state="attached")
        rows = bed.messages(STUDY, run.seq_before)
        for demo in pages.values():
            demo.page.wait_for_function(f"window.__coup.messages.length >= {len(rows)}", timeout=30_000)
        for user, demo in pages.items():
            recorded = demo.page.evaluate("window.__coup")
            run.received[f"user {user}"] = recorded["messages"]
            for error, ack in recorded["acks"]:
                assert error is None, f"user {user}: a send timed out ({error})"
                run.acks.append(ack)
            assert demo.page.locator("#transport").get_attribute("data-transport") == "polling"
            ids = demo.page.locator("#messages li.msg").evaluate_all("items => items.map(li => li.dataset.id)")
            shown = [int(i) for i in ids if i]
            assert sorted(set(shown) & {r["id"] for r in rows}) == sorted(r["id"] for r in rows), \
                f"user {user}'s page does not show every stored message"
            assert len(shown) == len(set(shown)), f"user {user}'s page shows a message twice"
        check(bed, run)
        assert sessions_split(bed, run, "/socket.io/") >= 1, "the router never split a session: nothing was tested"
        for user, demo in pages.items():
            demo.shot(f"paas-polling-user{user}")
            assert not demo.errors, f"JavaScript errors on user {user}'s page: {demo.errors}"
    finally:
        for context in contexts:
            context.close()

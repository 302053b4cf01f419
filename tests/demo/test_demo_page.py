"""The demo page (static/) in Debian's Chromium against a real `coup serve --demo` (issue 5).

Alice (user 1) and Bob (user 2) are both ACTIVE in study 1 "Graph Theory" of the demo
data. Every test drives the page as a person would (clicks, typing, Enter) and checks
what the page shows; the HTTP API plays the other backends.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.demo.conftest import PHONE, SERVICE_TOKEN, DemoPage, DemoServer

pytestmark = pytest.mark.timeout(180)

SOCKET_IO = re.compile(r"/socket\.io/")
XSS = "<img src=x onerror=alert(1)>"


def banner_text(tab: DemoPage) -> Any:
    return tab.page.locator("#banner-text")


def test_alice_and_bob_chat_both_ways(open_page: Any, server: DemoServer) -> None:
    alice = open_page()
    expect(alice.page.locator(".user-choice")).to_have_count(5)
    alice.shot("01-sign-in")
    alice.sign_in(1)
    bob = open_page(2, layout=PHONE)
    # the default client upgrades from polling to WebSocket
    expect(alice.page.locator("#transport")).to_have_text("websocket")

    alice.send("Hi Bob! Ready for chapter 3?")
    expect(bob.message("Hi Bob! Ready for chapter 3?")).to_be_visible()
    expect(alice.message("Hi Bob! Ready for chapter 3?")).to_have_attribute("data-state", "sent")  # acked
    bob.send("Almost. Give me five minutes")
    expect(alice.message("Almost. Give me five minutes")).to_be_visible()
    expect(bob.message("Almost. Give me five minutes")).to_have_attribute("data-state", "sent")
    alice.send("Sure, and bring the notes\non Dijkstra")
    expect(bob.message("Sure, and bring the notes\non Dijkstra")).to_be_visible()
    for tab in (alice, bob):  # each message once on each side, in order
        expect(tab.page.locator("#messages .msg-text")).to_have_text([
            "Hi Bob! Ready for chapter 3?", "Almost. Give me five minutes", "Sure, and bring the notes\non Dijkstra"])
    # Bob's page told the room it read Alice's newest message (`read`): a receipt under it
    expect(alice.message("Sure, and bring the notes\non Dijkstra").locator(".msg-seen")).to_have_text("Seen by Bob")
    expect(alice.page.locator(".msg-seen")).to_have_count(1)
    alice.shot("02-chat-desktop")
    bob.shot("03-chat-phone")
    bob.send("Will do")  # an answer makes the receipt above it redundant
    expect(alice.message("Will do")).to_be_visible()
    expect(alice.page.locator(".msg-seen")).to_have_count(0)

    # persisted: the history API has them, and a reloaded page draws them from it
    history = server.call("GET", "/api/studies/1/messages", user=1)["items"]
    assert [m["content"] for m in history] == [
        "Will do", "Sure, and bring the notes\non Dijkstra", "Almost. Give me five minutes",
        "Hi Bob! Ready for chapter 3?"]
    bob.page.reload()
    bob.wait_ready()
    expect(bob.messages()).to_have_count(4)
    bob.view("studies")
    expect(bob.page.locator("#study-list .study")).to_have_count(1)  # Bob is in Graph Theory only
    bob.shot("04-studies-phone")
    bob.view("members")
    expect(bob.member(1)).to_have_attribute("data-online", "true")
    bob.shot("05-members-phone")


def test_bob_sees_alice_typing(open_page: Any) -> None:
    alice = open_page(1)
    bob = open_page(2)
    alice.page.locator("#composer-input").press_sequentially("I think the answer is", delay=30)
    expect(bob.page.locator("#typing")).to_have_text("Alice is typing…")
    expect(alice.page.locator("#typing")).to_have_text("")  # nobody sees themselves typing
    bob.shot("06-typing")
    alice.page.locator("#composer-input").press("Enter")
    expect(bob.message("I think the answer is")).to_be_visible()
    expect(bob.page.locator("#typing")).to_have_text("")  # her message ends the typing line


def test_alice_sees_bob_go_offline_when_his_page_closes(open_page: Any) -> None:
    alice = open_page(1)
    bob = open_page(2)
    expect(alice.member(2)).to_have_attribute("data-online", "true")
    expect(alice.member(2)).to_contain_text("in this chat")
    expect(alice.member(3)).to_have_attribute("data-online", "false")  # Chloe never came
    bob.page.close()
    expect(alice.member(2)).to_have_attribute("data-online", "false")
    expect(alice.member(2)).to_contain_text("offline")
    alice.shot("07-bob-offline")
    open_page(2)  # and back
    expect(alice.member(2)).to_have_attribute("data-online", "true")


def test_assigning_a_task_to_bob_notifies_him_and_read_syncs_across_tabs(open_page: Any, server: DemoServer) -> None:
    alice = open_page(1)
    bob = open_page(2, layout=PHONE)
    bob_second_tab = open_page(2, layout=PHONE, context=bob.context)
    expect(bob.page.locator("#unread-count")).to_be_hidden()

    server.call("POST", "/api/tasks/1/assign", {"assigneeId": 2}, user=1)
    for tab in (bob, bob_second_tab):
        expect(tab.page.locator(".toast[data-notification-id]")).to_contain_text("Task assigned")
        expect(tab.page.locator("#unread-count")).to_have_text("1")
    # every open page of the study follows the assignment
    expect(alice.page.locator(".task[data-task-id='1']")).to_have_attribute("data-assignee-id", "2")
    bob.view("tasks")
    expect(bob.page.locator(".task[data-task-id='1'] .task-assignee")).to_have_value("2")
    expect(bob.page.locator(".task[data-task-id='1'] .task-note")).to_have_text("Assigned to you")
    bob.shot("08-task-assigned-phone")

    bob.page.locator("#bell").click()
    unread = bob.page.locator("#notif-list .notif.unread")
    expect(unread).to_have_count(1)
    expect(unread).to_contain_text("Task assigned")
    bob.shot("09-notifications-phone")
    unread.locator(".notif-read-btn").click()
    expect(bob.page.locator("#unread-count")).to_be_hidden()
    expect(bob_second_tab.page.locator("#unread-count")).to_be_hidden()  # the other tab follows
    expect(bob_second_tab.page.locator("#notif-list .notif.unread")).to_have_count(0)
    assert server.call("GET", "/api/notifications?unread=1", user=2)["items"] == []
    bob.page.keyboard.press("Escape")

    # a status change on Bob's page shows on Alice's
    bob.page.locator(".task[data-task-id='1'] .task-status").select_option("DONE")
    expect(alice.page.locator(".task[data-task-id='1']")).to_have_attribute("data-status", "DONE")
    expect(alice.page.locator(".task[data-task-id='1'] .task-note")).to_contain_text("by Bob")
    # and an assignment made on Alice's page shows on Bob's
    alice.page.locator(".task[data-task-id='2'] .task-assignee").select_option("3")
    expect(bob.page.locator(".task[data-task-id='2']")).to_have_attribute("data-assignee-id", "3")
    alice.shot("10-tasks-desktop")


def test_server_restart_shows_reconnecting_then_chat_works_again(open_page: Any, server: DemoServer) -> None:
    alice = open_page(1)
    bob = open_page(2)
    alice.send("before the restart")
    expect(bob.message("before the restart")).to_be_visible()

    server.stop()
    for tab in (alice, bob):
        expect(tab.page.locator("#banner")).to_be_visible()
        expect(banner_text(tab)).to_have_text("재연결 시도 중...")
    alice.shot("11-reconnecting")

    server.start()  # same port, same database
    for tab in (alice, bob):
        expect(tab.page.locator("#banner")).to_be_hidden()
        tab.wait_ready()  # re-joined the study it had open
    alice.send("after the restart")
    expect(bob.message("after the restart")).to_be_visible()
    bob.send("welcome back")
    expect(alice.message("welcome back")).to_be_visible()
    expect(alice.message("before the restart")).to_have_count(1)


def test_going_offline_in_the_browser_shows_offline(open_page: Any) -> None:
    alice = open_page(1)
    alice.context.set_offline(True)
    expect(alice.page.locator("#banner")).to_be_visible()
    expect(banner_text(alice)).to_have_text("오프라인 상태입니다")
    alice.shot("12-offline")
    alice.context.set_offline(False)
    expect(alice.page.locator("#banner")).to_be_hidden()
    alice.wait_ready()
    alice.send("back online")
    expect(alice.message("back online")).to_have_attribute("data-state", "sent")


def test_chat_works_over_long_polling(open_page: Any) -> None:
    websockets: list[str] = []
    alice = open_page(query="?transport=polling")
    alice.page.on("websocket", lambda ws: websockets.append(ws.url))
    alice.sign_in(1)
    bob = open_page(2, query="?transport=polling")
    for tab in (alice, bob):
        expect(tab.page.locator("#transport")).to_have_text("polling")
    alice.send("Can you hear me through the proxy?")
    expect(bob.message("Can you hear me through the proxy?")).to_be_visible()
    bob.send("Loud and clear, over long-polling")
    expect(alice.message("Loud and clear, over long-polling")).to_have_attribute("data-state", "sent")
    alice.page.locator("#composer-input").press_sequentially("typing over polling", delay=30)
    expect(bob.page.locator("#typing")).to_have_text("Alice is typing…")
    alice.shot("13-polling")
    assert websockets == []  # never tried WebSocket


def test_html_in_user_content_is_shown_as_text(open_page: Any, server: DemoServer) -> None:
    alice = open_page(1)
    bob = open_page(2)
    text = f"look: {XSS} <b>bold?</b>"
    alice.send(text)
    for tab in (alice, bob):
        expect(tab.message(text)).to_be_visible()
        expect(tab.page.locator("#messages img, #messages b")).to_have_count(0)

    # a notification pushed by a backend, with markup in it, is text as well
    server.call("POST", "/api/notifications",
                {"userId": 2, "type": "ANNOUNCEMENT", "message": f"Room changed {XSS}", "studyId": 1},
                bearer=SERVICE_TOKEN)
    expect(bob.page.locator(".toast[data-notification-id]")).to_contain_text(f"Room changed {XSS}")
    bob.page.locator("#bell").click()
    expect(bob.page.locator("#notif-list .notif-text")).to_have_text(f"Room changed {XSS}")
    expect(bob.page.locator("#notif-list img, #toasts img")).to_have_count(0)
    bob.shot("14-html-as-text")
    bob.page.wait_for_timeout(300)  # an injected onerror would have fired by now
    assert alice.dialogs == [] and bob.dialogs == []


def test_history_loads_older_pages_on_scroll(open_page: Any, server: DemoServer) -> None:
    for i in range(1, 46):
        server.call("POST", "/api/studies/1/messages", {"content": f"history {i}"}, user=2)
    alice = open_page(1)
    expect(alice.message("history 45")).to_be_visible()
    expect(alice.messages()).to_have_count(30)  # the newest page only
    expect(alice.message("history 1")).to_have_count(0)
    alice.shot("15-history")
    alice.page.locator("#chat-log").evaluate("log => log.scrollTo(0, 0)")
    expect(alice.messages()).to_have_count(45)
    expect(alice.page.locator("#history-status")).to_have_text("This is the beginning of Graph Theory.")
    expect(alice.page.locator("#messages .msg-text")).to_have_text([f"history {i}" for i in range(1, 46)])


def test_failed_ack_offers_a_retry_that_reuses_the_client_message_id(open_page: Any, server: DemoServer) -> None:
    # Alice's WebSocket loses what the server says about one message (its ack and its broadcast):
    # the server stored and delivered it, but her page cannot know
    dropping = {"on": False}
    dropped: list[str] = []

    def lossy(ws: Any) -> None:
        upstream = ws.connect_to_server()

        def to_page(message: str | bytes) -> None:
            if dropping["on"] and isinstance(message, str) and message.startswith(("43", '42["message"')):
                dropped.append(message)
                return
            ws.send(message)

        upstream.on_message(to_page)

    alice = open_page(query="?transport=websocket", clock=True)
    alice.page.route_web_socket(SOCKET_IO, lossy)
    alice.page.reload()  # routing applies to pages loaded after it is set up
    alice.sign_in(1)
    bob = open_page(2)
    text = "Did this one make it?"
    dropping["on"] = True
    alice.send(text)
    expect(bob.message(text)).to_be_visible()
    mine = alice.message(text)
    expect(mine).to_have_attribute("data-state", "sending")
    alice.page.clock.fast_forward(10_500)  # no ack within 10 s (the page's clock; not 10 s of the suite)
    expect(mine).to_have_attribute("data-state", "failed")
    expect(mine.locator(".retry-btn")).to_be_visible()
    alice.shot("16-failed-send")
    assert dropped

    dropping["on"] = False
    mine.locator(".retry-btn").click()
    expect(mine).to_have_attribute("data-state", "sent")
    # the retry carried the same clientMessageId: the server answered with the first id,
    # stored nothing new and delivered nothing twice
    expect(mine).to_have_attribute("data-id", bob.message(text).get_attribute("data-id") or "?")
    expect(bob.message(text)).to_have_count(1)
    expect(alice.message(text)).to_have_count(1)
    history = server.call("GET", "/api/studies/1/messages", user=1)["items"]
    assert [m["content"] for m in history].count(text) == 1


def test_a_retryable_refusal_is_sent_again_without_showing_anything(open_page: Any, server: DemoServer) -> None:
    # during a deploy a send may be refused with UNAVAILABLE, retryable: true (its room is moving
    # to another server); the page sends it again by itself, same clientMessageId
    refused: list[str] = []

    def moving(ws: Any) -> None:
        upstream = ws.connect_to_server()

        def to_server(message: str | bytes) -> None:
            match = re.match(r'42(\d+)\["message",', message) if isinstance(message, str) else None
            if match and len(refused) < 2:
                refused.append(message)
                ws.send(f'43{match[1]}[{{"ok":false,"error":{{"code":"UNAVAILABLE",'
                        f'"message":"The room is moving to another server; please retry","retryable":true}}}}]')
                return
            upstream.send(message)

        ws.on_message(to_server)

    alice = open_page(query="?transport=websocket")
    alice.page.route_web_socket(SOCKET_IO, moving)
    alice.page.reload()
    alice.sign_in(1)
    bob = open_page(2)
    alice.page.evaluate("""() => {
        window.seenStates = [];
        new MutationObserver((changes) => changes.forEach((c) => window.seenStates.push(c.target.dataset.state)))
            .observe(document.querySelector("#messages"),
                     {attributes: true, subtree: true, attributeFilter: ["data-state"]});
    }""")
    text = "Sent during a deploy"
    alice.send(text)
    expect(alice.message(text)).to_have_attribute("data-state", "sent")
    expect(bob.message(text)).to_have_count(1)
    assert len(refused) == 2
    sent = [re.sub(r"^42\d+", "", m) for m in refused]
    assert sent[0] == sent[1]  # the same payload, clientMessageId included
    assert "failed" not in alice.page.evaluate("window.seenStates")
    expect(alice.page.locator(".retry-btn")).to_have_count(0)


def test_banner_shows_connecting_until_the_handshake_answers(open_page: Any) -> None:
    held: list[Any] = []
    release = {"now": False}

    def hold(route: Any) -> None:  # the Engine.IO handshake waits until we let it through
        if release["now"]:
            route.continue_()
        else:
            held.append(route)

    alice = open_page()
    alice.page.route(SOCKET_IO, hold)
    alice.page.locator(".user-choice[data-user-id='1']").click()
    expect(alice.page.locator("#banner")).to_be_visible()
    expect(banner_text(alice)).to_have_text("연결 중...")
    expect(alice.page.locator("#transport")).to_have_text("…")
    alice.shot("17-connecting")
    assert held
    release["now"] = True
    for route in held:
        route.continue_()
    expect(alice.page.locator("#banner")).to_be_hidden()
    alice.wait_ready()


def test_banner_says_failed_when_reconnection_gives_up_and_try_again_reconnects(
        open_page: Any, server: DemoServer) -> None:
    alice = open_page(1, clock=True)
    server.stop()
    expect(banner_text(alice)).to_have_text("재연결 시도 중...")
    # 5 attempts, 1 s growing to 5 s apart: the page's clock jumps each wait (17 s of the suite)
    failed = alice.page.locator("#banner[data-state='failed']")
    for _ in range(30):
        if failed.is_visible():
            break
        alice.page.clock.fast_forward(2_000)
        alice.page.wait_for_timeout(100)  # real time: the refused attempt comes back
    expect(failed).to_be_visible()
    expect(banner_text(alice)).to_have_text("연결에 실패했습니다")
    retry = alice.page.locator("#banner-retry")
    expect(retry).to_be_visible()
    alice.shot("18-failed")
    server.start()
    retry.click()
    expect(alice.page.locator("#banner")).to_be_hidden()
    alice.wait_ready()
    alice.send("still here")
    expect(alice.message("still here")).to_have_attribute("data-state", "sent")


def test_a_message_in_another_study_shows_as_unread_until_opened(open_page: Any, server: DemoServer) -> None:
    alice = open_page(1)  # in Graph Theory; Dan writes in Dynamic Programming
    server.call("POST", "/api/studies/2/messages", {"content": "Anyone up for knapsack tonight?"}, user=4)
    expect(alice.page.locator(".toast[data-notification-id]")).to_contain_text("Anyone up for knapsack tonight?")
    expect(alice.page.locator("#unread-count")).to_have_text("1")
    expect(alice.page.locator(".study[data-study-id='2'] .badge")).to_have_text("1")
    alice.shot("19-unread-in-other-study")

    alice.page.locator(".study[data-study-id='2']").click()
    alice.wait_ready(2)
    expect(alice.message("Anyone up for knapsack tonight?")).to_be_visible()
    expect(alice.page.locator("#unread-count")).to_be_hidden()  # opening the study read it
    expect(alice.page.locator(".study[data-study-id='2'] .badge")).to_have_count(0)
    expect(alice.member(4)).to_be_visible()
    # she left Graph Theory's room: a message there is a notification now, not a live line
    server.call("POST", "/api/studies/1/messages", {"content": "Graph people, meet at 7"}, user=2)
    expect(alice.page.locator(".study[data-study-id='1'] .badge")).to_have_text("1")
    expect(alice.message("Graph people, meet at 7")).to_have_count(0)


def test_a_user_without_studies_gets_an_empty_state_and_can_sign_out(open_page: Any) -> None:
    eve = open_page()
    eve.page.locator(".user-choice[data-user-id='5']").click()
    eve.page.wait_for_selector("body[data-connection='connected']", state="attached")
    expect(eve.page.locator("#chat-empty")).to_contain_text("You are not in any study yet.")
    expect(eve.page.locator("#task-list")).to_be_hidden()
    expect(eve.page.locator("#study-list")).to_have_text("No studies yet.")
    eve.shot("20-no-studies")
    eve.page.locator("#signout").click()
    expect(eve.page.locator(".user-choice")).to_have_count(5)
    expect(eve.page.locator("#banner")).to_be_hidden()


def test_a_member_removed_from_a_study_sees_it_leave_the_page(open_page: Any, server: DemoServer) -> None:
    """The room's owner takes a socket out once its membership has ended (issue 13); the page
    says so and drops the study rather than keep showing a chat it can no longer use."""
    bob = open_page(2)
    alice = open_page(1)
    expect(alice.member(2)).to_have_attribute("data-online", "true")
    with sqlite3.connect(server.database) as db:  # an admin removes Bob in the database
        db.execute("UPDATE study_members SET status = 'REMOVED' WHERE study_id = 1 AND user_id = 2")
    # Bob's next act in the room (typing) meets the membership check on the room's owner
    bob.page.locator("#composer-input").press_sequentially("still here?", delay=30)
    expect(bob.page.locator("#toasts")).to_contain_text("스터디 멤버가 아닙니다")
    expect(bob.page.locator("#study-list .study")).to_have_count(0)  # Graph Theory was his only study
    expect(bob.page.locator("#chat-empty")).to_be_visible()
    expect(bob.page.locator("#topbar-study")).to_have_text("")
    expect(alice.member(2)).not_to_contain_text("in this chat")  # member-left reached the room
    bob.shot("removed-from-study")

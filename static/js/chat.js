// One study's chat: history over HTTP (older pages on scroll), live messages, sending with
// an ack and a retry that reuses the clientMessageId, and the typing line.

import { avatar, dayKey, formatDay, formatTime, h, icon, randomId, setChildren } from "./dom.js";
import { ClientEvent } from "./events.js";

const PAGE_SIZE = 30;
const ACK_TIMEOUT_MS = 10_000;
// a refusal marked retryable (a room moving to another server during a deploy) is sent
// again by itself, same clientMessageId, after 0.2, 0.4, 0.8 ... s: the person sees nothing
const RETRY_FIRST_MS = 200;
const RETRIES = 6;
const TYPING_SEND_EVERY_MS = 2_000;
const TYPING_SHOW_MS = 3_500;
const TYPING_RETRY_MS = 1_100;
const GROUP_WINDOW_MS = 5 * 60_000;
const NEAR_BOTTOM_PX = 80;
const NEAR_TOP_PX = 120;

export class Chat {
  /**
   * @param {object} o
   * @param {object} o.els   {log, list, historyStatus, typing, form, input, jump, counter}
   * @param {object} o.api   the HTTP API (api.js)
   * @param {() => import("socket.io-client").Socket} o.socket
   * @param {() => {id:number,name:string}} o.me
   * @param {(studyId:number) => boolean} o.isReady  connected and joined to that study
   * @param {(msg:string) => void} o.onError
   */
  constructor({ els, api, socket, me, isReady, onError, nameOf }) {
    Object.assign(this, { els, api, socket, me, isReady, onError, nameOf });
    this.readers = new Map(); // userId -> newest message id they read (this study, this session)
    this.lastReadSent = 0;
    this.study = null;
    this.generation = 0;
    this.rendered = new Map(); // message id -> li
    this.outbox = new Map(); // studyId -> Map(clientMessageId -> pending)
    this.pendingEls = new Map(); // clientMessageId -> li (current study only)
    this.typers = new Map(); // userId -> {name, timer}
    this.hasMore = false;
    this.loadingOlder = false;
    this.lastTypingSent = 0;
    this._bindComposer();
    els.log.addEventListener("scroll", () => this._onScroll(), { passive: true });
    els.jump.addEventListener("click", () => this.scrollToBottom(true));
    document.addEventListener("visibilitychange", () => this._sendRead());
  }

  // ---- opening a study -------------------------------------------------------------------

  async open(study) {
    const generation = ++this.generation;
    this.study = study;
    this.rendered.clear();
    this.pendingEls.clear();
    this._clearTypers();
    this.hasMore = false;
    this.readers.clear();
    this.lastReadSent = 0;
    setChildren(this.els.list);
    this._setHistoryStatus("Loading messages…");
    this.els.input.placeholder = `Message ${study.name}`;
    this.els.jump.hidden = true;
    for (const pending of this._outboxOf(study.id).values()) this._renderPending(pending);
    try {
      const page = await this.api.messages(study.id, { limit: PAGE_SIZE });
      if (generation !== this.generation) return;
      for (const msg of page.items) this._insertConfirmed(msg);
      this.hasMore = page.hasMore;
      this._updateHistoryStatus();
      this.scrollToBottom(true);
      this._fillViewport(generation);
      this._sendRead();
    } catch (err) {
      if (generation !== this.generation) return;
      this._setHistoryStatus("Could not load the history.");
      this.onError(err.message);
    }
  }

  close() {
    this.generation++;
    this.study = null;
    this._clearTypers();
  }

  /** After a (re)join: fetch what may have been missed, then send what waited. */
  async resync() {
    if (!this.study) return;
    const generation = this.generation;
    const studyId = this.study.id;
    try {
      const page = await this.api.messages(studyId, { limit: PAGE_SIZE });
      if (generation !== this.generation) return;
      const nearBottom = this._nearBottom();
      for (const msg of page.items) this._insertConfirmed(msg);
      if (nearBottom) this.scrollToBottom(true);
    } catch (err) {
      /* history catch-up is best effort; live messages still arrive */
    }
    this.flush(studyId);
  }

  /** Send every queued message of a study (called once the socket is in its room). */
  flush(studyId) {
    for (const pending of this._outboxOf(studyId).values()) {
      if (pending.state === "queued") this._transmit(pending);
    }
    this._sendRead();
  }

  // ---- live events -----------------------------------------------------------------------

  receive(raw) {
    const msg = raw;
    if (!this.study || msg.studyId !== this.study.id) return;
    this._stopTyping(msg.user.id);
    if (this.rendered.has(msg.id)) return;
    const pending = this._matchPending(msg);
    if (pending) {
      this._confirm(pending, msg);
      return;
    }
    const nearBottom = this._nearBottom();
    this._insertConfirmed(msg);
    this._updateHistoryStatus();
    this._renderSeen();
    if (nearBottom) this.scrollToBottom();
    else this.els.jump.hidden = false;
    this._sendRead();
  }

  // ---- read receipts ---------------------------------------------------------------------

  /** `read {messageId, userId}`: someone in the room has read up to that message. */
  noteRead({ messageId, userId }) {
    const id = Number(userId);
    if (!this.study || id === this.me().id) return;
    this.readers.set(id, Math.max(this.readers.get(id) || 0, Number(messageId)));
    this._renderSeen();
  }

  /** Tell the room we read the newest message from someone else, once it is on a visible page. */
  _sendRead() {
    if (!this.study || document.visibilityState !== "visible" || !this.isReady(this.study.id)) return;
    const meId = String(this.me().id);
    let newest = 0;
    for (const [id, li] of this.rendered) if (li.dataset.userId !== meId && id > newest) newest = id;
    if (newest <= this.lastReadSent) return;
    this.lastReadSent = newest;
    this.socket().emit(ClientEvent.READ, { messageId: newest });
  }

  /** "Seen by Bob" under my newest message that others have read. */
  _renderSeen() {
    for (const old of this.els.list.querySelectorAll(".msg-seen")) old.remove();
    const meId = String(this.me().id);
    let mine = null;
    for (const [id, li] of this.rendered) if (li.dataset.userId === meId && (!mine || id > mine.id)) mine = { id, li };
    if (!mine) return;
    for (const [id, li] of this.rendered) if (id > mine.id && li.dataset.userId !== meId) return; // answered since
    const names = [...this.readers].filter(([, upTo]) => upTo >= mine.id).map(([userId]) => this.nameOf(userId));
    if (names.length === 0) return;
    mine.li.querySelector(".msg-body").append(h("div", { class: "msg-seen" }, `Seen by ${names.join(", ")}`));
  }

  typing({ userId, userName, studyId }) {
    if (!this.study || Number(studyId ?? this.study.id) !== this.study.id) return;
    const id = Number(userId);
    if (id === this.me().id) return;
    const previous = this.typers.get(id);
    if (previous) clearTimeout(previous.timer);
    const timer = setTimeout(() => this._stopTyping(id), TYPING_SHOW_MS);
    this.typers.set(id, { name: String(userName ?? `User ${id}`), timer });
    this._renderTyping();
  }

  // ---- sending ---------------------------------------------------------------------------

  send(content) {
    if (!this.study) return;
    const pending = {
      clientMessageId: randomId(),
      studyId: this.study.id,
      content,
      createdAt: new Date().toISOString(),
      state: "sending",
      error: null,
    };
    this._outboxOf(pending.studyId).set(pending.clientMessageId, pending);
    this._renderPending(pending);
    this._updateHistoryStatus();
    this.scrollToBottom(true);
    this._transmit(pending);
  }

  /** Send (again) with the same clientMessageId: the server stores and delivers it once. */
  _transmit(pending) {
    if (!this.isReady(pending.studyId)) {
      this._setPendingState(pending, "queued");
      return;
    }
    this._setPendingState(pending, "sending");
    const payload = { studyId: pending.studyId, content: pending.content, clientMessageId: pending.clientMessageId };
    this.socket().timeout(ACK_TIMEOUT_MS).emit(ClientEvent.MESSAGE, payload, (err, ack) => {
      if (!this._outboxOf(pending.studyId).has(pending.clientMessageId)) return; // confirmed by the broadcast
      if (err && !this.socket().connected) {
        // the connection ended before the answer (a server restart): sent again with the same
        // clientMessageId once back in the room; the server stores it once and acknowledges it
        this._setPendingState(pending, "queued");
      } else if (err) {
        this._setPendingState(pending, "failed", "No answer from the server.");
      } else if (ack && ack.ok === false && ack.error && ack.error.retryable && (pending.retries || 0) < RETRIES) {
        const delay = RETRY_FIRST_MS * 2 ** (pending.retries || 0);
        pending.retries = (pending.retries || 0) + 1;
        setTimeout(() => {
          if (this._outboxOf(pending.studyId).has(pending.clientMessageId)) this._transmit(pending);
        }, delay);
      } else if (!ack || ack.ok === false) {
        const reason = (ack && ack.error && ack.error.message) || "The server refused the message.";
        this._setPendingState(pending, "failed", reason);
      } else {
        this._confirm(pending, { id: Number(ack.id), createdAt: ack.createdAt });
      }
    });
  }

  _matchPending(msg) {
    if (msg.user.id !== this.me().id) return null;
    const outbox = this._outboxOf(msg.studyId);
    if (msg.clientMessageId && outbox.has(msg.clientMessageId)) return outbox.get(msg.clientMessageId);
    for (const pending of outbox.values()) {
      if (pending.state === "sending" && pending.content === msg.content) return pending;
    }
    return null;
  }

  _confirm(pending, { id, createdAt }) {
    this._outboxOf(pending.studyId).delete(pending.clientMessageId);
    const li = this.pendingEls.get(pending.clientMessageId);
    this.pendingEls.delete(pending.clientMessageId);
    if (!li) return;
    if (this.rendered.has(id)) { // the broadcast was drawn first: keep that one
      li.remove();
      return;
    }
    li.dataset.id = String(id);
    li.dataset.state = "sent";
    if (createdAt) {
      li.dataset.createdAt = createdAt;
      li.querySelector("time").textContent = formatTime(createdAt);
      li.querySelector("time").dateTime = createdAt;
    }
    setChildren(li.querySelector(".msg-status"));
    this.rendered.set(id, li);
    this._renderSeen();
    // confirmed messages sit above the ones still on their way
    const firstPending = this.els.list.querySelector("li.msg:not([data-state='sent'])");
    if (firstPending && (li.compareDocumentPosition(firstPending) & Node.DOCUMENT_POSITION_PRECEDING)) {
      const oldNext = li.nextElementSibling;
      this.els.list.insertBefore(li, firstPending);
      if (oldNext) this._decorate(oldNext);
    }
    this._regroupAround(li);
  }

  _setPendingState(pending, state, error = null) {
    pending.state = state;
    pending.error = error;
    const li = this.pendingEls.get(pending.clientMessageId);
    if (!li) return;
    li.dataset.state = state;
    const status = li.querySelector(".msg-status");
    if (state === "sending") setChildren(status, "Sending…");
    else if (state === "queued") setChildren(status, "Waiting for the connection…");
    else if (state === "failed") {
      setChildren(status,
        h("span", { class: "msg-error" }, `Not sent. ${error || ""}`.trim()),
        h("button", {
          type: "button", class: "retry-btn",
          onclick: () => this._transmit(pending),
        }, icon("retry", "icon small"), "Retry"));
    }
  }

  _outboxOf(studyId) {
    let outbox = this.outbox.get(studyId);
    if (!outbox) this.outbox.set(studyId, (outbox = new Map()));
    return outbox;
  }

  // ---- rendering -------------------------------------------------------------------------

  _messageElement({ user, content, createdAt }, state) {
    const mine = user.id === this.me().id;
    return h("li", {
      class: mine ? "msg mine" : "msg",
      dataset: { state, userId: user.id, createdAt },
    },
    avatar(user),
    h("div", { class: "msg-body" },
      h("div", { class: "msg-meta" },
        h("span", { class: "msg-author" }, user.name),
        h("time", { datetime: createdAt }, formatTime(createdAt))),
      h("div", { class: "msg-text" }, content),
      h("div", { class: "msg-status" })));
  }

  _insertConfirmed(msg) {
    if (this.rendered.has(msg.id)) return;
    const li = this._messageElement(msg, "sent");
    li.dataset.id = String(msg.id);
    this.rendered.set(msg.id, li);
    // keep id order: before the first confirmed message with a larger id, else before the
    // first message still on its way, else at the end
    let before = null;
    for (const other of this.els.list.children) {
      if (other.dataset.state !== "sent" || Number(other.dataset.id) > msg.id) {
        before = other;
        break;
      }
    }
    this.els.list.insertBefore(li, before);
    this._regroupAround(li);
  }

  _renderPending(pending) {
    const li = this._messageElement({ user: this.me(), content: pending.content, createdAt: pending.createdAt }, pending.state);
    li.dataset.clientId = pending.clientMessageId;
    this.pendingEls.set(pending.clientMessageId, li);
    this.els.list.append(li);
    this._setPendingState(pending, pending.state, pending.error);
    this._regroupAround(li);
  }

  /** Consecutive messages of one author within minutes share a header; a new day gets a divider. */
  _regroupAround(li) {
    this._decorate(li);
    if (li.nextElementSibling) this._decorate(li.nextElementSibling);
  }

  _decorate(li) {
    const prev = li.previousElementSibling;
    const day = dayKey(li.dataset.createdAt);
    const newDay = !prev || dayKey(prev.dataset.createdAt) !== day;
    const sameAuthor = prev && !newDay && prev.dataset.userId === li.dataset.userId
      && Date.parse(li.dataset.createdAt) - Date.parse(prev.dataset.createdAt) < GROUP_WINDOW_MS;
    li.classList.toggle("cont", Boolean(sameAuthor));
    let divider = li.querySelector(".day-sep");
    if (newDay && !divider) {
      divider = h("div", { class: "day-sep", role: "separator" }, h("span", null, formatDay(li.dataset.createdAt)));
      li.prepend(divider);
    } else if (!newDay && divider) divider.remove();
  }

  _setHistoryStatus(text) {
    this.els.historyStatus.textContent = text;
  }

  _updateHistoryStatus() {
    if (this.hasMore) this._setHistoryStatus("Scroll up for older messages");
    else if (this.rendered.size === 0 && this.pendingEls.size === 0) {
      this._setHistoryStatus(`No messages yet. Say hello to ${this.study.name}!`);
    } else this._setHistoryStatus(`This is the beginning of ${this.study.name}.`);
  }

  // ---- history paging --------------------------------------------------------------------

  _onScroll() {
    if (this._nearBottom()) this.els.jump.hidden = true;
    if (this.els.log.scrollTop < NEAR_TOP_PX) this.loadOlder();
  }

  async loadOlder() {
    if (!this.study || !this.hasMore || this.loadingOlder) return;
    const generation = this.generation;
    const oldest = Math.min(...this.rendered.keys());
    if (!Number.isFinite(oldest)) return;
    this.loadingOlder = true;
    this._setHistoryStatus("Loading older messages…");
    try {
      const page = await this.api.messages(this.study.id, { before: oldest, limit: PAGE_SIZE });
      if (generation !== this.generation) return;
      const log = this.els.log;
      const fromBottom = log.scrollHeight - log.scrollTop;
      for (const msg of page.items) this._insertConfirmed(msg);
      log.scrollTop = log.scrollHeight - fromBottom; // keep the reader where they were
      this.hasMore = page.hasMore;
      this._updateHistoryStatus();
    } catch (err) {
      if (generation === this.generation) this._setHistoryStatus("Could not load older messages.");
    } finally {
      this.loadingOlder = false;
    }
    if (generation === this.generation) this._fillViewport(generation);
  }

  /** When the history does not fill the view there is nothing to scroll: fetch more now. */
  _fillViewport(generation) {
    const log = this.els.log;
    if (generation === this.generation && this.hasMore && log.scrollHeight <= log.clientHeight + NEAR_TOP_PX) {
      this.loadOlder();
    }
  }

  _nearBottom() {
    const log = this.els.log;
    return log.scrollHeight - log.scrollTop - log.clientHeight < NEAR_BOTTOM_PX;
  }

  scrollToBottom(instant = false) {
    const log = this.els.log;
    log.scrollTo({ top: log.scrollHeight, behavior: instant ? "auto" : "smooth" });
    this.els.jump.hidden = true;
  }

  // ---- typing ----------------------------------------------------------------------------

  _stopTyping(userId) {
    const typer = this.typers.get(userId);
    if (!typer) return;
    clearTimeout(typer.timer);
    this.typers.delete(userId);
    this._renderTyping();
  }

  _clearTypers() {
    for (const { timer } of this.typers.values()) clearTimeout(timer);
    this.typers.clear();
    this._renderTyping();
  }

  _renderTyping() {
    const names = [...this.typers.values()].map((t) => t.name);
    let text = "";
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = "Several people are typing…";
    this.els.typing.textContent = text;
    this.els.typing.classList.toggle("active", names.length > 0);
  }

  _sendTyping() {
    if (!this.study || !this.isReady(this.study.id)) return;
    const now = Date.now();
    if (now - this.lastTypingSent < TYPING_SEND_EVERY_MS) return;
    this.lastTypingSent = now;
    const studyId = this.study.id;
    this.socket().emit(ClientEvent.TYPING, { studyId, userId: this.me().id }, (ack) => {
      // the server throttles typing per user; one dropped because our last message's typing
      // was too recent is sent again shortly, if we are still typing in the same study
      if (!ack || !ack.throttled) return;
      clearTimeout(this.typingRetry);
      this.typingRetry = setTimeout(() => {
        if (this.study && this.study.id === studyId && this.els.input.value.trim()) {
          this.lastTypingSent = 0;
          this._sendTyping();
        }
      }, TYPING_RETRY_MS);
    });
  }

  // ---- composer --------------------------------------------------------------------------

  _bindComposer() {
    const { form, input, counter } = this.els;
    const maxLength = Number(input.getAttribute("maxlength")) || 4000;
    const autosize = () => {
      input.style.height = "auto";
      input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
      const left = maxLength - input.value.length;
      counter.hidden = left > 400;
      counter.textContent = String(left);
    };
    const submit = () => {
      const content = input.value.trim();
      if (!content || !this.study) return;
      this.send(content);
      input.value = "";
      autosize();
      this.lastTypingSent = 0;
    };
    input.addEventListener("input", () => {
      autosize();
      if (input.value.trim()) this._sendTyping();
    });
    input.addEventListener("keydown", (event) => {
      // Enter sends; Shift+Enter is a new line; Enter that ends an IME composition (Korean!) does neither
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
        event.preventDefault();
        submit();
      }
    });
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      submit();
      input.focus();
    });
  }
}

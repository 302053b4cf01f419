// Notifications: the bell's unread count, the panel, toasts for new ones, and mark-as-read
// kept in step across the user's tabs (the server tells the other sockets: notification-read).

import { formatAgo, h, icon, setChildren } from "./dom.js";
import { toNotification } from "./api.js";
import { ClientEvent } from "./events.js";

const TYPE_TITLE = { TASK_ASSIGNED: "Task assigned", NEW_MESSAGE: "New message" };
const TOAST_MS = 6_000;
const READ_ACK_TIMEOUT_MS = 5_000;

function titleOf(n) {
  if (TYPE_TITLE[n.type]) return TYPE_TITLE[n.type];
  const words = n.type.toLowerCase().replace(/_/g, " ").trim();
  return words ? words[0].toUpperCase() + words.slice(1) : "Notification";
}

export class Notifications extends EventTarget {
  constructor({ api, socket, isConnected, els, studyName, onOpen }) {
    super();
    Object.assign(this, { api, socket, isConnected, els, studyName, onOpen });
    this.items = new Map(); // id -> notification
    els.bell.addEventListener("click", (e) => {
      e.stopPropagation();
      this.toggle();
    });
    els.close.addEventListener("click", () => this.toggle(false));
    els.markAll.addEventListener("click", () => this.markAllRead());
    document.addEventListener("keydown", (e) => { if (e.key === "Escape") this.toggle(false); });
    document.addEventListener("click", (e) => {
      if (!els.panel.hidden && !els.panel.contains(e.target)) this.toggle(false);
    });
  }

  async load() {
    try {
      const items = await this.api.notifications();
      this.items = new Map(items.map((n) => [n.id, n]));
      this.render();
    } catch (err) {
      /* the bell stays as it was; live notifications still arrive */
    }
  }

  clear() {
    this.items.clear();
    this.toggle(false);
    this.render();
  }

  get unread() {
    return [...this.items.values()].filter((n) => !n.read);
  }

  /** Unread NEW_MESSAGE notifications per study, for the study list. */
  unreadByStudy() {
    const counts = new Map();
    for (const n of this.unread) {
      if (n.type === "NEW_MESSAGE" && n.studyId != null) counts.set(n.studyId, (counts.get(n.studyId) || 0) + 1);
    }
    return counts;
  }

  /** A live `notification` event. */
  add(raw) {
    const n = toNotification(raw);
    if (this.items.has(n.id)) return;
    this.items.set(n.id, n);
    this.render();
    this._toast(n);
  }

  /** Another tab of this user read it (`notification-read`). */
  remoteRead({ notificationId }) {
    const n = this.items.get(Number(notificationId));
    if (!n || n.read) return;
    n.read = true;
    this.render();
  }

  markRead(id) {
    const n = this.items.get(id);
    if (!n || n.read) return;
    n.read = true;
    this.render();
    if (this.isConnected()) {
      // the socket event lets the server tell this user's other tabs
      this.socket().timeout(READ_ACK_TIMEOUT_MS).emit(ClientEvent.NOTIFICATION_READ, { notificationId: id }, (err, ack) => {
        if (err || (ack && ack.ok === false)) this.api.readNotification(id).catch(() => this._unread(n));
      });
    } else {
      this.api.readNotification(id).catch(() => this._unread(n));
    }
  }

  markStudyRead(studyId) {
    for (const n of this.unread) if (n.type === "NEW_MESSAGE" && n.studyId === studyId) this.markRead(n.id);
  }

  markAllRead() {
    for (const n of this.unread) this.markRead(n.id);
  }

  _unread(n) {
    n.read = false;
    this.render();
  }

  toggle(open = this.els.panel.hidden) {
    this.els.panel.hidden = !open;
    if (open) for (const toast of this.els.toasts.querySelectorAll(".toast[data-notification-id]")) toast.remove();
    this.els.bell.setAttribute("aria-expanded", String(open));
  }

  _activate(n) {
    this.markRead(n.id);
    this.toggle(false);
    if (n.studyId != null) this.onOpen(n);
  }

  render() {
    const unread = this.unread.length;
    const { badge, bell, list, markAll } = this.els;
    badge.hidden = unread === 0;
    badge.textContent = unread > 99 ? "99+" : String(unread);
    bell.setAttribute("aria-label", unread ? `Notifications, ${unread} unread` : "Notifications");
    markAll.disabled = unread === 0;
    const items = [...this.items.values()].sort((a, b) => b.id - a.id);
    if (items.length === 0) {
      setChildren(list, h("li", { class: "empty" }, "You are all caught up."));
    } else {
      setChildren(list, items.map((n) => h("li", {
        class: n.read ? "notif read" : "notif unread",
        dataset: { notificationId: n.id, type: n.type },
      },
      h("button", { type: "button", class: "notif-main", onclick: () => this._activate(n) },
        h("span", { class: "notif-title" }, titleOf(n),
          n.studyId != null ? h("span", { class: "notif-study" }, ` · ${this.studyName(n.studyId)}`) : null),
        h("span", { class: "notif-text" }, n.message),
        h("span", { class: "notif-time" }, formatAgo(n.createdAt))),
      n.read ? null : h("button", {
        type: "button", class: "notif-read-btn", title: "Mark as read", "aria-label": "Mark as read",
        onclick: () => this.markRead(n.id),
      }, icon("check", "icon small")))));
    }
    this.dispatchEvent(new Event("change"));
  }

  _toast(n) {
    const toast = h("button", { type: "button", class: "toast", dataset: { notificationId: n.id } },
      icon("bell", "icon small"),
      h("span", { class: "toast-text" },
        h("strong", null, titleOf(n)),
        h("span", null, n.message)));
    toast.addEventListener("click", () => {
      toast.remove();
      this._activate(n);
    });
    this.els.toasts.append(toast);
    setTimeout(() => toast.remove(), TOAST_MS);
  }
}

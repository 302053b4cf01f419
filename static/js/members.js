// The open study's members and who of them is online (from the HTTP list, the join ack and
// the user-online / user-offline / member-joined / member-left events).

import { avatar, h, setChildren } from "./dom.js";

export class Members extends EventTarget {
  constructor({ list, count, me }) {
    super();
    this.els = { list, count };
    this.me = me;
    this.members = new Map(); // userId -> {id, name, role, status, online, here}
    this.hereIds = []; // from the latest join ack; the member list may arrive after it
  }

  /** A new study: forget the last one's presence. */
  clear() {
    this.members = new Map();
    this.hereIds = [];
    this.render();
  }

  reset(members) {
    this.members = new Map(members.map((m) => [m.id, { ...m }]));
    this.markHere(this.hereIds);
  }

  /** The join ack's `online` list: these users have a socket in the study room. */
  markHere(userIds) {
    this.hereIds = userIds || [];
    for (const id of this.hereIds) {
      const member = this.members.get(Number(id));
      if (member) Object.assign(member, { online: true, here: true });
    }
    this.render();
  }

  setOnline(userId, online) {
    const member = this.members.get(Number(userId));
    if (!member) return;
    member.online = online;
    if (!online) member.here = false;
    this.render();
  }

  joined({ userId, userName }) {
    const id = Number(userId);
    let member = this.members.get(id);
    if (!member) {
      member = { id, name: String(userName ?? `User ${id}`), role: null, status: "ACTIVE", online: true, here: true };
      this.members.set(id, member);
    }
    Object.assign(member, { online: true, here: true });
    this.render();
  }

  left({ userId }) {
    const member = this.members.get(Number(userId));
    if (!member) return;
    member.here = false;
    this.render();
  }

  /** A name for notes ("by Bob", "assigned to you"). */
  nameOf(userId) {
    if (this.me() && Number(userId) === this.me().id) return "you";
    const member = this.members.get(Number(userId));
    return member ? member.name : `User ${userId}`;
  }

  /** Members a task can be assigned to. */
  active() {
    return [...this.members.values()].filter((m) => m.status === "ACTIVE").sort((a, b) => a.id - b.id);
  }

  render() {
    const meId = this.me().id;
    const rank = (m) => (m.id === meId ? 0 : m.online ? 1 : m.status === "ACTIVE" ? 2 : 3);
    const members = [...this.members.values()].sort((a, b) => rank(a) - rank(b) || a.name.localeCompare(b.name));
    const online = members.filter((m) => m.online).length;
    this.els.count.textContent = `${online} online`;
    setChildren(this.els.list, members.map((m) => {
      const presence = m.online ? "online" : "offline";
      let note = m.online ? (m.here ? "in this chat" : "online") : "offline";
      if (m.status !== "ACTIVE") note = m.status.toLowerCase();
      return h("li", {
        class: `member ${presence}`,
        dataset: { userId: m.id, online: String(m.online), status: m.status },
      },
      h("span", { class: "avatar-wrap" }, avatar(m), h("span", { class: "presence-dot", title: presence })),
      h("span", { class: "member-text" },
        h("span", { class: "member-name" }, m.name, m.id === meId ? h("span", { class: "you" }, " (you)") : null),
        h("span", { class: "member-note" }, note)),
      m.role && String(m.role).toUpperCase() !== "MEMBER"
        ? h("span", { class: "role" }, String(m.role).toLowerCase()) : null);
    }));
    this.dispatchEvent(new Event("change"));
  }
}

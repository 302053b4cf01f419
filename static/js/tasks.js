// The open study's tasks: change status and assignee over the HTTP API; every open page
// follows along through task-updated / task-assigned.

import { h, setChildren } from "./dom.js";

export const STATUS_LABEL = Object.freeze({ TODO: "To do", IN_PROGRESS: "In progress", DONE: "Done" });

export class Tasks {
  constructor({ list, api, members, onError }) {
    Object.assign(this, { list, api, members, onError });
    this.studyId = null;
    this.tasks = new Map();
    this.generation = 0;
    members.addEventListener("change", () => this.render());
  }

  async load(studyId) {
    const generation = ++this.generation;
    this.studyId = studyId;
    this.tasks.clear();
    setChildren(this.list, h("li", { class: "empty" }, "Loading tasks…"));
    try {
      const tasks = await this.api.tasks(studyId);
      if (generation !== this.generation) return;
      this.tasks = new Map(tasks.map((t) => [t.id, t]));
      this.render();
    } catch (err) {
      if (generation !== this.generation) return;
      setChildren(this.list, h("li", { class: "empty" }, "Could not load the tasks."));
      this.onError(err.message);
    }
  }

  /** task-updated {taskId, status, updatedBy} */
  updated({ taskId, status, updatedBy }) {
    const task = this.tasks.get(Number(taskId));
    if (!task) {
      if (this.studyId != null) this.load(this.studyId); // a task this page has not seen yet
      return;
    }
    task.status = String(status);
    task.note = `${STATUS_LABEL[task.status] || task.status} · by ${this.members.nameOf(updatedBy)}`;
    this.render(task.id);
  }

  /** task-assigned {taskId, assigneeId} */
  assigned({ taskId, assigneeId }) {
    const task = this.tasks.get(Number(taskId));
    if (!task) {
      if (this.studyId != null) this.load(this.studyId);
      return;
    }
    task.assigneeId = assigneeId == null ? null : Number(assigneeId);
    task.note = task.assigneeId == null ? "Unassigned" : `Assigned to ${this.members.nameOf(task.assigneeId)}`;
    this.render(task.id);
  }

  _changeStatus(task, status) {
    return this._optimistic(task, "status", status, "change", () => this.api.updateTask(task.id, status));
  }

  _assign(task, assigneeId) {
    return this._optimistic(task, "assigneeId", assigneeId, "assign", () => this.api.assignTask(task.id, assigneeId));
  }

  /** Show the change at once; put it back (and say why) if the server refuses it. */
  async _optimistic(task, field, value, verb, request) {
    const before = task[field];
    task[field] = value;
    this.render();
    try {
      await request();
    } catch (err) {
      task[field] = before;
      this.render();
      this.onError(`Could not ${verb} “${task.title}”: ${err.message}`);
    }
  }

  render(flashId = null) {
    if (this.studyId == null) return;
    const tasks = [...this.tasks.values()].sort((a, b) => a.id - b.id);
    if (tasks.length === 0) {
      setChildren(this.list, h("li", { class: "empty" }, "No tasks in this study."));
      return;
    }
    const people = this.members.active();
    setChildren(this.list, tasks.map((task) => {
      const statusSelect = h("select", {
        class: "task-status", "aria-label": `Status of ${task.title}`,
        onchange: (e) => this._changeStatus(task, e.target.value),
      }, Object.entries(STATUS_LABEL).map(([value, label]) =>
        h("option", { value, selected: value === task.status }, label)));
      const assigneeSelect = h("select", {
        class: "task-assignee", "aria-label": `Assignee of ${task.title}`,
        onchange: (e) => this._assign(task, Number(e.target.value)),
      },
      task.assigneeId == null ? h("option", { value: "", selected: true, disabled: true }, "Unassigned") : null,
      people.map((m) => h("option", { value: m.id, selected: m.id === task.assigneeId }, m.name)),
      task.assigneeId != null && !people.some((m) => m.id === task.assigneeId)
        ? h("option", { value: task.assigneeId, selected: true }, this.members.nameOf(task.assigneeId)) : null);
      const li = h("li", {
        class: `task status-${task.status.toLowerCase().replace("_", "-")}`,
        dataset: { taskId: task.id, status: task.status, assigneeId: task.assigneeId ?? "" },
      },
      h("div", { class: "task-title" }, task.title),
      h("div", { class: "task-controls" }, statusSelect, assigneeSelect),
      task.note ? h("div", { class: "task-note" }, task.note) : null);
      if (task.id === flashId) li.classList.add("flash");
      return li;
    }));
  }
}

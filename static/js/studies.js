// The list of the user's studies in the sidebar, with unread counts.
import { h, setChildren } from "./dom.js";

/** Render `studies` into `list`; `current` is highlighted, `unread` maps study id -> count. */
export function renderStudyList(list, { studies, current, unread, onOpen }) {
  if (studies.length === 0) {
    setChildren(list, h("li", { class: "empty" }, "No studies yet."));
    return;
  }
  setChildren(list, studies.map((study) => {
    const count = unread.get(study.id) || 0;
    const active = current && current.id === study.id;
    return h("li", null, h("button", {
      type: "button",
      class: active ? "study active" : "study",
      dataset: { studyId: study.id },
      "aria-current": active ? "true" : "false",
      onclick: () => onOpen(study.id),
    },
    h("span", { class: "study-mark", "aria-hidden": "true" }, study.name.slice(0, 1).toUpperCase()),
    h("span", { class: "study-text" },
      h("span", { class: "study-name" }, study.name),
      study.groupName ? h("span", { class: "study-group" }, study.groupName) : null),
    count ? h("span", { class: "badge", title: `${count} new` }, String(count)) : null));
  }));
}

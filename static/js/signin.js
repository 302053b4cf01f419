// The demo's sign-in list: who one can be, and what each demo user is in.
import { ApiError } from "./api.js";
import { avatar, h, setChildren } from "./dom.js";

/** What the demo data (coup seed-demo) has each user in, shown under their name. */
const DEMO_NOTES = {
  1: "Graph Theory · Dynamic Programming",
  2: "Graph Theory",
  3: "Graph Theory",
  4: "Dynamic Programming",
  5: "No studies yet",
};

/** Fill `list` with a button per demo user (GET /api/dev/users, demo mode only). */
export async function renderDemoUsers(list, api, { onPick, onError }) {
  let users;
  try {
    users = await api.devUsers();
  } catch (err) {
    const notDemo = err instanceof ApiError && err.status === 404;
    onError(notDemo ? "Demo sign-in is off on this server: start it with `coup serve --demo`." : err.message);
    return;
  }
  setChildren(list, users.map((user) => ({ ...user, note: DEMO_NOTES[user.id] || "" })).map((user) => h("li", null,
    h("button", {
      type: "button", class: "user-choice", dataset: { userId: user.id },
      onclick: () => onPick(user.id),
    },
    avatar(user, "avatar large"),
    h("span", { class: "user-choice-text" },
      h("span", { class: "user-choice-name" }, user.name),
      h("span", { class: "user-choice-note" }, user.note))))));
}

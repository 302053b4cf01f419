// The demo page: sign in as a demo user, then studies, chat, members, tasks and
// notifications over one Socket.IO (or SockJS, see transport.js) connection, with the
// ConnectionBanner on top.

import { ApiError, createApi, toMessage } from "./api.js";
import { renderBanner, renderTransport } from "./banner.js";
import { Chat } from "./chat.js";
import { $, avatar, h, setChildren } from "./dom.js";
import { ClientEvent, ServerEvent } from "./events.js";
import { Members } from "./members.js";
import { Notifications } from "./notifications.js";
import { renderDemoUsers } from "./signin.js";
import { renderStudyList } from "./studies.js";
import { Tasks } from "./tasks.js";
import { openConnection } from "./transport.js";

const SESSION_KEY = "coup-demo-session"; // per tab: two tabs can be two people
const JOIN_ACK_TIMEOUT_MS = 10_000;
const QUIET_ERROR_EVENTS = new Set([ClientEvent.MESSAGE, ClientEvent.TYPING, ClientEvent.NOTIFICATION_READ, ClientEvent.READ]);

const state = {
  session: null, // {userId, token}
  me: null, // {id, name}
  studies: [],
  current: null, // the open study
  joined: null, // study id whose room this socket is in
  connection: null,
};

const api = createApi({
  getToken: () => state.session && state.session.token,
  onUnauthorized: () => signOut("Your session has expired. Sign in again."),
});

// ---- small UI services -------------------------------------------------------------------

function toast(text, kind = "error") {
  const el = h("div", { class: `toast toast-${kind}`, role: kind === "error" ? "alert" : "status" }, text);
  $("#toasts").append(el);
  setTimeout(() => el.remove(), 5_000);
}

function setView(view) {
  $("#app").dataset.view = view;
  for (const button of document.querySelectorAll(".tabbar button")) {
    button.classList.toggle("active", button.dataset.view === view);
    button.setAttribute("aria-current", button.dataset.view === view ? "page" : "false");
  }
}

function studyName(studyId) {
  const study = state.studies.find((s) => s.id === studyId);
  return study ? study.name : `Study ${studyId}`;
}

// ---- the parts of the page ---------------------------------------------------------------

const socket = () => state.connection.socket;
const isConnected = () => Boolean(state.connection && state.connection.connected);

const members = new Members({ list: $("#member-list"), count: $("#online-count"), me: () => state.me });

const chat = new Chat({
  els: {
    log: $("#chat-log"), list: $("#messages"), historyStatus: $("#history-status"), typing: $("#typing"),
    form: $("#composer"), input: $("#composer-input"), jump: $("#jump"), counter: $("#composer-counter"),
  },
  api,
  socket,
  me: () => state.me,
  isReady: (studyId) => isConnected() && state.joined === studyId,
  onError: (message) => toast(message),
  nameOf: (userId) => members.nameOf(userId),
});

const tasks = new Tasks({ list: $("#task-list"), api, members, onError: (m) => toast(m) });

const notifications = new Notifications({
  api,
  socket,
  isConnected,
  studyName,
  els: {
    bell: $("#bell"), badge: $("#unread-count"), panel: $("#notif-panel"), list: $("#notif-list"),
    markAll: $("#mark-all-read"), close: $("#notif-close"), toasts: $("#toasts"),
  },
  onOpen: (n) => {
    openStudy(n.studyId);
    if (n.type === "TASK_ASSIGNED") setView("tasks");
  },
});
notifications.addEventListener("change", () => renderStudies());

// ---- sign-in -----------------------------------------------------------------------------

/** The users one can sign in as, from the server (GET /api/dev/users, demo mode only). */
function renderUserPicker() {
  return renderDemoUsers($("#demo-users"), api, { onPick: signIn, onError: showSignIn });
}

function showSignIn(message = "") {
  document.title = "CoUp Realtime — sign in";
  $("#app").hidden = true;
  $("#signin").hidden = false;
  const error = $("#signin-error");
  error.hidden = !message;
  error.textContent = message;
  renderBanner("signed-out"); // no connection, no banner
  $("#banner").hidden = true;
}

async function signIn(userId) {
  for (const button of document.querySelectorAll(".user-choice")) button.disabled = true;
  try {
    const { token } = await api.devToken(userId);
    const session = { userId, token };
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
    await startApp(session);
  } catch (err) {
    showSignIn(err.message);
  } finally {
    for (const button of document.querySelectorAll(".user-choice")) button.disabled = false;
  }
}

function signOut(message = "") {
  if (state.connection) state.connection.close();
  Object.assign(state, { session: null, me: null, studies: [], current: null, joined: null, connection: null });
  sessionStorage.removeItem(SESSION_KEY);
  chat.close();
  notifications.clear();
  history.replaceState(null, "", location.pathname + location.search);
  showSignIn(message);
  if (!$("#demo-users").children.length) renderUserPicker();
}

$("#banner-retry").addEventListener("click", () => state.connection && state.connection.retry());

for (const id of ["#signout", "#signout-2"]) $(id).addEventListener("click", () => signOut());

// ---- the signed-in app -------------------------------------------------------------------

async function startApp(session) {
  state.session = session;
  state.me = await api.me();
  $("#signin").hidden = true;
  $("#app").hidden = false;
  setChildren($("#me-avatar"), avatar(state.me));
  setChildren($("#me-avatar-2"), avatar(state.me));
  $("#me-name").textContent = state.me.name;
  $("#me-name-2").textContent = state.me.name;
  document.title = `CoUp — ${state.me.name}`;

  const connection = await openConnection({ userId: state.me.id, token: session.token });
  state.connection = connection;
  connection.addEventListener("state", (e) => {
    if (connection.socketState !== "connected") setNotJoined(); // the server forgot our rooms (or will)
    renderBanner(e.detail);
  });
  connection.addEventListener("transport", (e) => renderTransport(e.detail));
  connection.addEventListener("connect", (e) => onConnect(e.detail));
  connection.addEventListener("auth-failed", () => signOut("인증 실패 — sign in again."));
  wireEvents(connection.socket);
  renderBanner(connection.state);
  connection.start();

  const [studies] = await Promise.all([api.studies(), notifications.load()]);
  state.studies = studies;
  renderStudies();
  const fromHash = studyIdFromHash();
  const first = state.studies.find((s) => s.id === fromHash) || state.studies[0];
  if (first) openStudy(first.id);
  else showNoStudies();
}

function wireEvents(io) {
  io.on(ServerEvent.MESSAGE, (payload) => chat.receive(toMessage(payload)));
  io.on(ServerEvent.TYPING, (payload) => chat.typing(payload));
  io.on(ServerEvent.READ, (payload) => chat.noteRead(payload));
  io.on(ServerEvent.USER_ONLINE, ({ userId }) => members.setOnline(userId, true));
  io.on(ServerEvent.USER_OFFLINE, ({ userId }) => members.setOnline(userId, false));
  io.on(ServerEvent.MEMBER_JOINED, (payload) => members.joined(payload));
  io.on(ServerEvent.MEMBER_LEFT, (payload) => members.left(payload));
  io.on(ServerEvent.NOTIFICATION, (payload) => notifications.add(payload));
  io.on(ServerEvent.NOTIFICATION_READ, (payload) => notifications.remoteRead(payload));
  io.on(ServerEvent.TASK_UPDATED, (payload) => tasks.updated(payload));
  io.on(ServerEvent.TASK_ASSIGNED, (payload) => tasks.assigned(payload));
  io.on(ServerEvent.REMOVED_FROM_STUDY, (payload) => removedFromStudy(payload));
  io.on(ServerEvent.ERROR, (payload) => {
    // the server disconnects a socket whose token ran out: start again from signing in
    if (payload && payload.code === "TOKEN_EXPIRED") return signOut("인증이 만료되었습니다 — sign in again.");
    if (!payload || QUIET_ERROR_EVENTS.has(payload.event)) return;
    toast(String(payload.message || "Something went wrong"));
  });
}

/** Our membership of a study ended: the server took us out of its room; the page follows. */
function removedFromStudy({ studyId, message }) {
  toast(`${studyName(studyId)}: ${message || "스터디 멤버가 아닙니다"}`);
  state.studies = state.studies.filter((s) => s.id !== studyId);
  renderStudies();
  if (!state.current || state.current.id !== studyId) return;
  state.current = null;
  setNotJoined();
  $("#topbar-study").textContent = "";
  if (state.studies.length) openStudy(state.studies[0].id);
  else showNoStudies();
}

/** Every (re)connection: re-join the open study; after a gap nothing replayed, refresh. */
function setNotJoined() {
  state.joined = null;
  delete $("#chat").dataset.joined;
}

function onConnect({ recovered, reconnect }) {
  setNotJoined();
  if (reconnect && !recovered) {
    notifications.load();
    if (state.current) {
      refreshMembers(state.current.id);
      tasks.load(state.current.id);
    }
  }
  if (state.current) joinStudy(state.current.id, { resync: reconnect });
}

function joinStudy(studyId, { resync = false } = {}) {
  socket().timeout(JOIN_ACK_TIMEOUT_MS).emit(ClientEvent.JOIN_STUDY, { studyId }, (err, ack) => {
    if (!state.current || state.current.id !== studyId) return;
    if (err) {
      if (isConnected()) toast(`Could not enter ${studyName(studyId)}: no answer from the server.`);
      return;
    }
    if (!ack || ack.ok === false) return; // the server's `error` event already said why
    state.joined = studyId;
    $("#chat").dataset.joined = String(studyId);
    members.markHere(ack.online);
    if (resync) chat.resync();
    else chat.flush(studyId);
  });
}

async function refreshMembers(studyId) {
  try {
    const list = await api.members(studyId);
    if (state.current && state.current.id === studyId) members.reset(list);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) toast(`Could not load the members: ${err.message}`);
  }
}

function openStudy(studyId) {
  const study = state.studies.find((s) => s.id === studyId);
  if (!study) return;
  setView("chat");
  if (state.current && state.current.id === studyId) return;
  if (state.joined != null && isConnected()) socket().emit(ClientEvent.LEAVE_STUDY, { studyId: state.joined });
  setNotJoined();
  state.current = study;
  history.replaceState(null, "", `${location.pathname}${location.search}#study-${study.id}`);
  $("#app").classList.remove("no-study");
  $("#chat-empty").hidden = true;
  $("#chat").hidden = false;
  $("#chat-title").textContent = study.name;
  $("#chat-sub").textContent = study.groupName || "";
  $("#topbar-study").textContent = study.name;
  renderStudies();
  members.clear();
  chat.open(study);
  refreshMembers(study.id);
  tasks.load(study.id);
  notifications.markStudyRead(study.id);
  if (isConnected()) joinStudy(study.id);
}

function showNoStudies() {
  $("#app").classList.add("no-study");
  $("#chat-empty").hidden = false;
  setChildren($("#chat-empty"),
    h("strong", null, "You are not in any study yet."),
    h("span", null, "When a study leader lets you in, its chat, members and tasks show up here."));
  $("#chat").hidden = true;
  setChildren($("#task-list"));
  members.clear();
}

function renderStudies() {
  renderStudyList($("#study-list"), {
    studies: state.studies, current: state.current, unread: notifications.unreadByStudy(), onOpen: openStudy,
  });
}

function studyIdFromHash() {
  const match = /^#study-(\d+)$/.exec(location.hash);
  return match ? Number(match[1]) : null;
}

window.addEventListener("hashchange", () => {
  const id = studyIdFromHash();
  if (id != null && state.connection) openStudy(id);
});

for (const button of document.querySelectorAll(".tabbar button")) {
  button.addEventListener("click", () => setView(button.dataset.view));
}

// ---- boot --------------------------------------------------------------------------------

async function boot() {
  setView("chat");
  let saved = null;
  try {
    saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
  } catch (err) {
    saved = null;
  }
  if (!saved || !saved.token) {
    showSignIn();
    await renderUserPicker();
    return;
  }
  try {
    await startApp(saved);
  } catch (err) {
    if (state.session) signOut(err instanceof ApiError && err.status === 401 ? "" : err.message);
    else if (!$("#demo-users").children.length) renderUserPicker();
  }
}

boot();

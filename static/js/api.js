// The CoUp HTTP API, in one place. Every request and every response shape the page relies
// on lives here, so adapting to the server means editing this file only.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const itemsOf = (data) => (Array.isArray(data) ? data : (data && data.items) || []);

/** A user as the page uses it: {id, name}. */
export function toUser(raw) {
  if (!raw) return null;
  return { id: Number(raw.id ?? raw.userId), name: String(raw.name ?? raw.userName ?? `User ${raw.id}`) };
}

function toStudy(raw) {
  return {
    id: Number(raw.id),
    name: String(raw.name ?? raw.title ?? `Study ${raw.id}`),
    groupName: raw.group ? String(raw.group.name ?? "") : String(raw.groupName ?? ""),
    role: raw.role ?? null,
  };
}

function toMember(raw) {
  const user = toUser(raw.user ?? raw);
  return {
    id: user.id,
    name: user.name,
    role: raw.role ?? null,
    status: raw.status ?? "ACTIVE",
    online: Boolean(raw.online),
    here: Boolean(raw.inRoom), // has a socket in the study room right now
  };
}

/** A chat message: {id, studyId, content, fileId, user: {id, name}, createdAt}. */
export function toMessage(raw) {
  return {
    id: Number(raw.id),
    studyId: Number(raw.studyId),
    content: String(raw.content ?? ""),
    fileId: raw.fileId ?? null,
    user: toUser(raw.user) ?? { id: 0, name: "?" },
    createdAt: raw.createdAt,
    clientMessageId: raw.clientMessageId ?? null,
  };
}

/** A notification: {id, type, message, studyId, data, read, createdAt}. */
export function toNotification(raw) {
  return {
    id: Number(raw.id),
    type: String(raw.type ?? ""),
    message: String(raw.message ?? ""),
    studyId: raw.studyId == null ? null : Number(raw.studyId),
    data: raw.data ?? null,
    read: Boolean(raw.read ?? raw.readAt),
    createdAt: raw.createdAt ?? new Date().toISOString(),
  };
}

function toTask(raw) {
  const assigneeId = raw.assigneeId ?? (raw.assignee ? raw.assignee.id : null);
  return {
    id: Number(raw.id),
    studyId: Number(raw.studyId),
    title: String(raw.title ?? ""),
    status: String(raw.status ?? "TODO"),
    assigneeId: assigneeId == null ? null : Number(assigneeId),
  };
}

/**
 * createApi({getToken, onUnauthorized}) -> the API calls.
 * A 401 calls onUnauthorized (the page signs out) and still throws.
 */
export function createApi({ base = "", getToken = () => null, onUnauthorized = () => {} } = {}) {
  async function call(method, path, body) {
    const headers = { Accept: "application/json" };
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (err) {
      throw new ApiError(0, "NETWORK", "The server cannot be reached");
    }
    const data = response.status === 204 ? null : await response.json().catch(() => null);
    if (!response.ok) {
      const error = (data && data.error) || {};
      const failure = new ApiError(response.status, error.code || `HTTP_${response.status}`,
        error.message || response.statusText || "Request failed");
      if (response.status === 401) onUnauthorized(failure);
      throw failure;
    }
    return data;
  }

  return {
    /** Demo mode only: a token for one of the demo users. */
    async devToken(userId) {
      const data = await call("POST", "/api/dev/token", { userId });
      return { token: data.token, user: toUser({ id: data.userId ?? userId, name: data.userName }) };
    },
    /** Demo mode only: who one can sign in as. */
    async devUsers() {
      return itemsOf(await call("GET", "/api/dev/users")).map(toUser);
    },
    async me() {
      const data = await call("GET", "/api/me");
      return toUser(data.user ?? data);
    },
    async studies() {
      return itemsOf(await call("GET", "/api/studies")).map(toStudy);
    },
    async members(studyId) {
      return itemsOf(await call("GET", `/api/studies/${studyId}/members`)).map(toMember);
    },
    /** Newest first, `limit` at most, older than message id `before` when given. */
    async messages(studyId, { before = null, limit = 30 } = {}) {
      const query = new URLSearchParams({ limit: String(limit) });
      if (before != null) query.set("before", String(before));
      const data = await call("GET", `/api/studies/${studyId}/messages?${query}`);
      const items = itemsOf(data).map(toMessage);
      const hasMore = data && typeof data.hasMore === "boolean" ? data.hasMore : items.length >= limit;
      return { items, hasMore };
    },
    async notifications({ unread = false } = {}) {
      const path = unread ? "/api/notifications?unread=1" : "/api/notifications";
      return itemsOf(await call("GET", path)).map(toNotification);
    },
    async readNotification(notificationId) {
      await call("POST", `/api/notifications/${notificationId}/read`);
    },
    async tasks(studyId) {
      return itemsOf(await call("GET", `/api/studies/${studyId}/tasks`)).map(toTask);
    },
    async updateTask(taskId, status) {
      return call("PATCH", `/api/tasks/${taskId}`, { status });
    },
    async assignTask(taskId, assigneeId) {
      return call("POST", `/api/tasks/${taskId}/assign`, { assigneeId });
    },
  };
}

// The product's Socket.IO events (shared/MISSION.md), spelled once for the whole page.
// `eslint.config.js` refuses these names as string literals in `on`/`emit` calls elsewhere,
// and tests/test_js_lint.py checks both lists against what coup/domain handles and emits.

/** Events the page sends (client → server). */
export const ClientEvent = Object.freeze({
  JOIN_STUDY: "join-study",
  LEAVE_STUDY: "leave-study",
  MESSAGE: "message",
  TYPING: "typing",
  READ: "read",
  NOTIFICATION_READ: "notification-read",
});

/** Events the page listens to (server → client). */
export const ServerEvent = Object.freeze({
  MESSAGE: "message",
  TYPING: "typing",
  READ: "read",
  NOTIFICATION: "notification",
  NOTIFICATION_READ: "notification-read",
  USER_ONLINE: "user-online",
  USER_OFFLINE: "user-offline",
  MEMBER_JOINED: "member-joined",
  MEMBER_LEFT: "member-left",
  TASK_UPDATED: "task-updated",
  TASK_ASSIGNED: "task-assigned",
  REMOVED_FROM_STUDY: "removed-from-study",
  ERROR: "error",
});

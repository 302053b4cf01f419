-- rows in every table of the first released schema (ids assigned by the database, from 1)
INSERT INTO "users" ("name", "created_at") VALUES ('Alice', '2026-11-28 02:40:00.123'), ('Bob', '2026-11-28 02:41:00.000'), ('채원', '2026-11-28 02:42:00.500');
INSERT INTO "groups" ("name") VALUES ('Algorithms Club'), ('빈 그룹');
INSERT INTO "group_members" ("group_id", "user_id") VALUES (1, 1), (1, 2), (1, 3);
INSERT INTO "studies" ("group_id", "name") VALUES (1, 'Graph Theory'), (1, 'Dynamic Programming');
INSERT INTO "study_members" ("study_id", "user_id", "role", "status") VALUES (1, 1, 'LEADER', 'ACTIVE'), (1, 2, 'MEMBER', 'ACTIVE'), (1, 3, 'MEMBER', 'PENDING'), (2, 1, 'MEMBER', 'INACTIVE');
INSERT INTO "messages" ("study_id", "user_id", "seq", "content", "file_id", "client_message_id", "created_at") VALUES (1, 1, 1, 'hello', NULL, 'c-1', '2026-11-28 03:00:00.001'), (1, 2, 2, '안녕하세요 👋', 42, NULL, '2026-11-28 03:00:01.002'), (1, 1, 3, 'line one
line two, with ''quotes''', NULL, 'c-2', '2026-11-28 03:00:02.003'), (2, 1, 1, 'other study', NULL, NULL, '2026-11-28 03:00:03.004');
INSERT INTO "message_reads" ("message_id", "user_id", "read_at") VALUES (1, 2, '2026-11-28 03:01:00.000'), (2, 1, '2026-11-28 03:01:01.000');
INSERT INTO "notifications" ("user_id", "type", "message", "study_id", "data", "created_at", "read_at") VALUES (2, 'NEW_MESSAGE', 'Alice wrote', 1, '{"messageId":1}', '2026-11-28 03:00:00.010', NULL), (3, 'TASK_ASSIGNED', '과제가 배정되었습니다', NULL, NULL, '2026-11-28 03:05:00.000', '2026-11-28 03:06:00.000');
INSERT INTO "tasks" ("study_id", "title", "status", "assignee_id", "updated_by_id", "created_at", "updated_at") VALUES (1, 'Read chapter 3', 'TODO', NULL, NULL, '2026-11-28 02:50:00.000', '2026-11-28 02:50:00.000'), (1, 'Solve problem set', 'IN_PROGRESS', 2, 1, '2026-11-28 02:51:00.000', '2026-11-28 03:10:00.000');
INSERT INTO "server_settings" ("key", "value") VALUES ('demo_jwt_secret', 'a-secret-kept-by-a-first-release-demo');

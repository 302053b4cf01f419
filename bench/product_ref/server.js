// The product path reference for bench/product_path.py: the chat a straightforward Node app
// would write with socket.io 4.8 and `pg`, on the same PostgreSQL schema as CoUp (created by
// `coup migrate`).
//
// - connect: handshake auth {userId, token}; the JWT is verified (jsonwebtoken, HS256) and the
//   user read from `users` (as CoUp does); otherwise connect_error '인증 실패'.
// - join-study {studyId}: the ACTIVE membership is read from `study_members`; joins `study:<id>`.
// - message {studyId, content, clientMessageId}: the socket must be in the room; seq is the
//   study's in-memory counter (read from MAX(seq) once per study); one INSERT per message
//   (prepared, pooled, autocommit) ... ON CONFLICT (user_id, client_message_id) DO NOTHING, so
//   a retry is stored once; the ack after the INSERT returned, and the `message` event to the
//   room, sender included.
//
// What it does not do that CoUp does (so it is the lighter of the two): re-check membership in
// the database per message, store NEW_MESSAGE notifications for members not in the room (none
// in the benchmark: every member is in the room), keep the room's messages in seq order (two
// INSERTs of one room run at once and may commit and broadcast out of order).
//
// Env: PORT, DATABASE_URL (postgresql://...), PG_SCHEMA (search_path), JWT_SECRET, PG_POOL (10).
'use strict';
const http = require('http');
const os = require('os');
const path = require('path');
const jwt = require('jsonwebtoken');
const { Pool } = require('pg');

const deps = process.env.BENCH_DEPS || path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'),
  'coup-bench', 'deps');
const { Server } = require(path.join(deps, 'node_modules', 'socket.io'));

const port = Number(process.env.PORT || 3000);
const secret = process.env.JWT_SECRET;
const pool = new Pool({
  connectionString: process.env.DATABASE_URL,
  max: Number(process.env.PG_POOL || 10),
  options: process.env.PG_SCHEMA ? `-c search_path=${process.env.PG_SCHEMA}` : undefined,
});

const USER = { name: 'user', text: 'SELECT id, name FROM users WHERE id = $1' };
const MEMBER = { name: 'member', text: 'SELECT status FROM study_members WHERE study_id = $1 AND user_id = $2' };
const MAX_SEQ = { name: 'max-seq', text: 'SELECT COALESCE(MAX(seq), 0) AS seq FROM messages WHERE study_id = $1' };
const INSERT = {
  name: 'insert-message',
  text: 'INSERT INTO messages (study_id, user_id, seq, content, file_id, client_message_id, created_at) '
    + 'VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (user_id, client_message_id) DO NOTHING RETURNING id',
};
const EXISTING = {
  name: 'existing',
  text: 'SELECT id, study_id, seq, created_at FROM messages WHERE user_id = $1 AND client_message_id = $2',
};

const query = (statement, values) => pool.query({ ...statement, values });
const refusal = (code) => ({ ok: false, error: { code, message: code } });

/** study id -> Promise of the last seq handed out (read from the table once, then counted here) */
const lastSeq = new Map();
function nextSeq(studyId) {
  const last = lastSeq.get(studyId) || query(MAX_SEQ, [studyId]).then((r) => Number(r.rows[0].seq));
  const next = last.then((seq) => seq + 1); // chained before any await: two sends never share a seq
  lastSeq.set(studyId, next);
  return next;
}

const httpServer = http.createServer();
const io = new Server(httpServer);

io.use(async (socket, next) => {
  const auth = socket.handshake.auth || {};
  try {
    const claims = jwt.verify(auth.token, secret, { algorithms: ['HS256'] });
    if (String(claims.sub) !== String(auth.userId)) throw new Error('token is not for this user');
    const { rows } = await query(USER, [Number(auth.userId)]);
    if (rows.length === 0) throw new Error('no such user');
    socket.data.user = { id: rows[0].id, name: rows[0].name };
    next();
  } catch {
    next(new Error('인증 실패'));
  }
});

io.on('connection', (socket) => {
  socket.on('join-study', async (data, ack) => {
    const studyId = Number(data && data.studyId);
    const { rows } = await query(MEMBER, [studyId, socket.data.user.id]);
    if (rows.length === 0 || rows[0].status !== 'ACTIVE') {
      socket.emit('error', { message: '스터디 멤버가 아닙니다' });
      if (ack) ack(refusal('NOT_MEMBER'));
      return;
    }
    socket.join(`study:${studyId}`);
    if (ack) ack({ ok: true, studyId });
  });

  socket.on('message', async (data, ack) => {
    const reply = typeof ack === 'function' ? ack : () => {};
    const studyId = Number(data && data.studyId);
    const room = `study:${studyId}`;
    if (!socket.rooms.has(room) || typeof data.content !== 'string') {
      reply(refusal('NOT_IN_STUDY'));
      return;
    }
    const user = socket.data.user;
    const clientMessageId = data.clientMessageId || null;
    try {
      const seq = await nextSeq(studyId);
      const createdAt = new Date();
      const { rows } = await query(INSERT, [studyId, user.id, seq, data.content, data.fileId || null,
        clientMessageId, createdAt]);
      if (rows.length === 0) { // a retry: answer from the stored one
        const existing = (await query(EXISTING, [user.id, clientMessageId])).rows[0];
        reply({ ok: true, id: existing.id, studyId, seq: Number(existing.seq), duplicate: true });
        return;
      }
      const message = { id: rows[0].id, studyId, seq, content: data.content, fileId: data.fileId || null,
        user: { id: user.id, name: user.name }, createdAt: createdAt.toISOString(), clientMessageId };
      reply({ ok: true, id: message.id, studyId, seq, createdAt: message.createdAt, duplicate: false });
      io.to(room).emit('message', message);
    } catch (err) {
      console.error('storing a message failed:', err.message);
      reply(refusal('RETRY'));
    }
  });
});

httpServer.listen(port, '127.0.0.1', () => {
  console.log(`product reference listening on 127.0.0.1:${port}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    io.close();
    pool.end().finally(() => process.exit(0));
  });
}

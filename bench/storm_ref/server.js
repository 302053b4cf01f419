// The reconnect storm reference for bench/reconnect_storm.py: Node socket.io 4.8 with its Redis
// adapter (@socket.io/redis-adapter 8, node-redis 4), default server settings, as a Node app
// spread over several processes would run. Behaviour of the shared harness's peer
// (servers/node_socketio.js), plus an acknowledgement of `join-study` so the bench sees the join:
//
// - join-study {studyId} -> joins room study:<id>, acks true;
// - message {studyId, content} -> broadcasts message {id, content, user, createdAt} to the room.
//
// Env: PORT, REDIS_URL. socket.io itself comes from the shared peers (~/.cache/coup-bench/deps).
'use strict';
const http = require('http');
const os = require('os');
const path = require('path');
const { createClient } = require('redis');
const { createAdapter } = require('@socket.io/redis-adapter');

const deps = process.env.BENCH_DEPS || path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'),
  'coup-bench', 'deps');
const { Server } = require(path.join(deps, 'node_modules', 'socket.io'));

async function main() {
  const pub = createClient({ url: process.env.REDIS_URL });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  const httpServer = http.createServer();
  const io = new Server(httpServer, { adapter: createAdapter(pub, sub) }); // otherwise default settings
  let seq = 0;
  io.on('connection', (socket) => {
    socket.on('join-study', (d, ack) => {
      if (d && d.studyId != null) socket.join('study:' + d.studyId);
      if (typeof ack === 'function') ack(true);
    });
    socket.on('message', (d) => {
      if (!d || d.studyId == null) return;
      io.to('study:' + d.studyId).emit('message', {
        id: ++seq, content: d.content, user: { id: socket.id }, createdAt: new Date().toISOString(),
      });
    });
  });
  // http.Server.listen's default backlog is 511, capped by net.core.somaxconn
  httpServer.listen(Number(process.env.PORT), '127.0.0.1', () => console.log(`listening on ${process.env.PORT}`));
}

main().catch((err) => { console.error(err); process.exit(1); });
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));

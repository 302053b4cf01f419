// The shared harness's Node peer (../shared/bench/servers/node_socketio.js) with
// permessage-deflate on: `perMessageDeflate: { threshold }` (socket.io passes it to `ws`;
// THRESHOLD env, default 1024 like ours). Everything else is socket.io 4.8's defaults, so
// `ws` keeps a compression context per connection (context takeover) and compresses each
// broadcast once per receiver. Used by bench/deflate_fanout.py.
'use strict';
const path = require('path');
const http = require('http');
const deps = process.env.BENCH_DEPS || path.join(require('os').homedir(), '.cache', 'coup-bench', 'deps');
const { Server } = require(path.join(deps, 'node_modules', 'socket.io'));

const port = Number(process.env.PORT || process.argv[2] || 3000);
const threshold = Number(process.env.THRESHOLD || 1024);
const httpServer = http.createServer();
const io = new Server(httpServer, { perMessageDeflate: { threshold } });
let seq = 0;

io.on('connection', (socket) => {
  socket.on('join-study', (d) => {
    if (d && d.studyId != null) socket.join('study:' + d.studyId);
  });
  socket.on('message', (d) => {
    if (!d || d.studyId == null) return;
    io.to('study:' + d.studyId).emit('message', {
      id: ++seq,
      content: d.content,
      user: { id: socket.id },
      createdAt: new Date().toISOString(),
    });
  });
});

httpServer.listen(port, '127.0.0.1', () => {
  console.log(`node socket.io (perMessageDeflate threshold ${threshold}) listening on 127.0.0.1:${port}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));

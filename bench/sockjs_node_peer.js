// The sockjs-node peer of bench/pollbench.py: sockjs 0.3.x (what sockjs-client 1.x is tested
// against) with the behaviour of bench/server.py, spoken in our SockJS envelope
// (coup/transports/sockjs/envelope.py) so the same client drives both:
//   {"type":"auth",...}                                   -> {"type":"connect","sid":..}
//   {"type":"event","event":"join-study","args":[{studyId}]} -> join room study:<id>
//   {"type":"event","event":"message","args":[{studyId,content}]}
//       -> {"type":"event","event":"message","args":[{id, content, user:{id}, createdAt}]} to the room
// A room is a Set of connections; a broadcast serialises once and writes the same string to
// each member (sockjs-node queues it and sends one a[...] frame per request), as a
// straightforward app on sockjs-node would. Default sockjs settings; prefix /sockjs.
//   PORT=27300 node bench/sockjs_node_peer.js   (sockjs from $BENCH_DEPS or ~/.cache/coup-bench/deps)
'use strict';
const path = require('path');
const http = require('http');
const os = require('os');

const deps = process.env.BENCH_DEPS || path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'),
  'coup-bench', 'deps');
const sockjs = require(path.join(deps, 'node_modules', 'sockjs'));

const port = Number(process.env.PORT || process.argv[2] || 3000);
const rooms = new Map();
let seq = 0;

const service = sockjs.createServer({ prefix: '/sockjs', log: () => {} });
service.on('connection', (conn) => {
  let authed = false;
  const joined = new Set();
  conn.on('data', (text) => {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      conn.close(4400, 'bad_message');
      return;
    }
    if (msg.type === 'auth') {
      authed = true;
      conn.write(JSON.stringify({ type: 'connect', sid: conn.id }));
      return;
    }
    if (!authed || msg.type !== 'event' || !Array.isArray(msg.args)) return;
    const d = msg.args[0];
    if (!d || d.studyId == null) return;
    const name = 'study:' + d.studyId;
    if (msg.event === 'join-study') {
      let room = rooms.get(name);
      if (!room) rooms.set(name, (room = new Set()));
      room.add(conn);
      joined.add(name);
    } else if (msg.event === 'message') {
      const room = rooms.get(name);
      if (!room) return;
      const out = JSON.stringify({ type: 'event', event: 'message', args: [{
        id: ++seq, content: d.content, user: { id: conn.id }, createdAt: new Date().toISOString(),
      }] });
      for (const member of room) member.write(out);
    }
  });
  conn.on('close', () => {
    for (const name of joined) {
      const room = rooms.get(name);
      if (room) {
        room.delete(conn);
        if (room.size === 0) rooms.delete(name);
      }
    }
  });
});

const server = http.createServer();
service.installHandlers(server);
server.listen(port, '127.0.0.1', () => console.log(`sockjs-node listening on 127.0.0.1:${port}`));
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));

// Load generator of bench/product_path.py: N signed-in users, each in one study room, send chat
// messages with acks (Socket.IO v5 over WebSocket, the `ws` package), and every member reads
// the room. The same for CoUp and the Node reference.
//
//   node loadgen.js --port P --users users.json --mode closed --duration 10 --warmup 2
//   node loadgen.js --port P --users users.json --mode open --rate 1000 --duration 10 --warmup 2
//
// users.json: [{userId, token, studyId}]. closed: every user sends its next message when the
// previous one is acked (the maximum rate). open: messages leave at `rate` per second in total,
// round robin over the users, acked or not (latency at a given load, no coordinated omission:
// latency counts from the moment the message was due).
// Figures: acked messages/s in the measured window (after the warm-up), send -> ack and
// send -> delivered to the last member of the room (sender included), p50 / p99 in ms.
// Prints one JSON line on stdout.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { performance } = require('perf_hooks');

const deps = process.env.BENCH_DEPS || path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'),
  'coup-bench', 'deps');
const WebSocket = require(path.join(deps, 'node_modules', 'ws'));

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const PORT = Number(args.port);
const MODE = args.mode || 'closed';
const DURATION = Number(args.duration || 10) * 1000;
const WARMUP = Number(args.warmup || 2) * 1000;
const RATE = Number(args.rate || 0);
const LABEL = args.label || 'run';
const users = JSON.parse(fs.readFileSync(args.users, 'utf8'));
const now = () => performance.now();
const log = (msg) => process.stderr.write(`[loadgen ${LABEL}] ${msg}\n`);

const members = new Map(); // studyId -> how many users read its room
for (const u of users) members.set(u.studyId, (members.get(u.studyId) || 0) + 1);

/** clientMessageId -> {due, remaining, counted} for messages in flight */
const inflight = new Map();
const ackLat = [];
const lastLat = [];
let acked = 0;
let refused = 0;
let windowStart = Infinity;
let windowEnd = Infinity;
let stopping = false;
const refusals = {};

function connect(user) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${PORT}/socket.io/?EIO=4&transport=websocket`, { perMessageDeflate: false });
    const client = { ws, user, acks: new Map(), nextAck: 1, sent: 0 };
    const fail = (err) => reject(new Error(`user ${user.userId}: ${err}`));
    const timer = setTimeout(() => fail('no join within 30 s'), 30000);
    ws.on('error', fail);
    ws.on('message', (buf) => {
      const text = buf.toString();
      if (text === '2') { ws.send('3'); return; }
      if (text[0] === '0') { ws.send(`40${JSON.stringify({ userId: user.userId, token: user.token })}`); return; }
      if (text.startsWith('44')) { fail(`connect refused: ${text}`); return; }
      if (text.startsWith('40')) {
        client.acks.set(0, (res) => {
          clearTimeout(timer);
          if (res && res.ok) resolve(client); else fail(`join refused: ${JSON.stringify(res)}`);
        });
        ws.send(`420${JSON.stringify(['join-study', { studyId: user.studyId }])}`);
        return;
      }
      if (text.startsWith('43')) {
        let i = 2;
        while (text.charCodeAt(i) >= 48 && text.charCodeAt(i) <= 57) i++;
        const id = Number(text.slice(2, i));
        const done = client.acks.get(id);
        if (done) { client.acks.delete(id); done(JSON.parse(text.slice(i))[0]); }
        return;
      }
      if (text.startsWith('42')) {
        const [event, body] = JSON.parse(text.slice(2));
        if (event === 'message') delivered(body);
      }
    });
  });
}

function delivered(message) {
  const entry = inflight.get(message.clientMessageId);
  if (!entry) return;
  entry.remaining -= 1;
  if (entry.remaining === 0) {
    if (entry.counted) lastLat.push(now() - entry.due);
    if (entry.acked) inflight.delete(message.clientMessageId);
  }
}

function send(client, due) {
  const id = client.nextAck++;
  client.sent += 1;
  const cmid = `${LABEL}-${client.user.userId}-${client.sent}`;
  const entry = { due, remaining: members.get(client.user.studyId), counted: due >= windowStart && due < windowEnd,
    acked: false };
  inflight.set(cmid, entry);
  return new Promise((resolve) => {
    client.acks.set(id, (res) => {
      const t = now();
      entry.acked = true;
      if (entry.remaining === 0) inflight.delete(cmid);
      if (res && res.ok) {
        if (t >= windowStart && t < windowEnd) acked += 1;
        if (entry.counted) ackLat.push(t - due);
      } else {
        refused += 1;
        const code = (res && res.error && res.error.code) || 'NO_ACK';
        refusals[code] = (refusals[code] || 0) + 1;
        inflight.delete(cmid);
      }
      resolve();
    });
    client.ws.send(`42${id}${JSON.stringify(['message', { studyId: client.user.studyId, content: `hello from ${client.user.userId}`, clientMessageId: cmid }])}`);
  });
}

function pct(values, p) {
  if (values.length === 0) return null;
  const sorted = Float64Array.from(values).sort();
  return Math.round(sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] * 100) / 100;
}

async function main() {
  const clients = [];
  const started = now();
  for (let i = 0; i < users.length; i += 50) {
    clients.push(...await Promise.all(users.slice(i, i + 50).map(connect)));
  }
  log(`${clients.length} users connected and joined in ${((now() - started) / 1000).toFixed(1)} s`);
  const t0 = now();
  windowStart = t0 + WARMUP;
  windowEnd = windowStart + DURATION;
  const cpu0 = process.cpuUsage();
  if (MODE === 'closed') {
    await Promise.all(clients.map(async (client) => {
      while (now() < windowEnd) await send(client, now());
    }));
  } else {
    let sent = 0;
    let turn = 0;
    const outstanding = [];
    await new Promise((resolve) => {
      const tick = setInterval(() => {
        const t = now();
        const end = Math.min(t, windowEnd);
        const due = Math.floor(((end - t0) / 1000) * RATE);
        for (; sent < due; sent++) {
          outstanding.push(send(clients[turn++ % clients.length], t0 + (sent / RATE) * 1000));
        }
        if (t >= windowEnd) { clearInterval(tick); resolve(); }
      }, 1);
    });
    await Promise.race([Promise.all(outstanding), new Promise((r) => setTimeout(r, 15000))]);
  }
  stopping = true;
  // the last deliveries of messages counted in the window
  const until = now() + 5000;
  while (now() < until && [...inflight.values()].some((e) => e.counted && e.remaining > 0)) {
    await new Promise((r) => setTimeout(r, 20));
  }
  const cpu = process.cpuUsage(cpu0);
  const elapsed = (now() - t0) / 1000;
  const windowS = DURATION / 1000;
  const undelivered = [...inflight.values()].filter((e) => e.counted && e.remaining > 0).length;
  process.stdout.write(`${JSON.stringify({
    mode: MODE, users: clients.length, studies: members.size, rate: RATE || null, window_s: windowS,
    acked_per_s: Math.round(acked / windowS), acked, refused, refusals, undelivered,
    ack_p50_ms: pct(ackLat, 50), ack_p99_ms: pct(ackLat, 99),
    last_p50_ms: pct(lastLat, 50), last_p99_ms: pct(lastLat, 99), measured: ackLat.length,
    loadgen_cpu_pct: Math.round(((cpu.user + cpu.system) / 1e4) / elapsed),
  })}\n`);
  for (const client of clients) client.ws.terminate();
  if (stopping) process.exit(0);
}

main().catch((err) => { log(err.stack || String(err)); process.exit(1); });

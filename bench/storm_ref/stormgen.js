// The reconnect storm's clients for bench/reconnect_storm.py (`--client node`, the default): N raw
// Socket.IO clients over WebSocket on `net` (RFC 6455 by hand, as the shared harness's
// loadgen.js speaks it), far cheaper per connect than the Python clients, so the storm measures
// the servers. Each client connects to the first port from one of the loopback addresses, joins
// study room `index / 20` (`join-study` with an ack), and prints "ready" once all have. When its
// connection ends (the node is killed), it waits socket.io-client's first reconnection delay
// (0.5-1.5 s), reconnects to survivor `index % S` (the next one on a retry, with the delay
// doubled up to 5 s) and joins again. Printed at the end, one JSON line: per client
// [closed, attempt, connected, joined, attempts] in CLOCK_MONOTONIC seconds (Python's
// time.monotonic()), null where it never got there.
//
//   node stormgen.js --first PORT --survivors P1,P2 --clients N [--in-flight 200] [--timeout 90]
'use strict';
const net = require('net');
const crypto = require('crypto');

const argv = {};
for (let i = 2; i < process.argv.length; i += 2) argv[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const FIRST = Number(argv.first);
const SURVIVORS = String(argv.survivors).split(',').map(Number);
const N = Number(argv.clients || 1000);
const IN_FLIGHT = Number(argv['in-flight'] || 200);
const TIMEOUT_S = Number(argv.timeout || 90);
const ADDRESSES = Array.from({ length: 10 }, (_, i) => `127.0.0.${i + 2}`);
const mono = () => Number(process.hrtime.bigint()) / 1e9; // CLOCK_MONOTONIC on Linux

function frame(text) { // a masked client text frame
  const payload = Buffer.from(text);
  const head = payload.length < 126 ? 2 : 4;
  const out = Buffer.allocUnsafe(head + 4 + payload.length);
  out[0] = 0x81;
  if (head === 2) out[1] = 0x80 | payload.length;
  else { out[1] = 0x80 | 126; out.writeUInt16BE(payload.length, 2); }
  const mask = crypto.randomBytes(4);
  mask.copy(out, head);
  for (let i = 0; i < payload.length; i++) out[head + 4 + i] = payload[i] ^ mask[i & 3];
  return out;
}

class Client {
  constructor(index) {
    this.index = index;
    this.room = Math.floor(index / 20) + 1;
    this.times = [null, null, null, null, 0]; // closed, attempt, connected, joined, attempts
    this.storming = false;
  }

  /** Connect to `port`; resolves once joined, rejects on any failure. */
  open(port) {
    return new Promise((resolve, reject) => {
      const sock = net.connect({ host: '127.0.0.1', port, localAddress: ADDRESSES[this.index % ADDRESSES.length] });
      this.sock = sock;
      let buf = Buffer.alloc(0);
      let upgraded = false;
      let settled = false;
      const fail = (err) => { if (!settled) { settled = true; sock.destroy(); reject(err); } };
      const timer = setTimeout(() => fail(new Error('timeout')), 20000);
      sock.setNoDelay(true);
      sock.on('connect', () => {
        const key = crypto.randomBytes(16).toString('base64');
        sock.write(`GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n`
          + `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
      });
      sock.on('data', (chunk) => {
        buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
        if (!upgraded) {
          const end = buf.indexOf('\r\n\r\n');
          if (end < 0) return;
          if (!buf.subarray(0, 12).toString().includes('101')) return fail(new Error(buf.subarray(0, 40).toString()));
          upgraded = true;
          buf = buf.subarray(end + 4);
        }
        while (buf.length >= 2) {
          let len = buf[1] & 0x7f;
          let off = 2;
          if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
          else if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); off = 10; }
          if (buf.length < off + len) return;
          const opcode = buf[0] & 0x0f;
          const text = opcode === 1 ? buf.toString('utf8', off, off + len) : '';
          buf = buf.subarray(off + len);
          if (text === '2') sock.write(frame('3'));
          else if (text.startsWith('0{')) sock.write(frame('40'));
          else if (text.startsWith('40')) {
            if (this.storming) this.times[2] = mono();
            sock.write(frame(`421["join-study",{"studyId":${this.room}}]`));
          } else if (text.startsWith('431') && !settled) {
            settled = true;
            clearTimeout(timer);
            resolve();
          } else if (text.startsWith('44')) fail(new Error(text));
        }
      });
      sock.on('error', fail);
      sock.on('close', () => {
        clearTimeout(timer);
        if (!settled) fail(new Error('closed'));
        else if (this.storming && this.times[3] === null) this.onDrop();
      });
    });
  }

  onDrop() {
    this.times[0] = mono();
    this.back(500 + Math.random() * 1000, 0);
  }

  back(delay, tries) {
    setTimeout(() => {
      if (mono() > deadline) return finishedOne();
      this.times[4]++;
      this.times[1] = mono();
      this.open(SURVIVORS[(this.index + tries) % SURVIVORS.length]).then(() => {
        this.times[3] = mono();
        finishedOne();
      }, () => this.back(Math.min(delay * 2, 5000), tries + 1));
    }, delay);
  }
}

let deadline = Infinity;
let finished = 0;
const clients = Array.from({ length: N }, (_, i) => new Client(i));
function finishedOne() {
  if (++finished === N) {
    process.stdout.write(JSON.stringify(clients.map((c) => c.times)) + '\n', () => process.exit(0));
  }
}

async function main() {
  for (let start = 0; start < N; start += IN_FLIGHT) {
    await Promise.all(clients.slice(start, start + IN_FLIGHT).map((c) => c.open(FIRST)));
  }
  for (const c of clients) c.storming = true;
  deadline = mono() + TIMEOUT_S;
  process.stdout.write('ready\n');
  setTimeout(() => { // whoever is not back by then is reported as such
    finished = N - 1;
    finishedOne();
  }, (TIMEOUT_S + 25) * 1000);
}

main().catch((err) => { console.error(err); process.exit(1); });

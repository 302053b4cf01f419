// A scriptable stock socket.io-client (npm, 4.8.x) for tests written in Python.
//
// Tests run it as a subprocess (`node tests/js/client.mjs [SCENARIO]`) and talk to it in
// JSON lines, so what they assert on is the reference client's real behaviour. The Python
// side lives in tests/clients/jsclient.py (`JsClient`, fixture `js_client`).
//
// INPUT: commands, one JSON object per line on stdin. A JSON array of commands (or an
// object {"commands": [...], "lifetime_ms": N}) given as the first argument runs first.
// Commands run one after the other; "wait" and "sleep" hold the ones behind them. Stdin's
// end (or {"cmd": "exit"}) closes every socket and ends the process with code 0. The
// process also exits by itself (code 3) after lifetime_ms (default 120000), so a test that
// dies never leaves it behind. Any command may carry "id", echoed on what it produces.
//
//   {"cmd": "connect", "socket": "a", "url": "http://127.0.0.1:8000", "namespace": "/",
//    "options": {...}, "manager": "b"}
//       Open socket "a". `options` go to io() unchanged (transports, auth, query,
//       reconnectionDelay, randomizationFactor, timeout, extraHeaders, ...); forceNew is
//       true unless given. With "manager": "b" the socket shares socket b's Manager, i.e.
//       the same Engine.IO connection (namespace multiplexing); `options.auth` still applies.
//   {"cmd": "emit", "socket": "a", "event": "x", "args": [...], "ack": true, "timeout": ms}
//       Emit an event. With "ack", the server's acknowledgement is reported as "ack" (or
//       "ack_error" after `timeout` ms, default 5000). Without, "emitted" is reported.
//   {"cmd": "reply", "socket": "a", "event": "question", "args": [...]}
//       How to answer the server's events that ask for an ack: with these args. Without a
//       reply set for an event (or with "args": null) the client acknowledges with the
//       arguments it received (an echo).
//   {"cmd": "drop", "socket": "a"}
//       Cut the Engine.IO transport under the engine, as a network failure would (a
//       WebSocket is terminated without a close frame; a polling transport is closed): the
//       socket sees "transport close" and the Manager reconnects by itself, with
//       connection state recovery when the server offers it.
//   {"cmd": "disconnect", "socket": "a"}   socket.disconnect() (no reconnection)
//   {"cmd": "connect_again", "socket": "a"} socket.connect() on an existing socket
//   {"cmd": "state", "socket": "a"}        report "state" (connected, sid, recovered, transport)
//   {"cmd": "wait", "for": "connect", "socket": "a", "count": 1, "timeout": ms}
//       Block later commands until `count` records of that type (for that socket, counted
//       from the start) exist; "wait_timeout" is reported if they do not come in time.
//   {"cmd": "sleep", "ms": 100}
//   {"cmd": "exit"}
//
// OUTPUT: records, one JSON object per line on stdout, each with "type", "t" (ms since
// start) and, where it applies, "socket" and "id":
//   ready {version}                       the driver is listening for commands
//   connect {sid, recovered, transport}   the namespace is connected (again)
//   connect_error {message, data}
//   disconnect {reason, description}      description is reduced to a message when present
//   event {event, args, ack, replied?}    an event from the server; `args` include the
//                                         recovery offset when the server sends one; `ack`
//                                         tells whether the server asked for an ack, and
//                                         `replied` what the client answered
//   ack {args} | ack_error {message}      the answer to an emit with "ack"
//   emitted                               an emit without ack was handed to the socket
//   upgrade {transport}                   the Engine.IO connection upgraded (Manager level)
//   reconnect_attempt {attempt} | reconnect {attempt} | reconnect_error {message} |
//   reconnect_failed                      Manager events, reported for the socket that
//                                         created the Manager
//   state {connected, sid, recovered, transport}
//   waited | wait_timeout {for, count, seen} | slept | disconnected_called | dropped |
//   reply_set | connect_called
//   error {message}                       a command could not be run (unknown socket, ...)
//   exit {code}
//
// Binary data: Buffers and ArrayBuffers travel as {"$bin": "<base64>"} in both directions,
// at any depth of the arguments.

import { createInterface } from "node:readline";
import { createRequire } from "node:module";
import { io } from "socket.io-client";

const require = createRequire(import.meta.url);
const VERSION = require("socket.io-client/package.json").version;
const started = Date.now();

const sockets = new Map(); // name -> Socket
const replies = new Map(); // name -> Map(event -> args | null)
const records = []; // everything reported, for "wait"
const waiters = new Set();

function report(type, fields = {}) {
  const record = { type, t: Date.now() - started, ...fields };
  records.push(record);
  process.stdout.write(JSON.stringify(record) + "\n");
  for (const waiter of [...waiters]) waiter();
}

function toWire(value) {
  // JSON-with-$bin -> values socket.io-client sends (Buffers become binary attachments)
  if (Array.isArray(value)) return value.map(toWire);
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === "$bin" && typeof value.$bin === "string") {
      return Buffer.from(value.$bin, "base64");
    }
    return Object.fromEntries(keys.map((k) => [k, toWire(value[k])]));
  }
  return value;
}

function fromWire(value) {
  // received values -> JSON-with-$bin
  if (Buffer.isBuffer(value)) return { $bin: value.toString("base64") };
  if (value instanceof ArrayBuffer) return { $bin: Buffer.from(value).toString("base64") };
  if (ArrayBuffer.isView(value)) {
    return { $bin: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("base64") };
  }
  if (Array.isArray(value)) return value.map(fromWire);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.keys(value).map((k) => [k, fromWire(value[k])]));
  }
  return value;
}

function errorFields(err) {
  if (err === undefined || err === null) return {};
  const fields = { message: err.message !== undefined ? String(err.message) : String(err) };
  if (err.data !== undefined) fields.data = fromWire(err.data);
  return fields;
}

function transportOf(socket) {
  const engine = socket.io.engine;
  return engine && engine.transport ? engine.transport.name : null;
}

function socketNamed(name) {
  const socket = sockets.get(name);
  if (socket === undefined) throw new Error(`no socket named ${JSON.stringify(name)}`);
  return socket;
}

function watchManager(name, manager) {
  manager.on("reconnect_attempt", (attempt) => report("reconnect_attempt", { socket: name, attempt }));
  manager.on("reconnect", (attempt) => report("reconnect", { socket: name, attempt }));
  manager.on("reconnect_error", (err) => report("reconnect_error", { socket: name, ...errorFields(err) }));
  manager.on("reconnect_failed", () => report("reconnect_failed", { socket: name }));
  const watchEngine = () => {
    const engine = manager.engine;
    if (engine) engine.on("upgrade", (transport) => report("upgrade", { socket: name, transport: transport.name }));
  };
  manager.on("open", watchEngine);
  watchEngine();
}

function watchSocket(name, socket) {
  socket.on("connect", () => {
    report("connect", { socket: name, sid: socket.id, recovered: Boolean(socket.recovered), transport: transportOf(socket) });
  });
  socket.on("connect_error", (err) => report("connect_error", { socket: name, ...errorFields(err) }));
  socket.on("disconnect", (reason, description) => {
    const fields = { socket: name, reason };
    if (description !== undefined) {
      fields.description = description instanceof Error ? description.message
        : description && description.description !== undefined ? String(description.description)
          : String(description);
    }
    report("disconnect", fields);
  });
  socket.onAny((event, ...args) => {
    const last = args.length ? args[args.length - 1] : undefined;
    const ack = typeof last === "function" ? args.pop() : null;
    const fields = { socket: name, event, args: fromWire(args), ack: ack !== null };
    let answer = null;
    if (ack !== null) {
      const configured = replies.get(name)?.get(event);
      answer = configured === undefined || configured === null ? args : toWire(configured);
      fields.replied = fromWire(answer);
    }
    // reported before acknowledging, so the test has the record once the server has the ack
    report("event", fields);
    if (ack !== null) ack(...answer);
  });
}

function waitFor(cmd) {
  const count = cmd.count ?? 1;
  const matches = () => records.filter((r) => r.type === cmd.for && (cmd.socket === undefined || r.socket === cmd.socket)).length;
  return new Promise((resolve) => {
    let timer = null;
    const check = () => {
      if (matches() >= count) {
        waiters.delete(check);
        clearTimeout(timer);
        report("waited", { id: cmd.id, for: cmd.for, socket: cmd.socket, count });
        resolve();
      }
    };
    timer = setTimeout(() => {
      waiters.delete(check);
      report("wait_timeout", { id: cmd.id, for: cmd.for, socket: cmd.socket, count, seen: matches() });
      resolve();
    }, cmd.timeout ?? 5000);
    waiters.add(check);
    check();
  });
}

function closeAll() {
  for (const socket of sockets.values()) {
    socket.io.reconnection(false);
    socket.disconnect();
  }
}

function exit(code) {
  closeAll();
  report("exit", { code });
  // let stdout drain; open handles (timers of a closing transport) must not keep us alive
  process.stdout.write("", () => process.exit(code));
}

async function run(cmd) {
  const id = cmd.id;
  switch (cmd.cmd) {
    case "connect": {
      if (sockets.has(cmd.socket)) throw new Error(`socket ${JSON.stringify(cmd.socket)} already exists`);
      const namespace = cmd.namespace ?? "/";
      const options = { forceNew: true, ...toWire(cmd.options ?? {}) };
      let socket;
      if (cmd.manager !== undefined) {
        const manager = socketNamed(cmd.manager).io;
        socket = manager.socket(namespace, options);
        watchSocket(cmd.socket, socket);
        sockets.set(cmd.socket, socket);
        socket.connect();
      } else {
        const url = cmd.url.replace(/\/$/, "") + namespace;
        socket = io(url, { ...options, autoConnect: false });
        watchSocket(cmd.socket, socket);
        watchManager(cmd.socket, socket.io);
        sockets.set(cmd.socket, socket);
        socket.connect();
      }
      report("connect_called", { id, socket: cmd.socket });
      return;
    }
    case "emit": {
      const socket = socketNamed(cmd.socket);
      const args = toWire(cmd.args ?? []);
      if (cmd.ack) {
        socket.timeout(cmd.timeout ?? 5000).emit(cmd.event, ...args, (err, ...answer) => {
          if (err) report("ack_error", { id, socket: cmd.socket, event: cmd.event, ...errorFields(err) });
          else report("ack", { id, socket: cmd.socket, event: cmd.event, args: fromWire(answer) });
        });
      } else {
        socket.emit(cmd.event, ...args);
        report("emitted", { id, socket: cmd.socket, event: cmd.event });
      }
      return;
    }
    case "reply": {
      socketNamed(cmd.socket);
      if (!replies.has(cmd.socket)) replies.set(cmd.socket, new Map());
      replies.get(cmd.socket).set(cmd.event, cmd.args ?? null);
      report("reply_set", { id, socket: cmd.socket, event: cmd.event });
      return;
    }
    case "drop": {
      const engine = socketNamed(cmd.socket).io.engine;
      const transport = engine && engine.transport;
      if (!transport) throw new Error("no transport to drop");
      let how;
      if (transport.name === "websocket" && transport.ws && typeof transport.ws.terminate === "function") {
        transport.ws.terminate(); // the TCP connection dies without a close frame, as on a network failure
        how = "websocket terminated";
      } else {
        transport.close(); // polling: the transport closes under the engine
        how = `${transport.name} closed`;
      }
      report("dropped", { id, socket: cmd.socket, how });
      return;
    }
    case "disconnect":
      socketNamed(cmd.socket).disconnect();
      report("disconnected_called", { id, socket: cmd.socket });
      return;
    case "connect_again":
      socketNamed(cmd.socket).connect();
      report("connect_called", { id, socket: cmd.socket });
      return;
    case "state": {
      const socket = socketNamed(cmd.socket);
      report("state", {
        id, socket: cmd.socket, connected: socket.connected, sid: socket.id ?? null,
        recovered: Boolean(socket.recovered), transport: transportOf(socket),
      });
      return;
    }
    case "wait":
      await waitFor(cmd);
      return;
    case "sleep":
      await new Promise((resolve) => setTimeout(resolve, cmd.ms ?? 0));
      report("slept", { id });
      return;
    case "exit":
      exit(0);
      return;
    default:
      throw new Error(`unknown command ${JSON.stringify(cmd.cmd)}`);
  }
}

// one queue: commands from the scenario argument first, then from stdin, in order
let queue = Promise.resolve();
function enqueue(cmd) {
  queue = queue.then(() => run(cmd)).catch((err) => report("error", { id: cmd.id, cmd: cmd.cmd, message: String(err && err.message ? err.message : err) }));
}

let lifetime = 120000;
if (process.argv[2] !== undefined) {
  const scenario = JSON.parse(process.argv[2]);
  const commands = Array.isArray(scenario) ? scenario : scenario.commands ?? [];
  if (!Array.isArray(scenario) && scenario.lifetime_ms !== undefined) lifetime = scenario.lifetime_ms;
  commands.forEach(enqueue);
}
setTimeout(() => exit(3), lifetime).unref();

report("ready", { version: VERSION });

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
lines.on("line", (line) => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (err) {
    report("error", { message: `not JSON: ${line.slice(0, 200)}` });
    return;
  }
  enqueue(cmd);
});
lines.on("close", () => enqueue({ cmd: "exit" }));

// Drives the stock npm sockjs-client through static/sockjs-coup.js for the pytest suite.
//
//   node driver.js URL TRANSPORT
//
// stdin, one JSON command per line:
//   {"cmd":"connect","auth":{...},"reconnection":false}   open the connection and authenticate
//   {"cmd":"emit","event":"x","args":[...],"ack":7}   ack: ask for an acknowledgement (id 7)
//   {"cmd":"emit",...,"ack":7,"timeout":500}  the same through socket.timeout(500).emit
//   {"cmd":"close"}                           leave and exit
// stdout, one JSON line per thing that happened:
//   {"type":"connect","id":...,"transport":...,"recovered":...} {"type":"reconnect","id":...}
//   {"type":"connect_error","message":...,"data":...}
//   {"type":"event","event":...,"args":[...]}   {"type":"ack","id":7,"args":[...]}
//   {"type":"ack","id":7,"error":null|"operation has timed out","args":[...]}   (with "timeout")
//   {"type":"error",...} {"type":"disconnect","reason":...,"code":...,"active":...}
// A server event that asks for an ack is answered with {"received": <event>}.
"use strict";

const path = require("path");
const readline = require("readline");
const SockJS = require("sockjs-client");
const CoupSockJS = require(path.join(__dirname, "..", "..", "..", "static", "sockjs-coup.js"));

const [url, transport] = process.argv.slice(2);
let socket = null;

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function connect(auth, reconnection) {
  socket = new CoupSockJS(url, {
    SockJS, auth, transports: [transport], reconnection: !!reconnection, reconnectionDelay: 300,
  });
  socket.on("connect", () => out({
    type: "connect", id: socket.id, transport: socket.transport, recovered: socket.recovered,
  }));
  socket.on("reconnect", () => out({ type: "reconnect", id: socket.id }));
  socket.on("connect_error", (err) => out({ type: "connect_error", message: err.message, data: err.data }));
  socket.on("disconnect", (reason, detail) => out({
    type: "disconnect", reason, code: detail && detail.code, active: socket.active,
  }));
  socket.onAny((event, ...args) => {
    const last = args[args.length - 1];
    if (typeof last === "function") {
      args.pop();
      last({ received: event });
    }
    out({ type: event === "error" ? "error" : "event", event, args });
  });
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  const cmd = JSON.parse(line);
  if (cmd.cmd === "connect") {
    connect(cmd.auth || {}, cmd.reconnection);
  } else if (cmd.cmd === "emit") {
    const args = cmd.args || [];
    if (cmd.ack !== undefined && cmd.timeout !== undefined) {
      socket.timeout(cmd.timeout).emit(cmd.event, ...args,
        (err, ...reply) => out({ type: "ack", id: cmd.ack, error: err ? err.message : null, args: reply }));
    } else if (cmd.ack !== undefined) {
      socket.emit(cmd.event, ...args, (...reply) => out({ type: "ack", id: cmd.ack, args: reply }));
    } else {
      socket.emit(cmd.event, ...args);
    }
  } else if (cmd.cmd === "close") {
    if (socket) socket.close();
    setTimeout(() => process.exit(0), 50);
  }
});
rl.on("close", () => process.exit(0));

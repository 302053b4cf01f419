/*
 * sockjs-coup.js: CoUp events over SockJS, for networks where Socket.IO cannot get through.
 *
 *   const socket = new CoupSockJS("/sockjs", { auth: { userId, token } });
 *   socket.on("connect", () => socket.emit("join-study", { studyId: 1 }, (ack) => ...));
 *   socket.on("message", (msg) => ...);
 *
 * Browser: load the sockjs-client bundle first (/vendor/sockjs.min.js), then this file
 * (global `CoupSockJS`). Node: `require("./sockjs-coup.js")` with the npm `sockjs-client`
 * installed. The server side is coup/transports/sockjs (docs/sockjs.md).
 *
 * Wire format: every SockJS message is one JSON object (an "envelope").
 *   client -> server
 *     {"type":"auth","auth":{...},"nsp":"/"}         first message; nsp is optional
 *     {"type":"event","event":"message","args":[...],"ack":3}   ack id only if a callback waits
 *     {"type":"ack","id":7,"args":[...]}             answers a server event that carried "ack"
 *     {"type":"disconnect"}                          leave; the server closes the connection
 *   server -> client
 *     {"type":"connect","sid":"...","pid":"..."}     authenticated
 *     {"type":"connect_error","message":"...","data":...}   refused (auth may be sent again)
 *     {"type":"event","event":"...","args":[...],"ack":7}
 *     {"type":"ack","id":3,"args":[...]}
 *     {"type":"disconnect"}                          the server ended the session
 *     {"type":"error","code":"...","message":"..."}  protocol error; the connection closes
 * With connection-state recovery on, the server's offset is the last string of "args" (as
 * for Socket.IO clients); reconnecting sends it back with the pid to get missed events.
 * Binary values arrive as {"_binary":"<base64>"}. SockJS close codes: 4000 server close
 * (reason says why), 4400 protocol error, 4413 message too large.
 *
 * Options: auth (object or function), nsp, transports (sockjs-client names), sockjs (more
 * sockjs-client options), reconnection (true), reconnectionAttempts (Infinity),
 * reconnectionDelay (1000 ms, doubling), reconnectionDelayMax (5000 ms), ackTimeout
 * (10000 ms, emitWithAck), autoConnect (true). Events: connect, connect_error,
 * disconnect(reason), reconnect_attempt(n), reconnect, reconnect_failed, error, and the
 * server's events. As on a socket.io-client Socket: `timeout(ms).emit(..., (err, ...) => ...)`,
 * `connected`, `active` (connected, or going to reconnect by itself), `recovered` (the last
 * connect resumed the session), `transport` (sockjs-client's transport name).
 */
(function (root, factory) {
  if (typeof module === "object" && module.exports) {
    module.exports = factory(function () { return require("sockjs-client"); });
  } else {
    root.CoupSockJS = factory(function () { return root.SockJS; });
  }
})(typeof self !== "undefined" ? self : this, function (loadSockJS) {
  "use strict";

  var LOCAL_EVENTS = ["connect", "connect_error", "disconnect", "reconnect_attempt", "reconnect",
    "reconnect_failed"];

  function CoupSockJS(url, options) {
    if (!(this instanceof CoupSockJS)) return new CoupSockJS(url, options);
    options = options || {};
    this.url = url;
    this.options = options;
    this.nsp = options.nsp || "/";
    this.connected = false;
    this.recovered = false;
    this.id = null;
    this.transport = null;
    this._listeners = {};
    this._any = [];
    this._acks = {};
    this._nextAck = 0;
    this._buffer = [];
    this._pid = null;
    this._offset = null;
    this._attempts = 0;
    this._reconnecting = false;
    this._closedByUser = false;
    this._refused = false;
    this._serverClosed = false;
    this._sock = null;
    if (options.autoConnect !== false) this.connect();
  }

  /** connected, or going to reconnect by itself (socket.io-client's `socket.active`) */
  Object.defineProperty(CoupSockJS.prototype, "active", {
    get: function () { return this.connected || this._reconnecting; },
  });

  CoupSockJS.prototype.connect = function () {
    if (this._sock && this._sock.readyState <= 1) return this;  // opening or open already
    var SockJS = this.options.SockJS || loadSockJS();
    var self = this;
    var sockOptions = Object.assign({}, this.options.sockjs || {});
    if (this.options.transports) sockOptions.transports = this.options.transports;
    this._closedByUser = false;
    this._refused = false;
    var sock = this._sock = new SockJS(this.url, null, sockOptions);
    sock.onopen = function () {
      self.transport = sock.transport || null;
      var auth = typeof self.options.auth === "function" ? self.options.auth() : (self.options.auth || {});
      auth = Object.assign({}, auth);
      if (self._pid && self._offset) {  // ask for what we missed (connection-state recovery)
        auth.pid = self._pid;
        auth.offset = self._offset;
      }
      self._send({ type: "auth", auth: auth, nsp: self.nsp });
    };
    sock.onmessage = function (e) { self._onEnvelope(e.data); };
    sock.onclose = function (e) { self._onClose(sock, e.code, e.reason); };
    return this;
  };

  CoupSockJS.prototype.on = function (event, fn) {
    (this._listeners[event] = this._listeners[event] || []).push(fn);
    return this;
  };

  CoupSockJS.prototype.once = function (event, fn) {
    var self = this;
    function wrapper() { self.off(event, wrapper); fn.apply(self, arguments); }
    return this.on(event, wrapper);
  };

  /** onAny(fn): fn(event, ...args) for every event the server sends. */
  CoupSockJS.prototype.onAny = function (fn) {
    this._any.push(fn);
    return this;
  };

  CoupSockJS.prototype.off = function (event, fn) {
    var list = this._listeners[event];
    if (!list) return this;
    this._listeners[event] = fn ? list.filter(function (f) { return f !== fn; }) : [];
    return this;
  };

  /** emit(event, ...args[, ackCallback]): queued until connected, like socket.io-client. */
  CoupSockJS.prototype.emit = function (event) {
    if (LOCAL_EVENTS.indexOf(event) !== -1) throw new Error('"' + event + '" is a reserved event name');
    var args = Array.prototype.slice.call(arguments, 1);
    var envelope = { type: "event", event: event, args: args };
    if (args.length && typeof args[args.length - 1] === "function") {
      var id = this._nextAck++;
      this._acks[id] = args.pop();
      envelope.ack = id;
    }
    if (this.connected) this._send(envelope);
    else this._buffer.push(envelope);
    return this;
  };

  /**
   * timeout(ms).emit(event, ...args, callback): callback(err, ...ackArgs), with err an Error
   * when no answer came within ms (socket.io-client's API), else null.
   */
  CoupSockJS.prototype.timeout = function (ms) {
    var self = this;
    return {
      emit: function () {
        var args = Array.prototype.slice.call(arguments);
        var callback = args.length > 1 && typeof args[args.length - 1] === "function" ? args.pop() : null;
        if (!callback) return self.emit.apply(self, args);
        var done = false;
        var timer = setTimeout(function () {
          if (done) return;
          done = true;
          callback.call(self, new Error("operation has timed out"));
        }, ms);
        args.push(function () {
          if (done) return;
          done = true;
          clearTimeout(timer);
          callback.apply(self, [null].concat(Array.prototype.slice.call(arguments)));
        });
        return self.emit.apply(self, args);
      },
    };
  };

  /** emitWithAck(event, ...args) -> Promise of the server's first ack argument. */
  CoupSockJS.prototype.emitWithAck = function () {
    var self = this;
    var args = Array.prototype.slice.call(arguments);
    return new Promise(function (resolve, reject) {
      args.push(function (err, value) { if (err) reject(err); else resolve(value); });
      var timed = self.timeout(self.options.ackTimeout || 10000);
      timed.emit.apply(timed, args);
    });
  };

  CoupSockJS.prototype.close = function () {
    this._closedByUser = true;
    this._reconnecting = false;
    if (this._sock) {
      if (this.connected) this._send({ type: "disconnect" });
      this._sock.close(1000, "client disconnect");
    }
    return this;
  };
  CoupSockJS.prototype.disconnect = CoupSockJS.prototype.close;

  // ------------------------------------------------------------------ internals

  CoupSockJS.prototype._send = function (envelope) {
    if (this._sock && this._sock.readyState === 1) this._sock.send(JSON.stringify(envelope));
  };

  CoupSockJS.prototype._fire = function (event, args) {
    var list = (this._listeners[event] || []).slice();
    for (var i = 0; i < list.length; i++) list[i].apply(this, args);
    return list.length > 0;
  };

  CoupSockJS.prototype._onEnvelope = function (text) {
    var msg;
    try { msg = JSON.parse(text); } catch (e) { return; }
    if (!msg || typeof msg !== "object") return;
    var self = this;
    switch (msg.type) {
      case "connect": {
        var recovered = this._pid !== null && msg.pid === this._pid;
        this.connected = true;
        this.recovered = recovered;
        this._reconnecting = false;
        this.id = msg.sid;
        this._pid = msg.pid || null;
        if (!recovered) this._offset = null;
        var wasReconnect = this._attempts > 0;
        this._attempts = 0;
        var buffered = this._buffer;
        this._buffer = [];
        buffered.forEach(function (envelope) { self._send(envelope); });
        this._fire("connect", []);
        if (wasReconnect) this._fire("reconnect", []);
        break;
      }
      case "connect_error": {
        // as socket.io-client: no automatic retry; set options.auth and call connect() again
        var err = new Error(msg.message || "connection refused");
        err.data = msg.data;
        this._refused = true;
        this._sock.close(1000, "refused");
        this._fire("connect_error", [err]);
        break;
      }
      case "event": {
        var args = Array.isArray(msg.args) ? msg.args.slice() : [];
        if (this._pid && args.length && typeof args[args.length - 1] === "string") {
          this._offset = args[args.length - 1];
        }
        if (typeof msg.ack === "number") {
          var id = msg.ack;
          var answered = false;
          args.push(function () {
            if (answered) return;
            answered = true;
            self._send({ type: "ack", id: id, args: Array.prototype.slice.call(arguments) });
          });
        }
        var any = this._any.slice();
        for (var i = 0; i < any.length; i++) any[i].apply(this, [msg.event].concat(args));
        this._fire(msg.event, args);
        break;
      }
      case "ack": {
        var fn = this._acks[msg.id];
        if (fn) {
          delete this._acks[msg.id];
          fn.apply(this, Array.isArray(msg.args) ? msg.args : []);
        }
        break;
      }
      case "error":
        this._fire("error", [{ code: msg.code, message: msg.message }]);
        break;
      case "disconnect":
        this._serverClosed = true;
        break;
      default:
        break;
    }
  };

  CoupSockJS.prototype._onClose = function (sock, code, reason) {
    if (sock !== this._sock) return;
    var wasConnected = this.connected;
    this.connected = false;
    this._acks = {};
    // the server ended the session on purpose ({"type":"disconnect"}) or refused our
    // messages (4400, 4413): reconnecting would not help. Anything else (network, server
    // restart: 4000 "server shutting down") is retried, as socket.io-client does.
    var byServer = this._serverClosed || code === 4400 || code === 4413;
    this._serverClosed = false;
    var opts = this.options;
    var max = opts.reconnectionAttempts === undefined ? Infinity : opts.reconnectionAttempts;
    var retry = !(this._closedByUser || this._refused || byServer || opts.reconnection === false);
    var exhausted = retry && this._attempts >= max;
    this._reconnecting = retry && !exhausted;  // read by `active` in the listeners below
    if (wasConnected) {
      this._fire("disconnect", [this._closedByUser ? "io client disconnect"
        : byServer ? "io server disconnect" : "transport close", { code: code, reason: reason }]);
    }
    if (!retry) return;
    if (exhausted) {
      this._attempts = 0;  // a later connect() starts a fresh series, as socket.io-client does
      this._fire("reconnect_failed", []);
      return;
    }
    this._attempts++;
    var base = opts.reconnectionDelay || 1000;
    var delay = Math.min(base * Math.pow(2, this._attempts - 1), opts.reconnectionDelayMax || 5000);
    var self = this;
    setTimeout(function () {
      if (self._closedByUser || !self._reconnecting) return;
      self._fire("reconnect_attempt", [self._attempts]);
      self.connect();
    }, delay);
  };

  return CoupSockJS;
});

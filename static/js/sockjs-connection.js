// The page's connection over SockJS (?transport=sockjs), for networks where neither
// Socket.IO transport gets through: the stock sockjs-client with /sockjs-coup.js, which
// gives the socket.io-client API (on, emit, timeout(ms).emit) the rest of the page uses.
// Same banner states as connection.js, from CoupSockJS's own events.

import { CLIENT_OPTIONS } from "./connection.js";
import { ConnectionState } from "./connection-state.js";

/** The scripts behind window.CoupSockJS, loaded only when a page asks for SockJS. */
const SCRIPTS = ["/vendor/sockjs.min.js", "/sockjs-coup.js"];

/** sockjs-client 1.6's transports, in its order of preference. */
export const SOCKJS_TRANSPORTS = Object.freeze([
  "websocket", "xhr-streaming", "xdr-streaming", "eventsource", "iframe-eventsource", "htmlfile",
  "iframe-htmlfile", "xhr-polling", "xdr-polling", "iframe-xhr-polling", "jsonp-polling",
]);

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = src;
    script.onload = resolve;
    script.onerror = () => reject(new Error(`${src} did not load`));
    document.head.append(script);
  });
}

export async function loadSockJS() {
  for (const src of SCRIPTS) {
    if (!document.querySelector(`script[src="${src}"]`)) await loadScript(src);
  }
}

/**
 * new SockJSConnection({userId, token, transports}) — call start() (after loadSockJS()).
 * `transports` are sockjs-client names; none: sockjs-client picks (WebSocket first).
 */
export class SockJSConnection extends ConnectionState {
  constructor({ url = "/sockjs", userId, token, transports = undefined }) {
    super();
    if (typeof window.CoupSockJS !== "function") throw new Error("sockjs-client did not load");
    this.socket = new window.CoupSockJS(url, {
      reconnection: CLIENT_OPTIONS.reconnection,
      reconnectionAttempts: CLIENT_OPTIONS.reconnectionAttempts,
      reconnectionDelay: CLIENT_OPTIONS.reconnectionDelay,
      reconnectionDelayMax: CLIENT_OPTIONS.reconnectionDelayMax,
      transports,
      autoConnect: false,
      auth: () => ({ userId, token }),
    });
    this._wire();
  }

  get connected() {
    return this.socket.connected;
  }

  start() {
    this._setSocketState("connecting");
    this.socket.connect();
  }

  retry() {
    if (this.socket.connected) return;
    this._setSocketState("connecting");
    this.socket.connect();
  }

  close() {
    this._unwatchNetwork();
    this.socket.close();
  }

  _wire() {
    const socket = this.socket;
    socket.on("connect", () => {
      const detail = this._connected(socket.recovered);
      this._setTransport(`sockjs/${socket.transport}`);
      this.dispatchEvent(new CustomEvent("connect", { detail }));
    });
    socket.on("disconnect", () => this._setSocketState(socket.active ? "reconnecting" : "disconnected"));
    socket.on("connect_error", (err) => this._refused(err));
    socket.on("reconnect_attempt", () => this._setSocketState("reconnecting"));
    socket.on("reconnect_failed", () => this._setSocketState("failed"));
    this._watchNetwork(() => {
      if (!socket.connected && !socket.active) this.retry();
    });
  }
}

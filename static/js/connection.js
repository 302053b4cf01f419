// The Socket.IO connection and its state, as the original SocketContext tracks it:
// disconnected | connecting | connected | reconnecting | failed | offline.
// The state comes from the stock client's own events, never from a guess or a timer.

import { ConnectionState } from "./connection-state.js";

/** ConnectionBanner text per state (the product's Korean UI strings); connected shows none. */
export const BANNER_TEXT = Object.freeze({
  connecting: "연결 중...",
  reconnecting: "재연결 시도 중...",
  disconnected: "연결이 끊어졌습니다",
  failed: "연결에 실패했습니다",
  offline: "오프라인 상태입니다",
});

/** Client options as the original app sets them. */
export const CLIENT_OPTIONS = Object.freeze({
  reconnection: true,
  reconnectionAttempts: 5,
  reconnectionDelay: 1000,
  reconnectionDelayMax: 5000,
  timeout: 30000,
});

/**
 * new Connection({userId, token, transports}) — call start().
 * Events: see ConnectionState. `socket` is the stock socket.io-client Socket for emitting
 * and listening.
 */
export class Connection extends ConnectionState {
  constructor({ url = undefined, userId, token, transports = ["polling", "websocket"] }) {
    super();
    if (typeof window.io !== "function") throw new Error("socket.io-client did not load");
    this.socket = window.io(url, {
      ...CLIENT_OPTIONS,
      transports,
      autoConnect: false,
      // a function, so every (re)connection sends the current credentials
      auth: (send) => send({ userId, token }),
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

  /** The banner's "try again" after the reconnection attempts ran out (or a server kick). */
  retry() {
    if (this.socket.connected) return;
    this._setSocketState("connecting");
    this.socket.connect();
  }

  close() {
    this._unwatchNetwork();
    this.socket.off();
    this.socket.io.off();
    this.socket.disconnect();
  }

  _wire() {
    const socket = this.socket;
    const manager = socket.io;

    socket.on("connect", () => {
      const detail = this._connected(socket.recovered);
      this._watchTransport();
      this.dispatchEvent(new CustomEvent("connect", { detail }));
    });
    socket.on("disconnect", () => {
      // the client reconnects by itself unless the server or we closed the socket on purpose
      this._setSocketState(socket.active ? "reconnecting" : "disconnected");
    });
    socket.on("connect_error", (err) => {
      if (socket.active) return; // a transport failure: the manager is retrying
      this._refused(err);
    });
    manager.on("reconnect_attempt", () => this._setSocketState("reconnecting"));
    manager.on("reconnect_failed", () => this._setSocketState("failed"));
    // a connection that gave up while the network was gone gets a fresh start
    this._watchNetwork(() => {
      if (!socket.connected && (this.socketState === "failed" || !socket.active)) this.retry();
    });
  }

  _watchTransport() {
    const engine = this.socket.io.engine;
    if (!engine) return;
    this._setTransport(engine.transport && engine.transport.name);
    if (engine.__coupWatched) return;
    engine.__coupWatched = true;
    engine.on("upgrade", (transport) => this._setTransport(transport.name));
  }

}

/** ?transport=polling forces long-polling (a client behind a proxy that strips WebSocket). */
export function transportsFromQuery(search = location.search) {
  const wanted = new URLSearchParams(search).get("transport");
  if (wanted === "polling") return ["polling"];
  if (wanted === "websocket") return ["websocket"];
  return ["polling", "websocket"];
}

// What every connection the page can open shares: the ConnectionBanner's state
// (disconnected | connecting | connected | reconnecting | failed | offline), the transport
// name, and the browser's own online/offline events. Subclasses (connection.js for
// Socket.IO, sockjs-connection.js for SockJS) feed it from their client's events.

/** The middleware's refusal of a token (the product's message, or the error code). */
export function isAuthFailure(err) {
  return Boolean(err && (err.message === "인증 실패" || (err.data && err.data.code === "AUTH_FAILED")));
}

/**
 * Events (EventTarget): "state" {detail: state}, "transport" {detail: name},
 * "connect" {detail: {recovered, reconnect}}, "auth-failed".
 * Subclasses set `socket`, implement start(), retry(), close() and `connected`.
 */
export class ConnectionState extends EventTarget {
  constructor() {
    super();
    this.socketState = "connecting";
    this.browserOnline = navigator.onLine;
    this.transport = null;
    this.everConnected = false;
  }

  /** What the banner shows: the browser being offline wins over the socket's state. */
  get state() {
    return this.browserOnline ? this.socketState : "offline";
  }

  /** Follow the browser's online/offline events; `reconnect()` runs when the network is back. */
  _watchNetwork(reconnect) {
    this._onOnline = () => {
      this.browserOnline = true;
      this._emitState();
      reconnect();
    };
    this._onOffline = () => {
      this.browserOnline = false;
      this._emitState();
    };
    window.addEventListener("online", this._onOnline);
    window.addEventListener("offline", this._onOffline);
  }

  _unwatchNetwork() {
    window.removeEventListener("online", this._onOnline);
    window.removeEventListener("offline", this._onOffline);
  }

  /** The client connected (again): banner off, tell the page whether the session was resumed. */
  _connected(recovered) {
    const reconnect = this.everConnected;
    this.everConnected = true;
    this._setSocketState("connected");
    return { recovered, reconnect };
  }

  /** A refusal by the server's middleware: the client will not retry by itself. */
  _refused(err) {
    this._setSocketState("failed");
    if (isAuthFailure(err)) this.dispatchEvent(new CustomEvent("auth-failed", { detail: err }));
  }

  _setTransport(name) {
    if (!name || name === this.transport) return;
    this.transport = name;
    this.dispatchEvent(new CustomEvent("transport", { detail: name }));
  }

  _setSocketState(state) {
    if (this.socketState === state) return;
    this.socketState = state;
    this._emitState();
  }

  _emitState() {
    this.dispatchEvent(new CustomEvent("state", { detail: this.state }));
  }
}

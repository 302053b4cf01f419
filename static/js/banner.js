// The ConnectionBanner and the transport pill: what the page shows of the connection itself.
import { BANNER_TEXT } from "./connection.js";
import { $ } from "./dom.js";
import { transportTitle } from "./transport.js";

/** Show `connectionState` (connection-state.js's names, or "signed-out"); hidden while connected. */
export function renderBanner(connectionState) {
  document.body.dataset.connection = connectionState; // for styling, and for tests to wait on
  const banner = $("#banner");
  banner.dataset.state = connectionState;
  banner.hidden = connectionState === "connected";
  $("#banner-text").textContent = BANNER_TEXT[connectionState] || "";
  $("#banner-retry").hidden = !(connectionState === "failed" || connectionState === "disconnected");
  $("#transport").classList.toggle("stale", connectionState !== "connected");
}

/** The transport in use ("websocket", "polling", a sockjs-client transport). */
export function renderTransport(name) {
  const pill = $("#transport");
  pill.textContent = name;
  pill.dataset.transport = name;
  pill.title = transportTitle(name);
}

// Which connection the page opens, from its address:
//   (nothing)                Socket.IO, long-polling upgraded to WebSocket
//   ?transport=polling       Socket.IO over HTTP long-polling only (a proxy strips WebSocket)
//   ?transport=websocket     Socket.IO over WebSocket only
//   ?transport=sockjs        SockJS, sockjs-client picks its transport (WebSocket first)
//   ?transport=sockjs&sockjs=xhr-streaming   SockJS over that sockjs-client transport
//                                            (comma-separated for several)

import { Connection, transportsFromQuery } from "./connection.js";
import { SOCKJS_TRANSPORTS, SockJSConnection, loadSockJS } from "./sockjs-connection.js";

/** The connection the address asks for, not started yet. */
export async function openConnection({ userId, token }, search = location.search) {
  const params = new URLSearchParams(search);
  if (params.get("transport") !== "sockjs") {
    return new Connection({ userId, token, transports: transportsFromQuery(search) });
  }
  await loadSockJS();
  const wanted = (params.get("sockjs") || "").split(",").filter((name) => SOCKJS_TRANSPORTS.includes(name));
  return new SockJSConnection({ userId, token, transports: wanted.length ? wanted : undefined });
}

/** The transport pill's tooltip. */
export function transportTitle(name) {
  if (name === "polling") return "HTTP long-polling";
  if (name === "websocket") return "WebSocket";
  return `SockJS, ${name.replace(/^sockjs\//, "")}`;
}

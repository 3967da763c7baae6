// kn-sock's example server as a tcpgate Handle client over WebSocket, with
// nothing to install: Node 20 and its global WebSocket.
//
//   TCPGATE_TOKEN=... node --experimental-websocket docs/examples/handle-ws.mjs LISTENER...
//
// It does what `tcpgate handle --listener LISTENER --reply 'Message
// received'` does: prints every connection that opens, every frame that
// arrives (the connection, the peer, the data) and every close, and
// answers each frame with "Message received", written with the
// connection's framing (a line gets its "\n"). The gateway is
// TCPGATE_HTTP (default http://127.0.0.1:50080); the token, when it has
// one, goes as the subprotocol bearer.TOKEN, since a WebSocket cannot set
// Authorization. Ctrl-C ends it; so does the gateway ending the stream,
// with the status as JSON in the close reason.

const base = process.env.TCPGATE_HTTP || "http://127.0.0.1:50080";
const token = process.env.TCPGATE_TOKEN || "";
const listeners = process.argv.slice(2);
const reply = "Message received";

if (listeners.length === 0) {
  console.error("usage: node --experimental-websocket handle-ws.mjs LISTENER...");
  process.exit(2);
}

const url = base.replace(/^http/, "ws") + "/v1/handle";
const ws = new WebSocket(url, token ? [`bearer.${token}`] : []);
const remotes = new Map(); // connection id -> the peer's address

ws.addEventListener("open", () => {
  ws.send(JSON.stringify({ registration: { listenerIds: listeners } }));
});

ws.addEventListener("message", (msg) => {
  const resp = JSON.parse(msg.data);
  if (resp.registered) {
    const r = resp.registered;
    console.log(`registered stream=${r.streamId} group=${r.group} max_in_flight=${r.maxInFlight}`);
  }
  for (const rj of resp.rejections ?? []) {
    console.error(`rejected frame=${rj.frameId ?? 0} ${rj.reason}: ${rj.message}`);
  }
  const replies = [];
  for (const e of resp.events ?? []) {
    const id = e.connectionId;
    switch (e.kind) {
      case "HANDLE_EVENT_KIND_OPENED":
        remotes.set(id, e.remoteAddress);
        console.log(`opened conn=${id} listener=${e.listenerId} remote=${e.remoteAddress}`);
        break;
      case "HANDLE_EVENT_KIND_FRAME": {
        // Text when the frame is UTF-8, else base64 data.
        const data = e.text ?? Buffer.from(e.data ?? "", "base64").toString("latin1");
        console.log(`received from ${remotes.get(id) ?? "-"} conn=${id} frame=${e.frameId}: ${JSON.stringify(data)}`);
        replies.push({ frameId: e.frameId, text: reply });
        break;
      }
      case "HANDLE_EVENT_KIND_CLOSED":
        remotes.delete(id);
        console.log(`closed conn=${id} reason=${e.closeReason}`);
        break;
    }
  }
  // Every frame of a message answered in one request.
  if (replies.length > 0) ws.send(JSON.stringify({ replies }));
});

ws.addEventListener("close", (e) => {
  if (e.code === 1000) process.exit(0);
  console.error(`the gateway ended the Handle stream: ${e.code} ${e.reason}`);
  process.exit(1);
});

ws.addEventListener("error", () => {
  // A refused handshake (a wrong token, a foreign origin) ends here, and
  // close follows with 1006.
  console.error(`cannot open ${url}`);
});

process.on("SIGINT", () => {
  ws.close(1000);
  process.exit(0);
});

// A small xmpp.js client driven by tests/test_other_clients.py.
//
//   XMPP_PASSWORD=... NODE_EXTRA_CA_CERTS=cert.pem node xmpp_client.mjs \
//     --service xmpp://127.0.0.1:5222 --domain appliance.test --username alice \
//     [--resource R] [--send-to JID --body TEXT] [--expect N] [--timeout SECONDS]
//
// --service xmpp://host:port uses STARTTLS, xmpps://host:port direct TLS (XEP-0368); the
// certificate is verified by Node against NODE_EXTRA_CA_CERTS (STARTTLS checks the domain, direct
// TLS the host). The password comes from XMPP_PASSWORD so that it is not on the command line.
//
// After logging in the client sends initial presence (so messages to its bare JID reach it),
// prints {"event": "online", ...}, sends the message if --send-to is given, then waits for N
// messages with a body (--expect, default 0), printing each, and closes the stream.
// Standard output carries only JSON lines:
//   {"event": "online", "jid": ..., "mechanism": "SCRAM-SHA-1", "secure": true, "tls": "TLSv1.3"}
//   {"event": "sent", "to": ..., "body": ...}
//   {"event": "message", "from": ..., "to": ..., "type": ..., "id": ..., "body": ...}
//   {"event": "message-error", "from": ..., "condition": "service-unavailable", ...}
//   {"event": "error", "name": "SASLError", "code": null, "condition": "not-authorized", "message": ...}
//   {"event": "offline", "socket_error": null}   (or "ECONNRESET": see stop() below)
// Any error, or not finishing within --timeout seconds, prints an error line and exits non-zero
// (1 for an error, 2 for the timeout). The XML exchange (SASL payloads hidden by @xmpp/debug) goes
// to standard error, which the test shows when it fails.

import { parseArgs } from "node:util";

import { client, xml } from "@xmpp/client";
import debug from "@xmpp/debug";

const NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl";

function emit(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");
}

let failed = false;

function fail(error, code = 1) {
  if (failed) return; // the same error may arrive as an 'error' event and as a rejection
  failed = true;
  emit("error", {
    name: error?.name ?? "Error",
    code: error?.code ?? null,
    condition: error?.condition ?? null,
    text: error?.text ?? null,
    message: String(error?.message ?? error),
  });
  process.stderr.write(`${error?.stack ?? error}\n`);
  process.exitCode = code;
  // Standard output is a pipe, written asynchronously: exit once it has been flushed.
  process.stdout.write("", () => process.exit(code));
}

const { values: opts } = parseArgs({
  options: {
    service: { type: "string" },
    domain: { type: "string" },
    username: { type: "string" },
    resource: { type: "string" },
    "send-to": { type: "string" },
    body: { type: "string" },
    expect: { type: "string", default: "0" },
    timeout: { type: "string", default: "20" },
  },
  strict: true,
});

function usage(message) {
  process.stderr.write(`xmpp_client.mjs: ${message}\n`);
  process.exit(64);
}
for (const required of ["service", "domain", "username"]) {
  if (!opts[required]) usage(`--${required} is required`);
}
if (process.env.XMPP_PASSWORD === undefined) usage("XMPP_PASSWORD is not set");
if (opts["send-to"] && opts.body === undefined) usage("--send-to needs --body");
if (!(Number(opts.expect) >= 0) || !(Number(opts.timeout) > 0)) usage("bad --expect or --timeout");

const timer = setTimeout(
  () => fail(new Error(`timed out after ${opts.timeout} s`), 2),
  Number(opts.timeout) * 1000,
);
// The timer is not unref()'d: it keeps Node alive until main() has finished, so a client that is
// left waiting with nothing to do cannot end as a silent success.
let finished = false;
process.on("exit", (code) => {
  if (code === 0 && !finished) {
    process.stderr.write("xmpp_client.mjs: exiting before the end of the scenario\n");
    process.exitCode = 3;
  }
});

// @xmpp/debug writes with console.debug (standard output): send it to standard error instead.
console.debug = (...args) => console.error(...args);

const xmpp = client({
  service: opts.service,
  domain: opts.domain,
  username: opts.username,
  password: process.env.XMPP_PASSWORD,
  resource: opts.resource,
});
debug(xmpp, true);
xmpp.reconnect.stop(); // a test wants the first failure, not retries

let mechanism = null;
xmpp.on("send", (element) => {
  if (element.is("auth", NS_SASL)) {
    mechanism = element.attrs.mechanism;
  }
});

const expected = Number(opts.expect);
const received = [];
let allReceived;
const allReceivedPromise = new Promise((resolve) => {
  allReceived = resolve;
});
if (expected === 0) allReceived();

xmpp.on("stanza", (stanza) => {
  if (!stanza.is("message")) return;
  const type = stanza.attrs.type ?? "normal";
  const body = stanza.getChildText("body");
  const fields = {
    from: stanza.attrs.from ?? null,
    to: stanza.attrs.to ?? null,
    type,
    id: stanza.attrs.id ?? null,
    body,
  };
  if (type === "error") {
    const error = stanza.getChild("error");
    const condition = error?.getChildElements()[0]?.name ?? null;
    emit("message-error", { ...fields, condition });
    return;
  }
  if (body === null) return; // chat states and the like
  emit("message", fields);
  received.push(fields);
  if (received.length >= expected) allReceived();
});

// Errors are also reported by the rejected promise of whatever was in progress; this listener
// keeps an 'error' event from being an uncaught exception and reports errors outside any call.
// While the stream is being closed, errors are kept and judged once xmpp.stop() has returned.
let stopping = false;
const errorsWhileStopping = [];
xmpp.on("error", (error) => {
  if (stopping) {
    errorsWhileStopping.push(error);
    return;
  }
  fail(error);
});

// Closes the stream (RFC 6120 §4.4: send </stream:stream>, wait for the server's, then close
// the TLS connection and the socket). A connection reset after the server's closing tag loses
// nothing, so it is reported in the "offline" line (socket_error) rather than failing the run.
async function stop() {
  stopping = true;
  // xmpp.stop() returns the server's closing tag, except when that tag arrives before the write
  // of ours has called back (then it returns undefined): watch the stream parser instead.
  let serverClosingTag = false;
  xmpp.parser?.once("end", () => {
    serverClosingTag = true;
  });
  await xmpp.stop();
  const resets = errorsWhileStopping.filter((e) => ["ECONNRESET", "EPIPE"].includes(e?.code));
  const others = errorsWhileStopping.filter((e) => !resets.includes(e));
  if (others.length > 0) throw others[0];
  if (!serverClosingTag) {
    throw new Error(
      "the server did not answer </stream:stream> with its own" +
        (resets.length > 0 ? ` (${resets[0].code})` : ""),
    );
  }
  emit("offline", { socket_error: resets[0]?.code ?? null });
}

async function main() {
  const address = await xmpp.start();
  const socket = xmpp.socket?.socket;
  emit("online", {
    jid: address.toString(),
    mechanism,
    secure: xmpp.isSecure(),
    tls: typeof socket?.getProtocol === "function" ? socket.getProtocol() : null,
  });
  await xmpp.send(xml("presence"));
  if (opts["send-to"]) {
    await xmpp.send(
      xml("message", { to: opts["send-to"], type: "chat", id: `xmppjs-${Date.now()}` },
        xml("body", {}, opts.body)),
    );
    emit("sent", { to: opts["send-to"], body: opts.body });
  }
  await allReceivedPromise;
  await stop();
  finished = true;
  clearTimeout(timer);
}

main().catch((error) => fail(error));

// The send box: text, hex or a file written to a connection, to every
// connection of a listener, or to an address (a one-shot connection), by
// POST /v1/send, with the awaited reply shown as text and as hex. Text
// from the gateway is only ever set as textContent.

import { $, api, show, parseHex, encodeBase64, decodeBase64, escapedText, hexDump, formatBytes } from './util.js';

// maxSendBytes is the largest payload the gateway takes over REST, as GET
// /v1/session says (its --max-send-bytes, or what a request body holds):
// a larger one is refused here, before a file is read into a request.
// 0 until the gateway has said, and then the gateway alone decides.
let maxSendBytes = 0;

// setSendLimit takes the gateway's limit and names it on the page.
export function setSendLimit(n) {
  maxSendBytes = Number(n) || 0;
  $('send-file-limit').textContent = maxSendBytes ? ` (at most ${formatBytes(maxSendBytes)})` : '';
}

// The target kinds, each with its SendRequest field and the field's label.
const TARGETS = {
  connection: { field: 'connectionId', label: 'Connection id', placeholder: '' },
  listener: { field: 'listenerId', label: 'Listener id', placeholder: '' },
  address: { field: 'address', label: 'Address', placeholder: 'host:port' },
};

function sizeError(n) {
  return `payload of ${n} bytes is over the gateway's limit of ${formatBytes(maxSendBytes)} (--max-send-bytes)`;
}

const over = (n) => maxSendBytes > 0 && n > maxSendBytes;

// payload sets req.text or req.data from the chosen format.
async function payload(req) {
  const format = $('send-format').value;
  if (format === 'file') {
    const file = $('send-file').files[0];
    if (!file) throw new Error('choose a file to send');
    if (over(file.size)) throw new Error(sizeError(file.size));
    req.data = encodeBase64(new Uint8Array(await file.arrayBuffer()));
    return;
  }
  const value = $('send-payload').value;
  const bytes = format === 'hex' ? parseHex(value) : new TextEncoder().encode(value);
  if (over(bytes.length)) throw new Error(sizeError(bytes.length));
  if (format === 'hex') req.data = encodeBase64(bytes);
  else req.text = value;
}

function showReply(reply) {
  const box = $('send-reply');
  if (!reply) { box.hidden = true; return; }
  const bytes = reply.text !== undefined ? new TextEncoder().encode(reply.text) : decodeBase64(reply.data);
  $('send-reply-text').textContent = escapedText(bytes, reply.text, true);
  $('send-reply-hex').textContent = hexDump(bytes);
  $('send-reply-size').textContent = `${bytes.length} bytes`;
  box.hidden = false;
}

async function send(ev) {
  ev.preventDefault();
  const target = TARGETS[$('send-kind').value];
  const req = { [target.field]: $('send-connection').value.trim() };
  const button = $('send-button');
  showReply(null);
  try {
    await payload(req);
    const mode = $('send-await').value;
    if (mode !== 'AWAIT_MODE_NONE') {
      req.awaitReply = { mode };
      if (mode === 'AWAIT_MODE_FRAME' && target.field === 'address') req.awaitReply.framing = { mode: $('send-await-framing').value };
    }
    const secs = Number($('send-timeout').value || 0);
    if (secs > 0) req.timeout = `${secs}s`;
    button.disabled = true;
    show($('send-result'), 'sending');
    const r = (await api('POST', '/v1/send', req)) || {};
    let text = `sent ${r.bytesWritten || 0} bytes to ${r.connectionsReached || 0} connection(s)`;
    if (mode !== 'AWAIT_MODE_NONE') text += r.reply ? ', reply shown below' : ', no reply';
    show($('send-result'), text);
    showReply(r.reply);
  } catch (err) {
    show($('send-result'), `send failed: ${err.message}`, true);
  } finally {
    button.disabled = false;
  }
}

// update shows the controls that the chosen target, format and await mode
// use, and hides the others (which takes them out of the keyboard's path).
function update() {
  const target = TARGETS[$('send-kind').value];
  $('send-target-label').textContent = target.label;
  $('send-connection').placeholder = target.placeholder;
  const file = $('send-format').value === 'file';
  $('send-payload-label').hidden = file;
  $('send-file-label').hidden = !file;
  $('send-await-framing-label').hidden = !(target.field === 'address' && $('send-await').value === 'AWAIT_MODE_FRAME');
}

// startSend wires the send box.
export function startSend() {
  $('send-form').addEventListener('submit', send);
  for (const id of ['send-kind', 'send-format', 'send-await']) $(id).addEventListener('change', update);
  // A connection's button in the traffic view fills the target in.
  $('traffic').addEventListener('click', (ev) => {
    if (!ev.target.closest('button.conn')) return;
    $('send-kind').value = 'connection';
    update();
  });
  update();
}

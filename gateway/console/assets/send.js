// The send box: text, hex or a file written to a connection, to every
// connection of a listener, or to an address (a one-shot connection), by
// POST /v1/send, with the awaited reply shown as text and as hex. Text
// from the gateway is only ever set as textContent.

import { $, api, show, parseHex, encodeBase64, decodeBase64, escapedText, hexDump } from './util.js';

// MAX_SEND_BYTES is the gateway's --max-send-bytes default: a larger
// payload is refused here, before it is read into a request.
const MAX_SEND_BYTES = 4 << 20;

// The target kinds, each with its SendRequest field and the field's label.
const TARGETS = {
  connection: { field: 'connectionId', label: 'Connection id', placeholder: '' },
  listener: { field: 'listenerId', label: 'Listener id', placeholder: '' },
  address: { field: 'address', label: 'Address', placeholder: 'host:port' },
};

function sizeError(n) {
  return `payload of ${n} bytes is over the gateway's limit of ${MAX_SEND_BYTES} bytes (--max-send-bytes)`;
}

// payload sets req.text or req.data from the chosen format.
async function payload(req) {
  const format = $('send-format').value;
  if (format === 'file') {
    const file = $('send-file').files[0];
    if (!file) throw new Error('choose a file to send');
    if (file.size > MAX_SEND_BYTES) throw new Error(sizeError(file.size));
    req.data = encodeBase64(new Uint8Array(await file.arrayBuffer()));
    return;
  }
  const value = $('send-payload').value;
  const bytes = format === 'hex' ? parseHex(value) : new TextEncoder().encode(value);
  if (bytes.length > MAX_SEND_BYTES) throw new Error(sizeError(bytes.length));
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

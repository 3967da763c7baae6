// The send box: text, hex or a file written to a connection, to every
// connection of a listener, or to an address (a one-shot connection), by
// POST /v1/send, with the awaited reply shown as text and as hex. Text
// from the gateway is only ever set as textContent.

// MAX_SEND_BYTES is the gateway's --max-send-bytes default: a larger
// payload is refused here, before it is read into a request.
const MAX_SEND_BYTES = 4 << 20;

const $ = (id) => document.getElementById(id);

// The target kinds, each with its SendRequest field and the field's label.
const TARGETS = {
  connection: { field: 'connectionId', label: 'Connection id', placeholder: '' },
  listener: { field: 'listenerId', label: 'Listener id', placeholder: '' },
  address: { field: 'address', label: 'Address', placeholder: 'host:port' },
};

// request calls the REST API with the page's own credentials (its session
// cookie, if any); a failure is an Error with the gateway's message.
async function request(method, path, body) {
  const resp = await fetch(path, {
    method,
    headers: { Accept: 'application/json', 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (!resp.ok) throw new Error((data && data.message) || `${resp.status} ${resp.statusText}`);
  return data;
}

function show(el, text, error) {
  el.textContent = text;
  el.classList.toggle('error', !!error);
}

const hex2 = (b) => b.toString(16).padStart(2, '0');

function parseHex(s) {
  const clean = s.replace(/0x/gi, '').replace(/[\s,:]/g, '');
  if (clean.length % 2 !== 0 || /[^0-9a-f]/i.test(clean)) {
    throw new Error('hex payload: pairs of hex digits, spaces allowed');
  }
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function encodeBase64(bytes) {
  // In chunks: fromCharCode takes its bytes as arguments, and a file of
  // megabytes would overflow the call stack at once.
  let bin = '';
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(bin);
}

function decodeBase64(b64) {
  const bin = atob(b64 || '');
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

// hexDump is 16 bytes a line: offset, bytes, and the printable ones, as in
// the traffic view.
function hexDump(bytes) {
  const lines = [];
  for (let off = 0; off < bytes.length; off += 16) {
    const chunk = bytes.subarray(off, off + 16);
    const hex = [...chunk].map(hex2).join(' ');
    const ascii = [...chunk].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${off.toString(16).padStart(8, '0')}  ${hex.padEnd(47)}  ${ascii}`);
  }
  return lines.join('\n');
}

// replyText shows the reply's text with control characters but newline and
// tab as \xNN, and bytes that are not UTF-8 likewise.
function replyText(bytes, text) {
  if (text === undefined) {
    let s = '';
    for (const b of bytes) s += (b >= 0x20 && b < 0x7f) || b === 0x0a || b === 0x09 ? String.fromCharCode(b) : `\\x${hex2(b)}`;
    return s;
  }
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\x00-\x08\x0b-\x1f\x7f]/g, (c) => `\\x${hex2(c.charCodeAt(0))}`);
}

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
  $('send-reply-text').textContent = replyText(bytes, reply.text);
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
    const r = (await request('POST', '/v1/send', req)) || {};
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

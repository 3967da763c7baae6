// util.js: what every part of the console shares: the API call, and the
// ways a payload's bytes are shown and read.

export const $ = (id) => document.getElementById(id);

let unauthorized = () => {};

// onUnauthorized sets what a 401 from the API does (app.js: the page goes
// back to its login). The login's own refusal is not one: it is shown on
// the form.
export function onUnauthorized(fn) { unauthorized = fn; }

// api calls the REST API with the page's own credentials (its session
// cookie, if any; never a token). A failure is an Error with the
// gateway's message, the HTTP status, the google.rpc.ErrorInfo reason
// and the fields a google.rpc.BadRequest names, when the gateway gave
// them.
export async function api(method, path, body) {
  const init = { method, headers: { Accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (!resp.ok) {
    const err = new Error((data && data.message) || `${resp.status} ${resp.statusText}`);
    err.status = resp.status;
    const info = ((data && data.details) || []).find((d) => d && d.reason);
    err.reason = info ? info.reason : '';
    err.fields = ((data && data.details) || []).flatMap((d) => (d && d.fieldViolations) || []).map((v) => v.field || '');
    if (resp.status === 401 && !(method === 'POST' && path === '/v1/session')) unauthorized(err);
    throw err;
  }
  return data;
}

// short strips an enum value's prefix: short('STATE_OPEN', 'STATE_') is 'OPEN'.
export function short(value, prefix) {
  return value && value.startsWith(prefix) ? value.slice(prefix.length) : value || '';
}

// show writes a result line, marked as an error or not.
export function show(el, text, error) {
  el.textContent = text;
  el.classList.toggle('error', !!error);
}

export const hex2 = (b) => b.toString(16).padStart(2, '0');

// parseHex reads pairs of hex digits, with spaces, commas, colons and 0x
// allowed between them.
export function parseHex(s) {
  const clean = s.replace(/0x/gi, '').replace(/[\s,:]/g, '');
  if (clean.length % 2 !== 0 || /[^0-9a-f]/i.test(clean)) {
    throw new Error('hex payload: pairs of hex digits, spaces allowed');
  }
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function encodeBase64(bytes) {
  // In chunks: fromCharCode takes its bytes as arguments, and a file of
  // megabytes would overflow the call stack at once.
  let bin = '';
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(bin);
}

export function decodeBase64(b64) {
  const bin = atob(b64 || '');
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

// escapedText shows a payload's text with control characters as \xNN,
// newline and tab excepted; text undefined means the bytes are not UTF-8,
// and every byte outside printable ASCII is shown so (newline and tab too,
// unless keepLines).
export function escapedText(bytes, text, keepLines = false) {
  if (text === undefined) {
    let s = '';
    for (const b of bytes) {
      const plain = (b >= 0x20 && b < 0x7f) || (keepLines && (b === 0x0a || b === 0x09));
      s += plain ? String.fromCharCode(b) : `\\x${hex2(b)}`;
    }
    return s;
  }
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\x00-\x08\x0b-\x1f\x7f]/g, (c) => `\\x${hex2(c.charCodeAt(0))}`);
}

// hexDump is 16 bytes a line: offset, bytes, and the printable ones.
export function hexDump(bytes) {
  const lines = [];
  for (let off = 0; off < bytes.length; off += 16) {
    const chunk = bytes.subarray(off, off + 16);
    const hex = [...chunk].map(hex2).join(' ');
    const ascii = [...chunk].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${off.toString(16).padStart(8, '0')}  ${hex.padEnd(47)}  ${ascii}`);
  }
  return lines.join('\n');
}

// formatBytes says n bytes in the largest binary unit that divides it, or
// in bytes: 4194304 is "4 MiB (4194304 bytes)".
export function formatBytes(n) {
  for (const [unit, size] of [['GiB', 1 << 30], ['MiB', 1 << 20], ['KiB', 1 << 10]]) {
    if (n >= size && n % size === 0) return `${n / size} ${unit} (${n} bytes)`;
  }
  return `${n} bytes`;
}

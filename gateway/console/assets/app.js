// The tcpgate console: plain DOM over the public REST API of the gateway
// that serves it. Payloads are only ever set as textContent, never as HTML.

import { $, api, decodeBase64, escapedText, hexDump, onUnauthorized, short, show } from './util.js';
import { refreshConnections, startConnections } from './connections.js';
import { setSendLimit, startSend } from './send.js';
import { replyRules, showRuleErrors, startRules } from './rules.js';
const MAX_ROWS = 1000; // rows kept in the traffic view; older ones go
// FRAME_MS bounds the rows built in one animation frame: at 60 frames/s
// that leaves the browser half of each frame for layout, paint and
// input, however fast events arrive; the rest waits for the next frame.
const FRAME_MS = 8;
// MIN_ROWS are built per frame whatever the clock says, so that a page
// on a starved machine still gains on its backlog.
const MIN_ROWS = 32;
const POLL_MS = 1000;

// ---- listeners ----

const prev = new Map(); // listener id -> {bytesIn, at} of the last poll

function cell(row, i, text) {
  const td = row.cells[i];
  if (td.textContent !== text) td.textContent = text;
}

function listenerRow(id) {
  const row = document.createElement('tr');
  row.dataset.id = id;
  for (let i = 0; i < 10; i++) {
    const td = row.insertCell();
    if (i >= 3) td.className = 'num';
  }
  row.cells[1].classList.add('address');
  row.cells[2].classList.add('state');
  const stop = document.createElement('button');
  stop.type = 'button';
  stop.textContent = 'Stop';
  stop.setAttribute('aria-label', `Stop listener ${id}`);
  stop.addEventListener('click', () => stopListener(id, stop));
  row.insertCell().append(stop);
  return row;
}

function renderListeners(listeners) {
  const body = $('listeners').tBodies[0];
  const seen = new Set();
  const now = performance.now();
  for (const l of listeners) {
    seen.add(l.listenerId);
    let row = body.querySelector(`tr[data-id="${CSS.escape(l.listenerId)}"]`);
    if (!row) { row = listenerRow(l.listenerId); body.append(row); }
    const bytesIn = Number(l.bytesIn || 0);
    const p = prev.get(l.listenerId);
    const rate = p && now > p.at ? Math.max(0, (bytesIn - p.bytesIn) * 1000 / (now - p.at)) : 0;
    prev.set(l.listenerId, { bytesIn, at: now });
    cell(row, 0, l.listenerId);
    cell(row, 1, l.address || '');
    cell(row, 2, short(l.state, 'LISTENER_STATE_'));
    cell(row, 3, `${l.connectionsActive || 0} / ${l.connectionsTotal || 0}`);
    cell(row, 4, String(l.bytesIn || 0));
    cell(row, 5, String(l.bytesOut || 0));
    cell(row, 6, String(l.framesIn || 0));
    cell(row, 7, String(l.framesOut || 0));
    cell(row, 8, `${Math.round(rate)} B/s`);
    cell(row, 9, String(((l.autoReply && l.autoReply.rules) || []).length));
  }
  for (const row of [...body.rows]) {
    if (!seen.has(row.dataset.id)) { prev.delete(row.dataset.id); row.remove(); }
  }
  $('listeners-empty').hidden = body.rows.length > 0;
}

// polls counts the listener polls started: a poll of an older one (from
// before the session ended) stops instead of running beside the new one.
let polls = 0;

async function pollListeners(mine = ++polls) {
  if (mine !== polls || ended) return;
  try {
    const data = await api('GET', '/v1/listeners');
    if (mine !== polls) return;
    renderListeners((data && data.listeners) || []);
  } catch (err) {
    if (err.status === 401) return; // the login's business now
    show($('status'), `listeners: ${err.message}`, true);
  }
  setTimeout(() => pollListeners(mine), POLL_MS);
}

async function startListener(ev) {
  ev.preventDefault();
  const req = {
    host: $('start-host').value.trim(),
    port: Number($('start-port').value || 0),
    framing: { mode: $('start-framing').value },
  };
  const mode = $('start-reply-mode').value;
  if (mode !== 'AUTO_REPLY_MODE_NONE') {
    req.autoReply = { mode };
    if (mode === 'AUTO_REPLY_MODE_FIXED') req.autoReply.text = $('start-reply-text').value;
  }
  showRuleErrors(null);
  try {
    const rules = replyRules();
    if (rules.length) req.autoReply = { ...req.autoReply, rules };
    const { listener: l } = await api('POST', '/v1/listeners', req);
    show($('start-result'), `started ${l.listenerId} on ${l.address}`);
    renderListeners([...(await api('GET', '/v1/listeners')).listeners || []]);
  } catch (err) {
    show($('start-result'), `start failed: ${err.message}`, true);
    showRuleErrors(err);
  }
}

async function stopListener(id, button) {
  const secs = Math.max(0, Number($('drain').value || 0));
  button.disabled = true;
  try {
    await api('DELETE', `/v1/listeners/${encodeURIComponent(id)}?drainTimeout=${secs}s`);
    show($('start-result'), `stopped ${id}`);
  } catch (err) {
    show($('start-result'), `stop failed: ${err.message}`, true);
    button.disabled = false;
  }
}

// ---- payloads ----

const encoder = new TextEncoder();

// ---- traffic ----

const RETRY_MS = 2000; // as the stream's retry: line; used when the page must reopen it itself

let source = null;
let lastId = ''; // the last SSE id seen: "INCARNATION-SEQUENCE"
let incarnation = ''; // the gateway's, from the first STREAM_STARTED
let noticed = ''; // the incarnation the restart notice was shown for
let streams = 0; // STREAM_STARTED events seen: more than one means a resume
let reopening = null;
let paused = false;
let pending = []; // events received, not yet rendered; at most 2 * MAX_ROWS (see trim)
let scheduled = false;
let total = 0; // events received since the last clear, shown or not
let showHex = false;
let stick = true; // the view was scrolled to its newest row: keep it there
// rowBytes holds each DATA row's payload, so that its hex dump is built
// only when it is shown.
const rowBytes = new WeakMap();

// A notice is a row of the stream itself (a restart, a resume, a drop):
// no filter hides it.
function noticeRow(kind, text) {
  const li = document.createElement('li');
  li.className = `notice notice-${kind}`;
  li.textContent = text;
  return li;
}

function filters() {
  return {
    listener: $('filter-listener').value.trim(),
    connection: $('filter-connection').value.trim(),
    kind: $('filter-kind').value,
    dir: $('filter-direction').value,
  };
}

// shown says whether row passes f: ids match by substring, kind and
// direction exactly; a direction hides rows that have none.
function shown(row, f) {
  if (row.classList.contains('notice')) return true;
  const d = row.dataset;
  return (!f.listener || (d.listener || '').includes(f.listener))
    && (!f.connection || (d.connection || '').includes(f.connection))
    && (!f.kind || d.kind === f.kind)
    && (!f.dir || d.dir === f.dir);
}

function applyFilters() {
  const f = filters();
  for (const row of $('traffic').children) row.hidden = !shown(row, f);
}

function eventRow(e) {
  const kind = short(e.kind, 'EVENT_KIND_');
  if (kind === 'EVENTS_DROPPED') {
    return noticeRow('dropped', `${e.dropped || 0} events dropped: this view missed them (it fell behind, or the gateway no longer held them)`);
  }
  const li = document.createElement('li');
  const dir = short(e.direction, 'DIRECTION_');
  li.className = `kind-${kind}${dir ? ` dir-${dir}` : ''}`;
  li.dataset.kind = kind;
  if (dir) li.dataset.dir = dir;
  if (e.listenerId) li.dataset.listener = e.listenerId;
  if (e.sequence) li.dataset.sequence = e.sequence;
  const meta = document.createElement('span');
  meta.className = 'meta';
  meta.textContent = `#${e.sequence || '-'} ${e.time ? e.time.slice(11, 23) : ''} `;
  const k = document.createElement('span');
  k.className = 'kind';
  k.textContent = kind;
  li.append(meta, k);
  if (dir) {
    const d = document.createElement('span');
    d.className = 'dir';
    d.textContent = ` ${dir}`;
    li.append(d);
  }
  if (e.listenerId) li.append(` listener ${e.listenerId}`);
  if (e.connectionId) {
    li.dataset.connection = e.connectionId;
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'conn';
    b.textContent = e.connectionId;
    b.setAttribute('aria-label', `Send to connection ${e.connectionId}`);
    li.append(' connection ', b);
  }
  if (e.generation) li.append(` generation ${e.generation}`);
  if (e.remoteAddress) li.append(` from ${e.remoteAddress}`);
  if (kind === 'RECONNECT_SCHEDULED') {
    li.append(` attempt ${e.attempt || 1} in ${e.delay || '0s'}`);
  }
  if (e.closeReason || e.error) {
    const why = document.createElement('span');
    why.className = 'why';
    why.textContent = ` ${[short(e.closeReason, 'CLOSE_REASON_'), e.error].filter(Boolean).join(': ')}`;
    li.append(why);
  }
  if (kind === 'DATA') {
    // The stream sends text when the frame is valid UTF-8, data otherwise.
    const bytes = e.text !== undefined ? encoder.encode(e.text) : decodeBase64(e.data);
    const text = document.createElement('pre');
    text.className = 'text';
    text.textContent = escapedText(bytes, e.text);
    li.append(` ${bytes.length} bytes`, text);
    rowBytes.set(li, bytes);
    if (showHex) hexRow(li, bytes);
  }
  return li;
}

function hexRow(li, bytes) {
  const hex = document.createElement('pre');
  hex.className = 'hex';
  hex.textContent = hexDump(bytes);
  li.append(hex);
}

// toggleHex shows every row as hex or as text; the hex dumps of rows
// built while text was shown are made now, once.
function toggleHex(on) {
  showHex = on;
  const list = $('traffic');
  if (on) {
    for (const li of list.children) {
      const bytes = rowBytes.get(li);
      if (bytes && !li.querySelector('pre.hex')) hexRow(li, bytes);
    }
  }
  list.classList.toggle('show-hex', on);
}

// skippedText is the note that stands for the events trimmed from the
// buffer before they were shown.
function skippedText(n) {
  const gw = n.dropped ? `, and the gateway dropped ${n.dropped} more for this view` : '';
  return `${n.count} older events not shown: the view keeps the newest ${MAX_ROWS}${gw}`;
}

// trim keeps the newest events of the buffer that fit the view with one
// note before them: older ones would leave the view as soon as they were
// shown. They are counted in that "older events not shown" note (merged
// with the one of an earlier trim), which no filter hides; the page's own
// notices (a restart, a resume) are kept. onEvent trims at twice the cap,
// so that a paused page holds at most that many and the copy is paid once
// per MAX_ROWS events; render trims at the cap.
function trim() {
  let cut = pending.length - (MAX_ROWS - 1);
  const kept = [];
  const note = { notice: 'skipped', count: 0, dropped: 0 };
  for (let i = 0; i < cut; i++) {
    const e = pending[i];
    if (e.notice === 'skipped') {
      note.count += e.count;
      note.dropped += e.dropped;
    } else if (e.notice) {
      kept.push(e);
      if (cut < pending.length) cut++; // a row kept is one event fewer
    } else {
      note.count++;
      if (e.kind === 'EVENT_KIND_EVENTS_DROPPED') note.dropped += Number(e.dropped || 0);
    }
  }
  kept.push(note);
  pending = kept.concat(pending.slice(cut));
}

function countText() {
  return `${total} events${pending.length ? `, ${pending.length} buffered` : ''}${paused ? ' (paused)' : ''}`;
}

// schedule asks for a frame: each one updates the count and, unless
// paused, renders what it can of the buffer.
function schedule() {
  if (!scheduled) {
    scheduled = true;
    requestAnimationFrame(flush);
  }
}

function flush() {
  scheduled = false;
  if (!paused && pending.length) render();
  const count = $('traffic-count');
  count.textContent = countText();
  count.dataset.total = String(total);
  count.dataset.buffered = String(pending.length);
  if (!paused && pending.length) schedule();
}

// render builds rows from the head of the buffer for at most FRAME_MS,
// into one fragment appended at once; the rows over the cap go in one
// range, and no layout is read per row.
function render() {
  if (pending.length > MAX_ROWS) trim();
  const list = $('traffic');
  const f = filters();
  const frag = document.createDocumentFragment();
  const until = performance.now() + FRAME_MS;
  let n = 0;
  for (; n < pending.length; n++) {
    if (n >= MIN_ROWS && n % 16 === 0 && performance.now() > until) break;
    const e = pending[n];
    let row;
    if (e.notice === 'skipped') row = noticeRow('skipped', skippedText(e));
    else if (e.notice) row = noticeRow(e.notice, e.text);
    else row = eventRow(e);
    row.hidden = !shown(row, f);
    frag.append(row);
  }
  pending = pending.slice(n);
  list.append(frag);
  const extra = list.children.length - MAX_ROWS;
  if (extra > 0) {
    const old = document.createRange();
    old.setStartBefore(list.firstElementChild);
    old.setEndAfter(list.children[extra - 1]);
    old.deleteContents();
  }
  if (stick) list.scrollTop = list.scrollHeight;
}

// restarted queues the notice that the gateway now answers as inc, once
// per incarnation.
function restarted(inc) {
  if (noticed === inc) return;
  noticed = inc;
  const was = incarnation && incarnation !== inc ? ` (was ${incarnation})` : '';
  pending.push({ notice: 'restart', text: `gateway restarted: now incarnation ${inc}${was}; sequences start again` });
  show($('status'), 'live: gateway restarted');
}

// streamStarted handles a stream's first event: the first one sets the
// incarnation, a later one is a resume, and one of another incarnation
// a restart (also when no INCARNATION_CHANGED follows: a page that saw
// no event had no id to resume from).
function streamStarted(e) {
  const inc = (e.header && e.header.incarnation) || '';
  streams++;
  if (incarnation && inc && inc !== incarnation) restarted(inc);
  else if (streams > 1) pending.push({ notice: 'resumed', text: `stream resumed after #${lastId.split('-')[1] || 0}` });
  if (inc) incarnation = inc;
}

function onEvent(m) {
  let e;
  try { e = JSON.parse(m.data); } catch { return; }
  if (m.lastEventId) lastId = m.lastEventId;
  switch (e.kind) {
    case 'EVENT_KIND_STREAM_STARTED':
      streamStarted(e);
      schedule();
      return;
    case 'EVENT_KIND_INCARNATION_CHANGED': {
      const inc = (e.header && e.header.incarnation) || incarnation;
      restarted(inc);
      incarnation = inc;
      schedule();
      return;
    }
    default:
  }
  total++;
  pending.push(e);
  if (pending.length > 2 * MAX_ROWS) trim();
  schedule();
}

// openStream opens the page's one EventSource. While it lives, the
// browser reconnects it with Last-Event-ID; a stream the browser gave
// up on (the gateway answered other than with a stream, as it does
// while it shuts down) is reopened here from the last id seen.
function openStream() {
  let url = '/v1/events?includeSent=true';
  const cut = lastId.lastIndexOf('-');
  if (cut > 0) {
    const seq = Number(lastId.slice(cut + 1));
    url += `&sinceIncarnation=${encodeURIComponent(lastId.slice(0, cut))}&sinceSequence=${seq + 1}`;
  }
  const es = new EventSource(url);
  source = es;
  es.onopen = () => show($('status'), noticed === incarnation && incarnation ? 'live: gateway restarted' : 'live');
  es.onmessage = onEvent;
  es.addEventListener('error', (m) => {
    if (m.data) {
      show($('status'), `stream: ${m.data}`, true);
      return;
    }
    if (ended) return;
    show($('status'), 'reconnecting', true);
    if (es.readyState !== EventSource.CLOSED || source !== es || reopening) return;
    source = null;
    // The browser gave up on the stream: a 401 (the session expired or
    // was revoked) looks the same to it as a gateway going down, so ask.
    reopening = sessionGone().then((gone) => {
      if (gone || ended) { reopening = null; return; }
      reopening = setTimeout(() => {
        reopening = null;
        if (!source && !ended) openStream();
      }, RETRY_MS);
    });
  });
}

function togglePause() {
  paused = !paused;
  const b = $('pause');
  b.textContent = paused ? 'Resume' : 'Pause';
  b.setAttribute('aria-pressed', String(paused));
  if (!paused && !source && !reopening && !ended) openStream();
  schedule();
}

// ---- login ----

let started = false; // the console's controls are wired (once)
let ended = false; // the session ended: the login shows, the page waits

// showLogin shows the login form with a message, over the console.
function showLogin(message, error) {
  $('app').hidden = true;
  $('logout').hidden = true;
  $('login').hidden = false;
  show($('login-result'), message, error);
  $('login-token').focus();
}

// sessionEnded takes the page back to its login when the gateway no
// longer takes its session (expired, logged out elsewhere, a new token):
// the stream and the polls stop, and what the page holds stays, so that
// a login resumes from the last event seen.
function sessionEnded(why) {
  if (ended || !started) return;
  ended = true;
  if (source) { source.close(); source = null; }
  if (typeof reopening === 'number') clearTimeout(reopening);
  reopening = null;
  $('status').textContent = 'session ended';
  showLogin(`Your session ended${why ? ` (${why})` : ''}: log in again to resume.`, true);
}

// sessionGone asks the gateway whether this page still holds a session,
// and ends it when not; a gateway that does not answer is not an answer.
async function sessionGone() {
  try {
    const st = await api('GET', '/v1/session');
    if (st && st.login_required && !st.authenticated) {
      sessionEnded('it expired or was logged out');
      return true;
    }
  } catch { /* down or restarting: the stream's reopening handles it */ }
  return false;
}

// The gateway trades its token for an HttpOnly session cookie (POST
// /v1/session), so the page never holds the token; without a token set
// there is no login.
async function login(ev) {
  ev.preventDefault();
  const input = $('login-token');
  try {
    const st = await api('POST', '/v1/session', { token: input.value });
    input.value = '';
    $('login').hidden = true;
    show($('login-result'), '');
    setSendLimit(st && st.max_send_bytes);
    if (started) resume(); else start(true);
  } catch (err) {
    input.value = '';
    show($('login-result'), `login failed: ${err.message}`, true);
  }
}

// resume picks up where the ended session left: the stream from its last
// id, the polls, the console shown as it was.
function resume() {
  ended = false;
  $('app').hidden = false;
  $('logout').hidden = false;
  $('status').textContent = 'connecting';
  if (!source && !reopening) openStream();
  pollListeners();
  refreshConnections();
}

async function logout() {
  try {
    await api('DELETE', '/v1/session');
  } finally {
    location.reload();
  }
}

async function main() {
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', logout);
  // The gateway says why a cookie was refused ("session expired: ...");
  // a cookie the browser dropped at its expiry is just a missing token.
  onUnauthorized((err) => {
    const why = err.message.split(':')[0];
    sessionEnded(why.includes('session') ? why : 'it expired or was logged out');
  });
  let st = { login_required: false, authenticated: true };
  try {
    st = await api('GET', '/v1/session');
  } catch { /* a gateway without the route: no login */ }
  if (st.login_required && !st.authenticated) {
    $('status').textContent = 'log in to continue';
    showLogin('', false);
    return;
  }
  setSendLimit(st.max_send_bytes);
  start(st.login_required);
}

function start(withLogin) {
  started = true;
  $('app').hidden = false;
  $('logout').hidden = !withLogin;
  $('start-form').addEventListener('submit', startListener);
  startSend();
  startRules();
  $('pause').addEventListener('click', togglePause);
  $('show-hex').addEventListener('change', (ev) => toggleHex(ev.target.checked));
  $('clear').addEventListener('click', () => { $('traffic').replaceChildren(); total = 0; schedule(); });
  // Whether the view follows its newest row is read when the user (or
  // render) scrolls, not per frame.
  const list = $('traffic');
  list.addEventListener('scroll', () => {
    stick = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  }, { passive: true });
  for (const id of ['filter-listener', 'filter-connection', 'filter-kind', 'filter-direction']) {
    $(id).addEventListener('input', applyFilters);
  }
  $('traffic-filters').addEventListener('submit', (ev) => ev.preventDefault());
  $('traffic').addEventListener('click', (ev) => {
    const b = ev.target.closest('button.conn');
    if (!b) return;
    $('send-connection').value = b.textContent;
    $('send-payload').focus();
  });
  openStream();
  pollListeners();
  startConnections();
}

main();

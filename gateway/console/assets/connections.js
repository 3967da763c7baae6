// The connections panel: the gateway's live connections, accepted and
// outbound, paged and filtered by the list API (GET /v1/connections), a
// Close button per row, and the form that opens an outbound connection
// (POST /v1/connections). Text from the gateway is only set as textContent.

import { $, api, short, show } from './util.js';

const POLL_MS = 1000;
const COLUMNS = 13; // cells before the Close button's

// Paging: tokens[i] is the page_token of page i+1 ('' for the first);
// next is the current page's next_page_token. A change of filter starts
// again from the first page, as a token is only good for its filters.
let tokens = [''];
let next = '';
// view counts page and filter changes, so that a poll answered after one
// does not draw the page the person left.
let view = 0;
let timer = 0;

function query() {
  const q = new URLSearchParams();
  q.set('pageSize', String(Math.max(1, Math.min(1000, Number($('conn-page-size').value) || 20))));
  const token = tokens[tokens.length - 1];
  if (token) q.set('pageToken', token);
  const listener = $('conn-listener').value.trim();
  if (listener) q.set('listenerId', listener);
  const origin = $('conn-origin').value;
  if (origin) q.set('origins', origin);
  return q.toString();
}

function connectionRow(id) {
  const row = document.createElement('tr');
  row.dataset.id = id;
  for (let i = 0; i < COLUMNS; i++) {
    const td = row.insertCell();
    if (i >= 6 && i <= 10) td.className = 'num';
  }
  row.cells[1].classList.add('origin');
  row.cells[2].classList.add('state');
  row.cells[12].classList.add('node');
  const close = document.createElement('button');
  close.type = 'button';
  close.className = 'close';
  close.textContent = 'Close';
  close.setAttribute('aria-label', `Close connection ${id}`);
  close.addEventListener('click', () => closeConnection(id, close));
  row.insertCell().append(close);
  return row;
}

function setCell(row, i, text) {
  const td = row.cells[i];
  if (td.textContent !== text) td.textContent = text;
}

function renderConnections(conns) {
  const body = $('connections').tBodies[0];
  const seen = new Set();
  let before = null; // rows follow the API's order
  for (const c of conns) {
    seen.add(c.connectionId);
    let row = body.querySelector(`tr[data-id="${CSS.escape(c.connectionId)}"]`);
    if (!row) row = connectionRow(c.connectionId);
    if (row.previousElementSibling !== before || row.parentNode !== body) {
      if (before) before.after(row); else body.prepend(row);
    }
    before = row;
    setCell(row, 0, c.connectionId);
    setCell(row, 1, short(c.origin, 'ORIGIN_'));
    setCell(row, 2, short(c.state, 'CONNECTION_STATE_'));
    setCell(row, 3, c.listenerId || c.address || '');
    setCell(row, 4, c.localAddress || '');
    setCell(row, 5, c.remoteAddress || '');
    setCell(row, 6, String(c.generation || 0));
    setCell(row, 7, String(c.bytesIn || 0));
    setCell(row, 8, String(c.bytesOut || 0));
    setCell(row, 9, String(c.framesIn || 0));
    setCell(row, 10, String(c.framesOut || 0));
    setCell(row, 11, c.lastError || '');
    setCell(row, 12, c.nodeId || ''); // where it lives: in a cluster, one of several
  }
  for (const row of [...body.rows]) {
    if (!seen.has(row.dataset.id)) row.remove();
  }
  $('connections-empty').hidden = body.rows.length > 0;
}

function renderPager() {
  const page = tokens.length;
  $('conn-prev').setAttribute('aria-disabled', String(page === 1));
  $('conn-next').setAttribute('aria-disabled', String(!next));
  $('conn-page').textContent = `page ${page}`;
}

// refresh lists the current page now, and again every POLL_MS.
async function refresh() {
  clearTimeout(timer);
  const mine = ++view;
  try {
    const data = await api('GET', `/v1/connections?${query()}`);
    if (mine !== view) return;
    next = (data && data.nextPageToken) || '';
    renderConnections((data && data.connections) || []);
    renderPager();
    show($('connections-error'), '');
  } catch (err) {
    if (mine !== view || err.status === 401) return; // a 401 is the login's business: no more polls
    if (err.reason === 'INVALID_PAGE_TOKEN' && tokens.length > 1) {
      // The gateway restarted, or the token aged out: from the top.
      tokens = [''];
      next = '';
      show($('connections-error'), 'the list changed under its pages: back to the first page', true);
      refresh();
      return;
    }
    show($('connections-error'), `connections: ${err.message}`, true);
  }
  if (mine === view) timer = setTimeout(refresh, POLL_MS);
}

// Each page change draws the pager at once: until the new page's answer
// brings its next_page_token, Next is disabled rather than live with a
// token of the page left behind, so a press in between is not lost
// unseen.
function firstPage() {
  tokens = [''];
  next = '';
  renderPager();
  refresh();
}

function nextPage() {
  if (!next) return;
  tokens.push(next);
  next = '';
  renderPager();
  refresh();
}

function previousPage() {
  if (tokens.length === 1) return;
  tokens.pop();
  next = '';
  renderPager();
  refresh();
}

async function closeConnection(id, button) {
  if (button.getAttribute('aria-disabled') === 'true') return;
  button.setAttribute('aria-disabled', 'true');
  try {
    const r = await api('DELETE', `/v1/connections/${encodeURIComponent(id)}`);
    const c = (r && r.connection) || {};
    show($('connect-result'), `closed ${id}: ${c.bytesIn || 0} bytes in, ${c.bytesOut || 0} bytes out`);
    refresh();
  } catch (err) {
    show($('connect-result'), `close failed: ${err.message}`, true);
    button.setAttribute('aria-disabled', 'false');
  }
}

async function connect(ev) {
  ev.preventDefault();
  const req = {
    address: $('connect-address').value.trim(),
    framing: { mode: $('connect-framing').value },
  };
  const id = $('connect-id').value.trim();
  if (id) req.connectionId = id;
  try {
    const { connection: c } = await api('POST', '/v1/connections', req);
    const state = short(c.state, 'CONNECTION_STATE_');
    show($('connect-result'), `${c.connectionId} to ${c.address}: ${state}${c.lastError ? `, last error: ${c.lastError}` : ''}`,
      state !== 'OPEN');
    refresh();
  } catch (err) {
    show($('connect-result'), `connect failed: ${err.message}`, true);
  }
}

// refreshConnections lists the current page again and restarts the poll,
// as after a new login.
export function refreshConnections() { refresh(); }

// startConnections wires the panel and starts its poll; app.js calls it
// once the page may use the API.
export function startConnections() {
  $('connect-form').addEventListener('submit', connect);
  $('conn-filter').addEventListener('submit', (ev) => { ev.preventDefault(); firstPage(); });
  for (const id of ['conn-listener', 'conn-origin', 'conn-page-size']) $(id).addEventListener('change', firstPage);
  $('conn-prev').addEventListener('click', previousPage);
  $('conn-next').addEventListener('click', nextPage);
  refresh();
}

// rules.js: the start form's reply rules, one row a rule, sent in order
// as the listener's autoReply.rules: a kind, a match and a reply each as
// text or as hex, raw, close after, a delay and a name. A rule the page
// or the gateway refuses is marked on its own row.

import { $, encodeBase64, parseHex } from './util.js';

const KINDS = [
  ['MATCH_KIND_EXACT', 'exact'],
  ['MATCH_KIND_PREFIX', 'prefix'],
  ['MATCH_KIND_SUFFIX', 'suffix'],
  ['MATCH_KIND_CONTAINS', 'contains'],
  ['MATCH_KIND_REGEX', 'regex'],
];

// The controls of a row, by class, each with its accessible name after
// "Rule N ", and the API fields whose errors it takes.
const CONTROLS = [
  ['rule-kind', 'kind', ['kind']],
  ['rule-match-format', 'match as', []],
  ['rule-match', 'match', ['text', 'data', 'regex']],
  ['rule-reply-format', 'reply as', []],
  ['rule-reply', 'reply', ['reply_text', 'reply_data']],
  ['rule-raw', 'raw, without the framing', ['raw']],
  ['rule-close', 'close after reply', ['close_after']],
  ['rule-delay', 'delay', ['delay']],
  ['rule-name', 'name', ['name']],
];

// relabel names every row's controls by its place, so that a screen
// reader's "Rule 2 kind" stays true after a Remove.
function relabel() {
  [...$('rules-list').children].forEach((row, i) => {
    const n = i + 1;
    for (const [cls, name] of CONTROLS) row.querySelector(`.${cls}`).setAttribute('aria-label', `Rule ${n} ${name}`);
    row.querySelector('.rule-remove').setAttribute('aria-label', `Remove rule ${n}`);
    const error = row.querySelector('.rule-error');
    error.id = `rule-error-${n}`;
    error.setAttribute('aria-label', `Rule ${n} error`);
  });
  $('rules-empty').hidden = $('rules-list').children.length > 0;
}

function control(tag, cls, props = {}) {
  const el = document.createElement(tag);
  el.className = cls;
  Object.assign(el, props);
  return el;
}

function formatSelect(cls) {
  const s = control('select', cls);
  s.append(new Option('text', 'text'), new Option('hex', 'hex'));
  return s;
}

function checkbox(cls, text) {
  const box = control('input', cls, { type: 'checkbox' });
  const label = control('label', 'inline');
  label.append(box, ` ${text}`);
  return label;
}

// placeholders says what each text field takes under its format.
function placeholders(row) {
  const hex = (cls) => row.querySelector(`.${cls}-format`).value === 'hex';
  row.querySelector('.rule-match').placeholder = hex('rule-match') ? 'hex, e.g. 01 02' : 'match';
  row.querySelector('.rule-reply').placeholder = hex('rule-reply') ? 'hex, e.g. ff fe' : 'reply, {{1}} a capture';
}

function addRule() {
  const row = document.createElement('li');
  const kind = control('select', 'rule-kind');
  for (const [value, text] of KINDS) kind.append(new Option(text, value));
  const remove = control('button', 'rule-remove', { type: 'button', textContent: 'Remove' });
  remove.addEventListener('click', () => {
    row.remove();
    relabel();
    $('rules-add').focus();
  });
  const error = control('p', 'rule-error error');
  error.setAttribute('role', 'status');
  row.append(
    kind,
    formatSelect('rule-match-format'),
    control('input', 'rule-match', { autocomplete: 'off' }),
    formatSelect('rule-reply-format'),
    control('input', 'rule-reply', { autocomplete: 'off' }),
    checkbox('rule-raw', 'raw'),
    checkbox('rule-close', 'close after'),
    control('input', 'rule-delay', { autocomplete: 'off', placeholder: 'delay: 250ms', size: 10 }),
    control('input', 'rule-name', { autocomplete: 'off', placeholder: 'name', size: 10 }),
    remove,
    error,
  );
  for (const s of row.querySelectorAll('select[class$="-format"]')) s.addEventListener('change', () => placeholders(row));
  placeholders(row);
  $('rules-list').append(row);
  relabel();
  kind.focus();
}

const UNITS = { ns: 1, us: 1e3, 'µs': 1e3, ms: 1e6, s: 1e9, m: 60e9, h: 3600e9 };

// duration turns a Go-style duration ("250ms", "1.5s", "1m30s") into the
// Duration JSON the API takes ("0.250000000s"), or '' for none.
export function duration(text) {
  const s = text.trim();
  if (!s) return '';
  const part = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)/y;
  let ns = 0;
  let at = 0;
  for (let m = part.exec(s); m; m = part.exec(s)) {
    ns += Math.round(parseFloat(m[1]) * UNITS[m[2]]);
    at = part.lastIndex;
  }
  if (at !== s.length) throw new Error(`delay ${JSON.stringify(s)}: a duration such as 250ms, 1.5s or 1m`);
  return `${Math.floor(ns / 1e9)}.${String(ns % 1e9).padStart(9, '0')}s`;
}

// RuleError is a rule the page refuses before sending, with its index
// and the field at fault.
class RuleError extends Error {
  constructor(index, field, message) {
    super(`auto_reply.rules[${index}].${field}: ${message}`);
    this.fields = [`auto_reply.rules[${index}].${field}`];
  }
}

function hexField(index, field, text) {
  try {
    return encodeBase64(parseHex(text));
  } catch (err) {
    throw new RuleError(index, field, err.message);
  }
}

// replyRules is the rules as the API takes them, in the page's order:
// REGEX's match in regex, every other kind's in text or data (hex, sent
// as base64), the reply in reply_text or reply_data. It throws a
// RuleError for a row the API could not take.
export function replyRules() {
  return [...$('rules-list').children].map((row, i) => {
    const value = (cls) => row.querySelector(`.${cls}`).value;
    const kind = value('rule-kind');
    const match = value('rule-match');
    const rule = { kind };
    if (value('rule-match-format') === 'hex') {
      if (kind === 'MATCH_KIND_REGEX') throw new RuleError(i, 'regex', 'a regex is text: choose text, or a kind that matches bytes');
      rule.data = hexField(i, 'data', match);
    } else if (kind === 'MATCH_KIND_REGEX') rule.regex = match;
    else rule.text = match;
    if (value('rule-reply-format') === 'hex') rule.replyData = hexField(i, 'reply_data', value('rule-reply'));
    else rule.replyText = value('rule-reply');
    if (row.querySelector('.rule-raw').checked) rule.raw = true;
    if (row.querySelector('.rule-close').checked) rule.closeAfter = true;
    try {
      const delay = duration(value('rule-delay'));
      if (delay) rule.delay = delay;
    } catch (err) {
      throw new RuleError(i, 'delay', err.message);
    }
    const name = value('rule-name').trim();
    if (name) rule.name = name;
    return rule;
  });
}

// showRuleErrors marks the rows an error names (a field such as
// auto_reply.rules[2].regex, in its BadRequest or its message) with the
// error, next to the control at fault; null clears every mark.
export function showRuleErrors(err) {
  const rows = [...$('rules-list').children];
  for (const row of rows) {
    row.querySelector('.rule-error').textContent = '';
    for (const el of row.querySelectorAll('[aria-invalid]')) {
      el.removeAttribute('aria-invalid');
      el.removeAttribute('aria-describedby');
    }
  }
  if (!err) return;
  const named = [...(err.fields || []), err.message || ''];
  for (const text of named) {
    const m = /rules\[(\d+)\](?:\.(\w+))?/.exec(text);
    const row = m && rows[Number(m[1])];
    if (!row) continue;
    const error = row.querySelector('.rule-error');
    error.textContent = err.message;
    const at = CONTROLS.find(([, , fields]) => fields.includes(m[2] || ''));
    const el = row.querySelector(`.${at ? at[0] : 'rule-kind'}`);
    el.setAttribute('aria-invalid', 'true');
    el.setAttribute('aria-describedby', error.id);
    return;
  }
}

// startRules wires the Add rule button.
export function startRules() {
  $('rules-add').addEventListener('click', addRule);
  relabel();
}

// rules.js: the start form's reply rules, one row a rule, sent in order
// as the listener's autoReply.rules.

import { $ } from './util.js';

const KINDS = [
  ['MATCH_KIND_EXACT', 'exact'],
  ['MATCH_KIND_PREFIX', 'prefix'],
  ['MATCH_KIND_SUFFIX', 'suffix'],
  ['MATCH_KIND_CONTAINS', 'contains'],
  ['MATCH_KIND_REGEX', 'regex'],
];

function labelled(el, cls) {
  el.className = cls;
  return el;
}

// relabel names every row's controls by its place, so that a screen
// reader's "Rule 2 kind" stays true after a Remove.
function relabel() {
  [...$('rules-list').children].forEach((row, i) => {
    const n = i + 1;
    row.querySelector('.rule-kind').setAttribute('aria-label', `Rule ${n} kind`);
    row.querySelector('.rule-match').setAttribute('aria-label', `Rule ${n} match`);
    row.querySelector('.rule-reply').setAttribute('aria-label', `Rule ${n} reply text`);
    row.querySelector('.rule-close').setAttribute('aria-label', `Rule ${n} close after reply`);
    row.querySelector('.rule-remove').setAttribute('aria-label', `Remove rule ${n}`);
  });
  $('rules-empty').hidden = $('rules-list').children.length > 0;
}

function addRule() {
  const row = document.createElement('li');
  const kind = labelled(document.createElement('select'), 'rule-kind');
  for (const [value, text] of KINDS) kind.append(new Option(text, value));
  const match = labelled(document.createElement('input'), 'rule-match');
  match.autocomplete = 'off';
  match.placeholder = 'match';
  const reply = labelled(document.createElement('input'), 'rule-reply');
  reply.autocomplete = 'off';
  reply.placeholder = 'reply, {{1}} a capture';
  const close = labelled(document.createElement('input'), 'rule-close');
  close.type = 'checkbox';
  const closeLabel = document.createElement('label');
  closeLabel.className = 'inline';
  closeLabel.append(close, ' close after');
  const remove = labelled(document.createElement('button'), 'rule-remove');
  remove.type = 'button';
  remove.textContent = 'Remove';
  remove.addEventListener('click', () => {
    row.remove();
    relabel();
    $('rules-add').focus();
  });
  row.append(kind, match, reply, closeLabel, remove);
  $('rules-list').append(row);
  relabel();
  kind.focus();
}

// replyRules is the rules as the API takes them, in the page's order:
// REGEX's match in regex, every other kind's in text.
export function replyRules() {
  return [...$('rules-list').children].map((row) => {
    const kind = row.querySelector('.rule-kind').value;
    const match = row.querySelector('.rule-match').value;
    const rule = { kind, replyText: row.querySelector('.rule-reply').value };
    if (kind === 'MATCH_KIND_REGEX') rule.regex = match;
    else rule.text = match;
    if (row.querySelector('.rule-close').checked) rule.closeAfter = true;
    return rule;
  });
}

// startRules wires the Add rule button.
export function startRules() {
  $('rules-add').addEventListener('click', addRule);
  relabel();
}

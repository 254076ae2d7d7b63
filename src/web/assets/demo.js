// The demo player: each protocol step of one player, driven by examples/player.js
// (served as /web/player.js). No inline script: the page's CSP allows none.
import { DriscPlayer, States } from '/web/player.js';

const $ = (id) => document.getElementById(id);
const MAX_STEPS = 200;

const fields = {
  publisher: $('publisher'),
  customer: $('customer'),
  offer: $('offer'),
  name: $('session-name'),
  token: $('token'),
};
fields.name.value = `Tab ${Math.random().toString(36).slice(2, 6)}`;

/** Who the token in the box was minted for, so a change of customer mints a new one. */
let mintedFor = null;
/** The pool as this tab knows it without /me/sessions: the last 409's list, kept up to date by what this tab did. */
let known = [];

const player = new DriscPlayer({
  baseUrl: '',
  customerToken: () => fields.token.value.trim(),
  storageKey: 'drisc.demo.endpoint',
  onEvent: onPlayerEvent,
});

function step(text, kind = '') {
  const item = document.createElement('li');
  const time = new Date().toLocaleTimeString();
  item.textContent = `${time}  ${text}`;
  if (kind) item.className = kind;
  const steps = $('steps');
  steps.prepend(item);
  while (steps.children.length > MAX_STEPS) steps.lastElementChild.remove();
}

function say(text) {
  $('message').textContent = text;
}

function onPlayerEvent(event) {
  switch (event.type) {
    case 'request':
      step(`POST ${event.path} ${JSON.stringify(event.body)}`, 'out');
      break;
    case 'response':
      step(`← HTTP ${event.status} ${event.body.code || (event.body.endpoint ? 'granted' : event.body.status || '')}`, 'in');
      if (event.body.sessionId) {
        $('session-id').textContent = event.body.sessionId;
        // A takeover ended its victim; this tab's session joins the pool.
        const victim = event.path === '/takeover' ? pendingVictim : null;
        known = known.filter((s) => s.sessionId !== victim);
        known.push({ sessionId: event.body.sessionId, name: fields.name.value.trim(), state: 'pending' });
      }
      break;
    case 'open':
      step('socket open', 'note');
      break;
    case 'sent':
      if (event.action !== 'PONG') step(`→ ${JSON.stringify(event.message)}`, 'out');
      break;
    case 'received':
      if (event.action !== 'PING') step(`← ${JSON.stringify(event.message)}`, 'in');
      break;
    case 'closed':
      step(`socket closed (${event.code}${event.reason ? ` ${event.reason}` : ''})`, 'note');
      break;
    case 'state':
      showState(event);
      break;
    case 'error':
      step(event.message, 'error');
      break;
    default:
      break;
  }
  $('pings').textContent = String(player.pings);
  $('pongs').textContent = String(player.pongs);
}

function showState(event) {
  $('state').textContent = event.state;
  document.body.dataset.state = event.state;
  const active = [States.REQUESTING, States.CONNECTING, States.PLAYING, States.RECONNECTING].includes(event.state);
  $('stop').disabled = !active;
  $('play').disabled = active;
  $('resume').disabled = active || !player.cachedEndpoint;
  if (event.state === States.TAKEN_OVER) say(`Taken over by “${event.sessionName || ''}”.`);
  if (event.state === States.EXPIRED) say('The session has ended (EXPIRED): press Play for a new one.');
  if (event.state === States.TERMINATED) say('A newer socket holds this session (TERMINATE).');
  if (event.state === States.RECONNECTING && event.attempt) step(`reconnecting with the cached endpoint (try ${event.attempt})`, 'note');
  const mine = known.find((s) => s.sessionId === player.sessionId);
  if (mine) {
    if (event.state === States.PLAYING) mine.state = 'live';
    if ([States.TAKEN_OVER, States.EXPIRED, States.FINISHED].includes(event.state)) {
      known = known.filter((s) => s !== mine);
    }
  }
  if (event.state !== States.REQUESTING) refreshPool();
}

let pendingVictim = null;

async function ensureToken() {
  const who = `${fields.publisher.value}\u0000${fields.customer.value}`;
  if (fields.token.value.trim() && (mintedFor === null || mintedFor === who)) return true;
  return mint();
}

async function mint() {
  const response = await fetch('/demo/token', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ publisherId: fields.publisher.value, customerId: fields.customer.value }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    say(body.message || `The token could not be minted (HTTP ${response.status}).`);
    return false;
  }
  fields.token.value = body.token;
  mintedFor = `${fields.publisher.value}\u0000${fields.customer.value}`;
  step('minted a development token', 'note');
  return true;
}

function request() {
  return { offerId: fields.offer.value.trim(), sessionName: fields.name.value.trim() };
}

async function run(action) {
  say('');
  $('refusal').hidden = true;
  if (!(await ensureToken())) return;
  try {
    const answer = await action();
    if (answer.status === 'limit') showRefusal(answer);
    if (answer.status === 'disabled') say('Session control is disabled for this publisher: a real player would play without a session.');
  } catch (error) {
    say(error.message);
  }
}

function showRefusal(answer) {
  known = answer.activeSessions.map((s) => ({ ...s }));
  $('refusal').hidden = false;
  $('refusal-text').textContent = answer.takeOverEnabled
    ? `The limit is reached (409 LimitExceeded). Take over one of these ${answer.activeSessions.length} session(s):`
    : 'The limit is reached (409 LimitExceeded) and takeover is disabled.';
  const list = $('takeover-list');
  list.replaceChildren();
  for (const session of answer.activeSessions) {
    const item = document.createElement('li');
    const label = document.createElement('span');
    label.textContent = `${session.name || '(no name)'} `;
    const id = document.createElement('code');
    id.textContent = session.sessionId;
    item.append(label, id);
    if (answer.takeOverEnabled) {
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'take-over';
      button.dataset.sessionId = session.sessionId;
      button.textContent = 'Take over';
      button.setAttribute('aria-label', `Take over ${session.name || session.sessionId}`);
      button.addEventListener('click', () => {
        pendingVictim = session.sessionId;
        run(() => player.takeOver(session.sessionId, request()));
      });
      item.append(' ', button);
    }
    list.append(item);
  }
  renderPool(known, 'From the 409 answer (the sessions that hold the pool).');
  list.querySelector('button')?.focus();
}

/** The customer's sessions: GET /me/sessions where the server has it, else the last 409's list. */
async function refreshPool() {
  const token = fields.token.value.trim();
  if (!token) return;
  try {
    const response = await fetch('/me/sessions', { headers: { Authorization: `Bearer ${token}` } });
    if (response.ok) {
      const body = await response.json();
      const sessions = (Array.isArray(body) ? body : body.sessions || []).filter(
        (s) => !s.offerId || s.offerId === fields.offer.value.trim() || s.offerId === '*unknown',
      );
      renderPool(sessions, 'From GET /me/sessions (the customer\u2019s own view).');
      return;
    }
  } catch {
    // Falls through to what the last refusal said.
  }
  renderPool(known, 'As this tab knows it (this server has no GET /me/sessions): the last 409\u2019s list, and what this tab did since.');
}

function renderPool(sessions, note) {
  $('pool-note').textContent = note;
  const pool = $('pool');
  pool.replaceChildren();
  for (const s of sessions) {
    const item = document.createElement('li');
    const mine = s.sessionId === player.sessionId ? ' (this tab)' : '';
    item.textContent = `${s.name || s.sessionName || '(no name)'}${mine} · ${s.state || 'held'} · ${s.sessionId}`;
    pool.append(item);
  }
  if (!sessions.length) {
    const item = document.createElement('li');
    item.className = 'muted';
    item.textContent = 'none known';
    pool.append(item);
  }
}

$('mint').addEventListener('click', () => mint());
$('play').addEventListener('click', () => run(() => player.start(request())));
$('resume').addEventListener('click', () => run(() => player.resume()));
$('stop').addEventListener('click', async () => {
  await player.stop();
  say('Stopped: FINISHED sent, the slot is free.');
});
$('refresh-pool').addEventListener('click', () => refreshPool());
$('resume').disabled = !player.cachedEndpoint;
document.body.dataset.ready = 'true';

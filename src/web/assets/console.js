// The operator console: a client of the admin API (/admin/v1) and of /metrics.
// The admin key lives in this tab's sessionStorage only and travels in the
// Authorization header, never in a URL. Every value from the server is put in the
// page as text (textContent), never as HTML.

const $ = (id) => document.getElementById(id);
const KEY = 'drisc.adminKey';
const SESSIONS_PAGE = 100;
const PUBLISHERS_PAGE = 50;
const SAMPLE_MS = 2000;
const SAMPLES = 60;
const MAX_EVENTS = 200;
/** The largest event frame kept while waiting for its end: a runaway stream cannot fill memory. */
const MAX_EVENT_BYTES = 64 * 1024;

// ---------------------------------------------------------------------------
// The fields the admin API knows today. A field the server returns that is not
// listed here (a setting added since) is shown read-only, never dropped: to make
// it editable, add a line here.

/** Publisher fields: PUT /admin/v1/publishers/{id} changes only what it is given. */
const PUBLISHER_FIELDS = [
  { name: 'enabled', label: 'Session control enabled', type: 'bool' },
  { name: 'takeoverEnabled', label: 'Takeover enabled', type: 'bool' },
  { name: 'defaultSessionLimit', label: 'Default session limit (unknown offers)', type: 'number' },
  { name: 'unknownOffers', label: 'Unknown offers', type: 'select', options: ['shared', 'each', 'reject'] },
  { name: 'verificationKey', label: 'Verification key (HMAC secret or PEM public key; empty: unchanged)', type: 'secret', shownAs: 'verificationKeySet' },
  { name: 'jwksUri', label: 'JWKS URI ("" removes it)', type: 'text' },
];
/** Shown but never sent: what the server says about the publisher. */
const PUBLISHER_READ_ONLY = new Set(['publisherId', 'offers', 'verificationKeySet']);
/** Offer fields: PUT /admin/v1/publishers/{id}/offers/{offer} replaces the offer. */
const OFFER_FIELDS = new Set(['offerId', 'sessionLimit', 'tags', 'takeoverEnabled']);

// ---------------------------------------------------------------------------
// The key and the API

let adminKey = sessionStorage.getItem(KEY) || '';

async function api(method, path, body) {
  const init = { method, headers: { Authorization: `Bearer ${adminKey}` } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (response.status === 401 && document.body.dataset.signedIn === 'true') {
    signOut('The admin key was refused: sign in again.');
  }
  return { status: response.status, ok: response.ok, body: json, text };
}

function failure(answer) {
  return answer.body?.message || `HTTP ${answer.status}`;
}

function notify(text) {
  $('notice').textContent = text;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('data-')) node.dataset[key.slice(5).replace(/-([a-z])/g, (_, c) => c.toUpperCase())] = value;
    else if (key in node && typeof value !== 'string') node[key] = value;
    else node.setAttribute(key, value === true ? '' : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

// ---------------------------------------------------------------------------
// Signing in and out

async function signIn(key) {
  adminKey = key;
  const answer = await api('GET', `/admin/v1/publishers?limit=1`);
  if (!answer.ok) {
    adminKey = '';
    sessionStorage.removeItem(KEY);
    $('signin-error').textContent =
      answer.status === 401 ? 'This admin key is not valid.' : `Cannot sign in: ${failure(answer)}`;
    return false;
  }
  sessionStorage.setItem(KEY, key);
  $('signin-error').textContent = '';
  $('signin').hidden = true;
  $('app').hidden = false;
  $('sign-out').hidden = false;
  document.body.dataset.signedIn = 'true';
  start();
  return true;
}

function signOut(message = 'Signed out.') {
  adminKey = '';
  sessionStorage.removeItem(KEY);
  stop();
  $('app').hidden = true;
  $('signin').hidden = false;
  $('sign-out').hidden = true;
  document.body.dataset.signedIn = 'false';
  $('admin-key').value = '';
  notify(message);
  $('admin-key').focus();
}

let running = null;

function start() {
  stop();
  running = new AbortController();
  loadPublishers(null);
  sample();
  const timer = setInterval(sample, SAMPLE_MS);
  running.signal.addEventListener('abort', () => clearInterval(timer));
  followEvents(running.signal);
}

function stop() {
  running?.abort();
  running = null;
}

// ---------------------------------------------------------------------------
// Live figures: /metrics (Prometheus text), read every two seconds

const history = { held: [], granted: [], refused: [] };
let previous = null;

/** name{labels} value → [{name, labels, value}] for the lines we read. */
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith('drisc_')) continue;
    const match = /^([a-z_]+)(?:\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[2] || '').split(',')) {
      const at = pair.indexOf('=');
      if (at > 0) labels[pair.slice(0, at)] = pair.slice(at + 1).replace(/^"|"$/g, '');
    }
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

async function sample() {
  let response;
  try {
    response = await fetch('/metrics', { headers: { Authorization: `Bearer ${adminKey}` } });
  } catch {
    return;
  }
  if (!response.ok) return;
  const samples = parseMetrics(await response.text());
  const sum = (name, keep = () => true) =>
    samples.filter((s) => s.name === name && keep(s.labels)).reduce((total, s) => total + s.value, 0);
  const state = (name) => {
    const found = samples.find((s) => s.name === 'drisc_sessions' && s.labels.state === name);
    return found ? found.value : null;
  };
  const now = {
    at: Date.now(),
    granted: sum('drisc_admissions_total', (l) => l.outcome === 'granted'),
    refused: sum('drisc_admissions_total', (l) => !['granted', 'disabled'].includes(l.outcome)),
  };
  const figures = {
    pending: state('pending'),
    live: state('live'),
    detached: state('detached'),
    sockets: sum('drisc_websocket_connections'),
  };
  for (const [name, value] of Object.entries(figures)) {
    $(`fig-${name}`).textContent = value === null ? 'n/a' : String(value);
  }
  const held = (figures.pending || 0) + (figures.live || 0) + (figures.detached || 0);
  let granted = 0;
  let refused = 0;
  if (previous) {
    const seconds = Math.max((now.at - previous.at) / 1000, 0.001);
    granted = Math.max(0, (now.granted - previous.granted) / seconds);
    refused = Math.max(0, (now.refused - previous.refused) / seconds);
  }
  previous = now;
  $('fig-granted').textContent = granted.toFixed(1);
  $('fig-refused').textContent = refused.toFixed(1);
  for (const [series, value] of [['held', held], ['granted', granted], ['refused', refused]]) {
    history[series].push(value);
    if (history[series].length > SAMPLES) history[series].shift();
  }
  drawChart();
}

const SVG = 'http://www.w3.org/2000/svg';

function drawChart() {
  const svg = $('chart');
  const width = 600;
  const height = 160;
  const pad = 6;
  svg.replaceChildren();
  for (let i = 1; i < 4; i += 1) {
    const grid = document.createElementNS(SVG, 'line');
    const y = (height * i) / 4;
    grid.setAttribute('x1', '0');
    grid.setAttribute('x2', String(width));
    grid.setAttribute('y1', String(y));
    grid.setAttribute('y2', String(y));
    grid.setAttribute('class', 'grid');
    svg.append(grid);
  }
  for (const series of ['held', 'granted', 'refused']) {
    const values = history[series];
    if (values.length < 2) continue;
    const top = Math.max(...values, 1);
    const points = values
      .map((v, i) => {
        const x = (i / (SAMPLES - 1)) * width;
        const y = height - pad - (v / top) * (height - 2 * pad);
        return `${x.toFixed(1)},${y.toFixed(1)}`;
      })
      .join(' ');
    const line = document.createElementNS(SVG, 'polyline');
    line.setAttribute('points', points);
    line.setAttribute('class', `series ${series}`);
    svg.append(line);
  }
}

// ---------------------------------------------------------------------------
// Publishers and offers

let publisherCursor = null;
let currentPublisher = null;

async function loadPublishers(cursor) {
  const query = new URLSearchParams({ limit: String(PUBLISHERS_PAGE) });
  if (cursor) query.set('cursor', cursor);
  const answer = await api('GET', `/admin/v1/publishers?${query}`);
  if (!answer.ok) {
    notify(`Publishers could not be listed: ${failure(answer)}`);
    return;
  }
  const rows = $('publisher-rows');
  rows.replaceChildren();
  for (const p of answer.body.publishers) {
    const open = el('button', { type: 'button', class: 'link', text: p.publisherId, 'data-publisher-id': p.publisherId });
    open.addEventListener('click', () => openPublisher(p.publisherId));
    rows.append(
      el('tr', {},
        el('td', {}, open),
        el('td', { text: p.enabled ? 'yes' : 'no' }),
        el('td', { text: String(p.defaultSessionLimit) }),
        el('td', { text: p.unknownOffers })),
    );
  }
  if (!answer.body.publishers.length) rows.append(el('tr', {}, el('td', { colspan: '4', class: 'muted', text: 'No publisher is configured yet.' })));
  publisherCursor = answer.body.nextCursor;
  $('publishers-next').disabled = !publisherCursor;
}

async function openPublisher(id) {
  const answer = await api('GET', `/admin/v1/publishers/${encodeURIComponent(id)}`);
  let publisher;
  if (answer.status === 404) {
    // Not configured yet: the form creates it with what is filled in.
    publisher = { publisherId: id, offers: [] };
    notify(`Publisher ${id} is not configured: saving creates it.`);
  } else if (!answer.ok) {
    notify(`Publisher ${id} could not be read: ${failure(answer)}`);
    return;
  } else {
    publisher = answer.body;
  }
  currentPublisher = publisher;
  renderPublisher(publisher);
  $('publisher-detail').hidden = false;
  $('publisher-h').focus();
}

function renderPublisher(publisher) {
  $('publisher-h').textContent = `Publisher ${publisher.publisherId}`;
  const form = $('publisher-form');
  form.replaceChildren();
  for (const field of PUBLISHER_FIELDS) {
    const id = `pub-${field.name}`;
    const value = publisher[field.name];
    let input;
    if (field.type === 'bool') {
      input = el('select', { id, name: field.name },
        el('option', { value: '', text: value === undefined ? '(default)' : '(unchanged)' }),
        el('option', { value: 'true', text: 'yes', selected: value === true }),
        el('option', { value: 'false', text: 'no', selected: value === false }));
    } else if (field.type === 'select') {
      input = el('select', { id, name: field.name },
        el('option', { value: '', text: '(unchanged)' }),
        ...field.options.map((o) => el('option', { value: o, text: o, selected: value === o })));
    } else if (field.type === 'number') {
      input = el('input', { id, name: field.name, type: 'number', min: '0', value: value === undefined ? '' : String(value) });
    } else if (field.type === 'secret') {
      input = el('input', { id, name: field.name, type: 'password', autocomplete: 'off', placeholder: publisher[field.shownAs] ? 'a key is set' : 'no key set' });
    } else {
      input = el('input', { id, name: field.name, autocomplete: 'off', value: value ?? '' });
    }
    form.append(el('label', { for: id, text: field.label }), input);
  }
  const known = new Set([...PUBLISHER_FIELDS.map((f) => f.name), ...PUBLISHER_READ_ONLY]);
  const others = Object.entries(publisher).filter(([k]) => !known.has(k));
  if (others.length) form.append(readOnly('pub-other', 'Other settings (read-only here)', Object.fromEntries(others)));
  const save = el('button', { type: 'submit', id: 'publisher-save', class: 'primary', text: 'Save publisher' });
  form.append(el('div', { class: 'row' }, save));
  renderOffers(publisher.offers || []);
}

function readOnly(id, label, value) {
  return el('div', { class: 'read-only' },
    el('label', { for: id, text: label }),
    el('output', { id, class: 'mono', text: JSON.stringify(value) }));
}

async function savePublisher(event) {
  event.preventDefault();
  const change = {};
  for (const field of PUBLISHER_FIELDS) {
    const raw = $(`pub-${field.name}`).value;
    if (field.type === 'bool' && raw) change[field.name] = raw === 'true';
    else if (field.type === 'select' && raw) change[field.name] = raw;
    else if (field.type === 'number' && raw !== '' && Number(raw) !== currentPublisher[field.name]) change[field.name] = Number(raw);
    else if (field.type === 'secret' && raw) change[field.name] = raw;
    else if (field.type === 'text' && raw !== (currentPublisher[field.name] ?? '')) change[field.name] = raw;
  }
  const id = currentPublisher.publisherId;
  const answer = await api('PUT', `/admin/v1/publishers/${encodeURIComponent(id)}`, change);
  notify(answer.ok ? `Publisher ${id} saved.` : `Publisher ${id} was not saved: ${failure(answer)}`);
  if (answer.ok) {
    await openPublisher(id);
    loadPublishers(null);
  }
}

function renderOffers(offers) {
  const rows = $('offer-rows');
  rows.replaceChildren();
  for (const offer of offers) {
    const key = offer.offerId;
    const limit = el('input', { type: 'number', min: '0', class: 'offer-limit', value: String(offer.sessionLimit), 'aria-label': `Session limit of ${key}` });
    const tags = el('input', { class: 'offer-tags', value: (offer.tags || []).join(', '), 'aria-label': `Tags of ${key}` });
    const takeover = el('select', { class: 'offer-takeover', 'aria-label': `Takeover for ${key}` },
      el('option', { value: '', text: 'inherit', selected: offer.takeoverEnabled === null || offer.takeoverEnabled === undefined }),
      el('option', { value: 'true', text: 'yes', selected: offer.takeoverEnabled === true }),
      el('option', { value: 'false', text: 'no', selected: offer.takeoverEnabled === false }));
    const others = Object.fromEntries(Object.entries(offer).filter(([k]) => !OFFER_FIELDS.has(k)));
    const save = el('button', { type: 'button', class: 'offer-save', text: 'Save', 'aria-label': `Save offer ${key}` });
    const remove = el('button', { type: 'button', class: 'offer-delete danger', text: 'Delete', 'aria-label': `Delete offer ${key}` });
    save.addEventListener('click', () =>
      putOffer(key, {
        // An offer is replaced whole: fields this page does not edit go back as they came.
        ...others,
        sessionLimit: Number(limit.value),
        tags: splitTags(tags.value),
        takeoverEnabled: takeover.value === '' ? null : takeover.value === 'true',
      }));
    remove.addEventListener('click', () => deleteOffer(key));
    rows.append(
      el('tr', { 'data-offer-id': key },
        el('th', { scope: 'row', text: key }),
        el('td', {}, limit),
        el('td', {}, tags),
        el('td', {}, takeover),
        el('td', { class: 'mono', text: Object.keys(others).length ? JSON.stringify(others) : '' }),
        el('td', {}, save, ' ', remove)),
    );
  }
  if (!offers.length) rows.append(el('tr', {}, el('td', { colspan: '6', class: 'muted', text: 'No offer configured.' })));
}

function splitTags(text) {
  return text.split(',').map((t) => t.trim()).filter(Boolean);
}

async function putOffer(offerId, body) {
  const id = currentPublisher.publisherId;
  const answer = await api('PUT', `/admin/v1/publishers/${encodeURIComponent(id)}/offers/${encodeURIComponent(offerId)}`, body);
  notify(answer.ok ? `Offer ${offerId} saved: the next admission uses it.` : `Offer ${offerId} was not saved: ${failure(answer)}`);
  if (answer.ok) await openPublisher(id);
  return answer.ok;
}

async function deleteOffer(offerId) {
  const id = currentPublisher.publisherId;
  const answer = await api('DELETE', `/admin/v1/publishers/${encodeURIComponent(id)}/offers/${encodeURIComponent(offerId)}`);
  notify(answer.ok ? `Offer ${offerId} deleted.` : `Offer ${offerId} was not deleted: ${failure(answer)}`);
  if (answer.ok) await openPublisher(id);
}

// ---------------------------------------------------------------------------
// A customer's sessions, a page at a time (the server pages; one page is drawn)

let search = null;
/** The cursors of the pages before the one shown, for Previous. */
let cursors = [];
let nextCursor = null;

async function loadSessions(cursor) {
  const query = new URLSearchParams({ publisherId: search.publisherId, customerId: search.customerId, limit: String(SESSIONS_PAGE) });
  if (search.offerId) query.set('offerId', search.offerId);
  if (cursor) query.set('cursor', cursor);
  const answer = await api('GET', `/admin/v1/sessions?${query}`);
  if (!answer.ok) {
    notify(`Sessions could not be listed: ${failure(answer)}`);
    return;
  }
  const rows = $('session-rows');
  const fragment = document.createDocumentFragment();
  for (const s of answer.body.sessions) {
    const kick = el('button', { type: 'button', class: 'kick danger', text: 'Kick', 'data-session-id': s.sessionId, 'aria-label': `Kick session ${s.name || s.sessionId}` });
    kick.addEventListener('click', () => kickSession(s.sessionId));
    fragment.append(
      el('tr', { 'data-session-id': s.sessionId },
        el('td', { class: 'mono', text: s.sessionId }),
        el('td', { text: s.offerId }),
        el('td', { text: s.name }),
        el('td', { text: s.state }),
        el('td', { text: new Date(s.createdAt).toLocaleString() }),
        el('td', {}, kick)),
    );
  }
  rows.replaceChildren(fragment);
  nextCursor = answer.body.nextCursor;
  const page = cursors.length + 1;
  $('sessions-caption').textContent = answer.body.sessions.length
    ? `Page ${page}: ${answer.body.sessions.length} session(s) of ${search.customerId}${nextCursor ? ', more on the next page' : ''}.`
    : `${search.customerId} holds no session${search.offerId ? ` of ${search.offerId}` : ''}.`;
  $('sessions-next').disabled = !nextCursor;
  $('sessions-prev').disabled = cursors.length === 0;
  $('kick-all').disabled = false;
  return cursor;
}

let shownCursor = null;

async function kickSession(id) {
  const answer = await api('DELETE', `/admin/v1/sessions/${encodeURIComponent(id)}`);
  notify(answer.ok ? `Session ${id} ended: its player was told EXPIRED.` : `Session ${id} was not ended: ${failure(answer)}`);
  await loadSessions(shownCursor);
}

async function kickAll() {
  const who = `${search.customerId} of ${search.publisherId}${search.offerId ? ` (offer ${search.offerId})` : ''}`;
  if (!window.confirm(`End every session of ${who}?`)) return;
  const query = search.offerId ? `?offerId=${encodeURIComponent(search.offerId)}` : '';
  const answer = await api('DELETE', `/admin/v1/publishers/${encodeURIComponent(search.publisherId)}/customers/${encodeURIComponent(search.customerId)}/sessions${query}`);
  notify(answer.ok ? `${answer.body.ended} session(s) of ${who} ended.` : `Not ended: ${failure(answer)}`);
  cursors = [];
  shownCursor = null;
  await loadSessions(null);
}

// ---------------------------------------------------------------------------
// Events: GET /admin/v1/events (Server-Sent Events), read with fetch so the key
// goes in a header (EventSource cannot send one)

/** How long to wait before opening the stream again after it ended or failed. */
const EVENTS_RETRY_MS = 5000;

/** Follows the stream while signed in: opened again after it ends, never after a 404. */
async function followEvents(signal) {
  while (!signal.aborted) {
    const again = await readEvents(signal);
    if (!again || signal.aborted) return;
    await new Promise((resolve) => setTimeout(resolve, EVENTS_RETRY_MS));
  }
}

/** Reads the stream until it ends; whether to try again. */
async function readEvents(signal) {
  const status = $('events-status');
  let response;
  try {
    response = await fetch('/admin/v1/events', { headers: { Authorization: `Bearer ${adminKey}`, Accept: 'text/event-stream' }, signal });
  } catch {
    if (!signal.aborted) status.textContent = 'The event stream could not be opened; trying again.';
    return true;
  }
  if (response.status === 404 || response.status === 405) {
    status.textContent = 'Events: not available on this server.';
    return false;
  }
  if (!response.ok || !response.body) {
    status.textContent = `Events: not available (HTTP ${response.status}).`;
    return response.status >= 500;
  }
  status.textContent = 'Following the event stream.';
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        showEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
      if (buffer.length > MAX_EVENT_BYTES) buffer = '';
    }
    if (!signal.aborted) status.textContent = 'The event stream ended; opening it again.';
  } catch {
    if (!signal.aborted) status.textContent = 'The event stream was interrupted; opening it again.';
  }
  return true;
}

function showEvent(frame) {
  let type = 'message';
  const data = [];
  for (const line of frame.split('\n')) {
    if (line.startsWith('event:')) type = line.slice(6).trim();
    else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
  }
  if (!data.length) return; // a comment or keep-alive
  const list = $('events');
  list.prepend(el('li', { text: `${new Date().toLocaleTimeString()}  ${type}  ${data.join('\n')}` }));
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
}

// ---------------------------------------------------------------------------
// Wiring

$('signin-form').addEventListener('submit', (event) => {
  event.preventDefault();
  signIn($('admin-key').value.trim());
});
$('sign-out').addEventListener('click', () => signOut());
$('publishers-first').addEventListener('click', () => loadPublishers(null));
$('publishers-next').addEventListener('click', () => loadPublishers(publisherCursor));
$('open-publisher-form').addEventListener('submit', (event) => {
  event.preventDefault();
  openPublisher($('open-publisher').value.trim());
});
$('publisher-form').addEventListener('submit', savePublisher);
$('new-offer').addEventListener('submit', async (event) => {
  event.preventDefault();
  const saved = await putOffer($('new-offer-id').value.trim(), {
    sessionLimit: Number($('new-offer-limit').value),
    tags: splitTags($('new-offer-tags').value),
  });
  if (saved) $('new-offer').reset();
});
$('session-search').addEventListener('submit', (event) => {
  event.preventDefault();
  search = {
    publisherId: $('search-publisher').value.trim(),
    customerId: $('search-customer').value.trim(),
    offerId: $('search-offer').value.trim(),
  };
  cursors = [];
  shownCursor = null;
  loadSessions(null);
});
$('sessions-next').addEventListener('click', () => {
  cursors.push(shownCursor);
  shownCursor = nextCursor;
  loadSessions(shownCursor);
});
$('sessions-prev').addEventListener('click', () => {
  shownCursor = cursors.pop() ?? null;
  loadSessions(shownCursor);
});
$('kick-all').addEventListener('click', kickAll);

if (adminKey) {
  signIn(adminKey);
} else {
  $('admin-key').focus();
}
document.body.dataset.ready = 'true';

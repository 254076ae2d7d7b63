// drisc player client: a small, dependency-free client of the DRISC protocol
// (docs/PROTOCOL.md) for browsers and Node.js 20 or later.
//
//   import { DriscPlayer } from './player.js';
//   const player = new DriscPlayer({ baseUrl: 'https://drisc.example.com', customerToken: jwt });
//   const answer = await player.start({ offerId: 'S123_US', sessionName: 'Living room TV' });
//   if (answer.status === 'limit') {            // 409 LimitExceeded: offer a takeover
//     await player.takeOver(answer.activeSessions[0].sessionId, { offerId: 'S123_US' });
//   }
//   ...
//   await player.stop();                        // FINISHED: the slot is free at once
//
// Browsers have fetch and WebSocket. Node 20 has fetch but no global WebSocket: pass
// one as `WebSocket` (Node 22 has it built in; on Node 20 use the `ws` package's
// WebSocket, or start node with --experimental-websocket and pass globalThis.WebSocket).
// In Node there is no sessionStorage: pass `storage` (anything with getItem, setItem
// and removeItem) to keep the endpoint across restarts, or leave it out.
//
// What it does, as the protocol asks:
// - POST /sessions (or /takeover) with the customer token; the body is sent as a
//   string, as browsers do, which the server reads as JSON;
// - opens the endpoint verbatim, sends REQUESTED, plays only after OK;
// - answers every PING with PONG;
// - on TAKE_OVER, TERMINATE or EXPIRED stops for good (EXPIRED and TAKE_OVER drop the
//   cached endpoint: the session is gone);
// - when the socket drops without one of those (a network failure, a server restart:
//   1012), reconnects to the cached endpoint, without a new POST /sessions;
// - stop() sends FINISHED.

/** The states a player goes through. */
export const States = Object.freeze({
  IDLE: 'idle',
  REQUESTING: 'requesting', // POST /sessions or /takeover in flight
  CONNECTING: 'connecting', // socket opening, REQUESTED sent, waiting for OK
  PLAYING: 'playing', // OK received
  RECONNECTING: 'reconnecting', // socket lost: trying the cached endpoint again
  REFUSED: 'refused', // 409 LimitExceeded
  DISABLED: 'disabled', // session control is off for this publisher: play without it
  TAKEN_OVER: 'taken-over', // TAKE_OVER received
  TERMINATED: 'terminated', // TERMINATE received: a newer socket holds the session
  EXPIRED: 'expired', // EXPIRED received: the session is gone
  FINISHED: 'finished', // stop() sent FINISHED
  FAILED: 'failed', // an error, or reconnection gave up
});

/** An answer of the server that is neither a grant nor a documented refusal. */
export class DriscError extends Error {
  constructor(status, code, message) {
    super(message || `HTTP ${status}`);
    this.name = 'DriscError';
    this.status = status;
    this.code = code;
  }
}

/** The orders after which a socket is closed for good (PROTOCOL 1.4). */
const FINAL = { TAKE_OVER: States.TAKEN_OVER, TERMINATE: States.TERMINATED, EXPIRED: States.EXPIRED };

/** The WebSocket's OPEN readyState, the same in browsers, Node and `ws`. */
const OPEN = 1;

export class DriscPlayer {
  /**
   * @param {object} options
   * @param {string} [options.baseUrl] the server, e.g. 'https://drisc.example.com' ('' in a page it serves)
   * @param {string|(() => string|Promise<string>)} options.customerToken the customer JWT, or a function giving it
   * @param {Function} [options.WebSocket] a WebSocket constructor (default: the global one)
   * @param {Function} [options.fetch] a fetch function (default: the global one)
   * @param {{getItem: Function, setItem: Function, removeItem: Function}|null} [options.storage] where the endpoint is cached (default: sessionStorage when there is one)
   * @param {string} [options.storageKey] the cache's key (default 'drisc.endpoint')
   * @param {number} [options.reconnectAttempts] tries of the cached endpoint after a drop (default 5)
   * @param {number} [options.reconnectDelayMs] the first wait before one; doubles each time (default 500)
   * @param {(event: object) => void} [options.onEvent] told of every step: {type, ...}
   */
  constructor(options = {}) {
    this.baseUrl = (options.baseUrl || '').replace(/\/+$/, '');
    this.customerToken = options.customerToken;
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    this.fetch = options.fetch || globalThis.fetch?.bind(globalThis);
    this.storage = options.storage !== undefined ? options.storage : (globalThis.sessionStorage ?? null);
    this.storageKey = options.storageKey || 'drisc.endpoint';
    this.reconnectAttempts = options.reconnectAttempts ?? 5;
    this.reconnectDelayMs = options.reconnectDelayMs ?? 500;
    this.onEvent = options.onEvent || (() => {});
    if (typeof this.WebSocket !== 'function') {
      throw new TypeError('no WebSocket: pass one as options.WebSocket (Node 20 has none built in)');
    }
    if (typeof this.fetch !== 'function') {
      throw new TypeError('no fetch: pass one as options.fetch');
    }
    this.state = States.IDLE;
    this.sessionId = null;
    this.pings = 0;
    this.pongs = 0;
    this.socket = null;
    this.attempt = 0;
    this.timer = null;
  }

  /** The endpoint cached by the last grant, if any. */
  get cachedEndpoint() {
    try {
      return this.storage?.getItem(this.storageKey) || null;
    } catch {
      return null;
    }
  }

  /**
   * Asks for a session and, once granted, connects. Resolves with
   * {status: 'playing'|'expired'|..., sessionId} once the socket has its answer,
   * {status: 'limit', takeOverEnabled, activeSessions} on 409, or {status: 'disabled'}.
   * Rejects with a DriscError on any other answer.
   */
  start({ offerId, tag, sessionName } = {}) {
    return this.#ask('/sessions', { offerId, tag, sessionName });
  }

  /** Replaces the customer's session `sessionId` by a new one (POST /takeover). */
  takeOver(sessionId, { offerId, tag, sessionName } = {}) {
    return this.#ask('/takeover', { offerId, tag, sessionName, sessionId });
  }

  /**
   * Connects to the cached endpoint without asking for a session (after a page
   * reload). Resolves like start(); with {status: 'none'} when nothing is cached.
   */
  resume() {
    const endpoint = this.cachedEndpoint;
    if (!endpoint) return Promise.resolve({ status: 'none' });
    return this.#connect(endpoint);
  }

  /**
   * Sends FINISHED: the session ends and its slot is free at once. Resolves once the
   * socket closed. Without an open socket (still connecting, or reconnecting), the
   * session is given back with `DELETE /sessions/{sessionId}` (a drisc extension)
   * instead, so stopping never leaves the slot held until a timeout.
   */
  async stop() {
    clearTimeout(this.timer);
    this.#forget();
    const socket = this.socket;
    this.#setState(States.FINISHED);
    if (!socket || socket.readyState !== OPEN) {
      this.#drop();
      if (this.sessionId) await this.#giveBack(this.sessionId);
      return;
    }
    const closed = new Promise((resolve) => {
      socket.addEventListener('close', () => resolve(), { once: true });
      setTimeout(resolve, 3000);
    });
    this.#send(socket, { action: 'FINISHED' });
    await closed;
  }

  async #giveBack(sessionId) {
    try {
      const token = typeof this.customerToken === 'function' ? await this.customerToken() : this.customerToken;
      const response = await this.fetch(`${this.baseUrl}/sessions/${encodeURIComponent(sessionId)}`, {
        method: 'DELETE',
        headers: { Authorization: `Bearer ${token}` },
      });
      this.#emit({ type: 'response', path: `/sessions/${sessionId}`, status: response.status, body: {} });
    } catch (error) {
      this.#emit({ type: 'error', message: String(error) });
    }
  }

  async #ask(path, fields) {
    clearTimeout(this.timer);
    this.#setState(States.REQUESTING);
    const body = {};
    for (const [key, value] of Object.entries(fields)) {
      if (value !== undefined && value !== null && value !== '') body[key] = value;
    }
    const token = typeof this.customerToken === 'function' ? await this.customerToken() : this.customerToken;
    this.#emit({ type: 'request', path, body });
    let response;
    let answer;
    try {
      // A string body, as browsers send it (text/plain): no CORS preflight for the body.
      response = await this.fetch(`${this.baseUrl}${path}`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${token}` },
        body: JSON.stringify(body),
      });
      answer = await response.json().catch(() => ({}));
    } catch (error) {
      this.#setState(States.FAILED);
      throw error;
    }
    this.#emit({ type: 'response', path, status: response.status, body: answer });
    if (response.status === 200 && answer.endpoint) {
      this.sessionId = answer.sessionId ?? null;
      if (this.state === States.FINISHED) {
        // stop() was called while the request was in flight: give the slot back.
        if (this.sessionId) await this.#giveBack(this.sessionId);
        return { status: States.FINISHED, sessionId: this.sessionId };
      }
      this.#remember(answer.endpoint);
      return this.#connect(answer.endpoint);
    }
    if (response.status === 200 && (answer.status === 'disabled' || answer.enabled === false)) {
      this.#setState(States.DISABLED);
      return { status: 'disabled' };
    }
    if (answer.code === 'LimitExceeded') {
      this.#setState(States.REFUSED);
      const details = answer.details || {};
      return {
        status: 'limit',
        takeOverEnabled: Boolean(details.takeOverEnabled),
        activeSessions: Array.isArray(details.activeSessions) ? details.activeSessions : [],
      };
    }
    this.#setState(States.FAILED);
    throw new DriscError(response.status, answer.code, answer.message);
  }

  /** Opens `endpoint`; resolves with the first answer to REQUESTED (or the close before one). */
  #connect(endpoint) {
    this.#drop();
    this.#setState(this.attempt > 0 ? States.RECONNECTING : States.CONNECTING);
    return new Promise((resolve) => {
      let settled = false;
      const settle = (status) => {
        if (!settled) {
          settled = true;
          resolve({ status, sessionId: this.sessionId });
        }
      };
      if (this.state === States.FINISHED) {
        // stop() was called from a listener of the state just set: never open.
        settle(States.FINISHED);
        return;
      }
      let socket;
      try {
        socket = new this.WebSocket(endpoint);
      } catch (error) {
        this.#emit({ type: 'error', message: String(error) });
        this.#setState(States.FAILED);
        settle(States.FAILED);
        return;
      }
      this.socket = socket;
      socket.onopen = () => {
        if (this.socket !== socket) return; // stopped or replaced while opening
        this.#emit({ type: 'open' });
        this.#send(socket, { action: 'REQUESTED' });
      };
      socket.onmessage = (event) => {
        const message = parse(event.data);
        if (!message) return;
        this.#emit({ type: 'received', action: message.action, message });
        switch (message.action) {
          case 'OK':
            this.attempt = 0;
            this.#setState(States.PLAYING);
            settle(States.PLAYING);
            break;
          case 'PING':
            this.pings += 1;
            this.#send(socket, { action: 'PONG' });
            this.pongs += 1;
            break;
          case 'TAKE_OVER':
          case 'TERMINATE':
          case 'EXPIRED':
            // The session is gone (taken over, expired) or held by a newer socket:
            // never reconnect after these.
            if (message.action !== 'TERMINATE') this.#forget();
            this.#setState(FINAL[message.action], { sessionName: message.sessionName });
            settle(FINAL[message.action]);
            break;
          default:
            // The server sends only the five actions above; anything else is ignored.
            break;
        }
      };
      socket.onerror = () => this.#emit({ type: 'error', message: 'the socket failed' });
      socket.onclose = (event) => {
        this.#emit({ type: 'closed', code: event.code, reason: event.reason });
        if (this.socket === socket) this.socket = null;
        const ended = [States.TAKEN_OVER, States.TERMINATED, States.EXPIRED, States.FINISHED, States.FAILED];
        if (ended.includes(this.state) || this.socket) {
          settle(this.state);
          return;
        }
        // Dropped without an order (network, server restart): the session may still
        // be held; try the cached endpoint again, with a growing wait.
        const cached = this.cachedEndpoint || endpoint;
        if (this.attempt >= this.reconnectAttempts) {
          this.attempt = 0;
          this.#setState(States.FAILED);
          settle(States.FAILED);
          return;
        }
        const wait = this.reconnectDelayMs * 2 ** this.attempt;
        this.attempt += 1;
        this.#setState(States.RECONNECTING, { attempt: this.attempt, waitMs: wait });
        this.timer = setTimeout(() => this.#connect(cached).then((r) => settle(r.status)), wait);
      };
    });
  }

  #send(socket, message) {
    if (socket.readyState !== OPEN) return;
    socket.send(JSON.stringify(message));
    this.#emit({ type: 'sent', action: message.action, message });
  }

  /** Closes the current socket, if any, without telling the server anything. */
  #drop() {
    const socket = this.socket;
    this.socket = null;
    if (socket && socket.readyState <= OPEN) socket.close();
  }

  #remember(endpoint) {
    try {
      this.storage?.setItem(this.storageKey, endpoint);
    } catch {
      // A full or forbidden storage only costs the reconnection after a reload.
    }
  }

  #forget() {
    try {
      this.storage?.removeItem(this.storageKey);
    } catch {
      // As above.
    }
  }

  #setState(state, extra = {}) {
    this.state = state;
    this.#emit({ type: 'state', state, ...extra });
  }

  #emit(event) {
    try {
      this.onEvent(event);
    } catch {
      // A listener's mistake must not break the protocol.
    }
  }
}

/** One server message, or null for anything that is not a JSON object with an action. */
function parse(data) {
  try {
    const text = typeof data === 'string' ? data : new TextDecoder().decode(data);
    const message = JSON.parse(text);
    return message && typeof message.action === 'string' ? message : null;
  } catch {
    return null;
  }
}

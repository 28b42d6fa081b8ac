// Talking to the server: the JSON API (with a session token kept in
// localStorage) and the live websocket stream (resume, gap detection, resync,
// reconnect with backoff, keepalive pings).

const TOKEN_KEY = "openplace.token";
const USER_KEY = "openplace.user";

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
    this.code = this.body.error || "http_" + status;
  }
}

export class Api {
  constructor(base = "") {
    this.base = base;
    this.token = localStorage.getItem(TOKEN_KEY);
    this.userId = localStorage.getItem(USER_KEY);
    this.clockOffset = 0; // server clock minus ours, in ms (from the Date header)
    this._session = null;
  }

  async request(method, path, { body, auth = false, raw = false } = {}) {
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (auth) headers["Authorization"] = `Bearer ${this.token}`;
    const res = await fetch(this.base + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-cache",
    });
    this._noteClock(res);
    if (raw && res.ok) return res;
    let data = null;
    try {
      data = await res.json();
    } catch {
      data = null;
    }
    if (!res.ok) throw new ApiError(res.status, data);
    return data;
  }

  _noteClock(res) {
    const date = res.headers.get("date");
    if (!date) return;
    const server = Date.parse(date);
    if (Number.isNaN(server)) return;
    // The header has one-second resolution: only correct clearly wrong clocks.
    const offset = server + 500 - Date.now();
    this.clockOffset = Math.abs(offset) > 1500 ? offset : 0;
  }

  /** Milliseconds until the server time `iso`, by our clock corrected for skew. */
  msUntil(iso) {
    if (!iso) return 0;
    return Date.parse(iso) - (Date.now() + this.clockOffset);
  }

  async session(force = false) {
    if (this.token && !force) return this.token;
    if (!this._session) {
      this._session = this.request("POST", "/api/session")
        .then((data) => {
          this.token = data.token;
          this.userId = data.user_id;
          try {
            localStorage.setItem(TOKEN_KEY, data.token);
            localStorage.setItem(USER_KEY, data.user_id);
          } catch {
            /* private mode: keep it in memory */
          }
          return data.token;
        })
        .finally(() => {
          this._session = null;
        });
    }
    return this._session;
  }

  /** An authenticated request; a 401 gets a fresh session and one retry. */
  async authed(method, path, body) {
    await this.session();
    try {
      return await this.request(method, path, { body, auth: true });
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 401) throw err;
      await this.session(true);
      return this.request(method, path, { body, auth: true });
    }
  }

  canvas() {
    return this.request("GET", "/api/canvas");
  }

  /**
   * `{data: ArrayBuffer, seq, boardId}` of the packed board (boardId may be null).
   * `fresh` asks past every cache (nginx bypasses its micro-cache for `?fresh=`).
   */
  async board({ fresh = false } = {}) {
    const path = fresh ? `/api/board?fresh=${Date.now()}` : "/api/board";
    const res = await this.request("GET", path, { raw: true });
    const seq = parseInt(res.headers.get("x-seq") || "", 10);
    if (!Number.isFinite(seq)) throw new Error("board without X-Seq");
    return { data: await res.arrayBuffer(), seq, boardId: res.headers.get("x-board-id") };
  }

  me() {
    return this.authed("GET", "/api/me");
  }

  place(x, y, color) {
    return this.authed("POST", "/api/pixel", { x, y, color });
  }

  pixel(x, y) {
    return this.request("GET", `/api/pixel?x=${x}&y=${y}`);
  }

  /** `{x, y, placements: [{seq, color, user_id, placed_at}]}`, newest first. */
  pixelHistory(x, y, limit = 20) {
    return this.request("GET", `/api/pixel/history?x=${x}&y=${y}&limit=${limit}`);
  }

  /** `{frozen, protected: [{id, x, y, w, h}]}`: whether and where placing is closed. */
  policy() {
    return this.request("GET", "/api/policy");
  }
}

const PING_EVERY = 25_000;
const PONG_TIMEOUT = 10_000;
const BACKOFF_MIN = 500;
const BACKOFF_MAX = 10_000;
const CLOSE_TOO_SLOW = 4008;

/**
 * The live stream of placements.
 *
 * `loadBoard(expect)` must fetch the board, apply it and resolve to `{seq, boardId}`;
 * it is called at start and whenever the server asks for a resync; then `expect` is
 * `{boardId, seq}` from the resync, and a board older than that must not be applied
 * (a cache may still hold one from before a restore). `url(since,
 * boardId)` gives the websocket address. `apply(index,
 * color)` is called for every placement after that seq, exactly once and in
 * order. `onStatus(state, detail)` reports "connecting", "syncing", "live" and
 * "reconnecting" (detail: {retryAt}); `onOnline(n)` the number of people online;
 * `onPolicy({frozen, protected})` the moderators' policy whenever it changes (and on
 * connect when the canvas is frozen or has protected areas).
 */
export class LiveStream {
  constructor({ url, loadBoard, apply, onStatus, onOnline, onSeq, onPolicy }) {
    this.url = url;
    this.loadBoard = loadBoard;
    this.apply = apply;
    this.onStatus = onStatus || (() => {});
    this.onOnline = onOnline || (() => {});
    this.onSeq = onSeq || (() => {});
    this.onPolicy = onPolicy || (() => {});
    this.lastSeq = -1;
    this.boardId = null;
    this.needBoard = true;
    this.expect = null; // {boardId, seq} a resync told us to load at least
    this.lastResync = 0;
    this.connected = false;
    this.ws = null;
    this.attempt = 0;
    this.retryTimer = null;
    this.pingTimer = null;
    this.pongTimer = null;
    this.pingId = 0;
    this.state = "";
    this.opening = false;
    const wake = () => {
      if (this.retryTimer !== null && document.visibilityState !== "hidden") this.open();
    };
    window.addEventListener("online", wake);
    document.addEventListener("visibilitychange", wake);
  }

  start() {
    this.open();
  }

  status(state, detail = {}) {
    this.state = state;
    this.onStatus(state, detail);
  }

  /** (Re)connect now: fetch the board first if we need one. */
  async open() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.opening) return;
    this.opening = true;
    try {
      if (this.needBoard) {
        this.status(this.lastSeq < 0 ? "connecting" : "syncing");
        let loaded;
        try {
          loaded = await this.loadBoard(this.expect);
        } catch (err) {
          console.warn("openplace: board fetch failed", err);
          this.retry();
          return;
        }
        this.lastSeq = loaded.seq;
        this.boardId = loaded.boardId || null;
        this.needBoard = false;
        this.expect = null;
        this.onSeq(loaded.seq);
      }
      this.connect();
    } finally {
      this.opening = false;
    }
  }

  connect() {
    this.stop();
    if (this.state !== "reconnecting") this.status("connecting");
    let ws;
    try {
      ws = new WebSocket(this.url(this.lastSeq, this.boardId));
    } catch (err) {
      console.warn("openplace: websocket failed", err);
      this.retry();
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      this.alive();
      if (typeof ev.data === "string") this.control(ev.data);
      else this.batch(ev.data);
    };
    ws.onclose = (ev) => {
      if (ws !== this.ws) return;
      this.ws = null;
      this.disconnected();
      // 4008: we fell behind and the server dropped our queue: resume at once.
      if (ev.code === CLOSE_TOO_SLOW) this.retry(Math.random() * 100);
      else this.retry();
    };
    ws.onerror = () => {}; // a close event follows
  }

  /** Close the current socket without reporting it (we are replacing it). */
  stop() {
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000);
      } catch {
        /* already closing */
      }
    }
    this.disconnected();
  }

  disconnected() {
    this.connected = false;
    clearInterval(this.pingTimer);
    clearTimeout(this.pongTimer);
    this.pingTimer = this.pongTimer = null;
  }

  /** Reconnect after `delay` ms, by default the next backoff step (with jitter). */
  retry(delay) {
    this.stop();
    clearTimeout(this.retryTimer);
    if (delay === undefined) {
      const base = Math.min(BACKOFF_MAX, BACKOFF_MIN * 2 ** this.attempt);
      delay = Math.round(base / 2 + (Math.random() * base) / 2);
      this.attempt++;
    }
    this.status("reconnecting", { retryAt: Date.now() + delay });
    this.retryTimer = setTimeout(() => this.open(), delay);
  }

  /** Any message proves the connection is alive. */
  alive() {
    clearTimeout(this.pongTimer);
    this.pongTimer = null;
  }

  ping() {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    ws.send(JSON.stringify({ type: "ping", id: ++this.pingId }));
    if (this.pongTimer === null) {
      this.pongTimer = setTimeout(() => {
        console.warn("openplace: no answer to ping; reconnecting");
        this.retry();
      }, PONG_TIMEOUT);
    }
  }

  control(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    switch (msg.type) {
      case "hello":
        this.connected = true;
        clearInterval(this.pingTimer);
        this.pingTimer = setInterval(() => this.ping(), PING_EVERY);
        this.status("live");
        break;
      case "online":
        this.attempt = 0; // sent once the server has attached us: this connection works
        this.onOnline(msg.count);
        break;
      case "resync": {
        // Our seq means nothing to the server any more: reload the board and resume from it.
        // At once the first time; with backoff if it keeps happening.
        this.needBoard = true;
        this.expect = { boardId: msg.board || null, seq: msg.head ?? 0 };
        const now = Date.now();
        const again = now - this.lastResync < 5000;
        this.lastResync = now;
        if (again) this.retry();
        else {
          this.stop();
          this.open();
        }
        break;
      }
      case "policy":
        this.onPolicy({ frozen: msg.frozen === true, protected: msg.protected || [] });
        break;
      case "pong":
        break;
      case "error":
        console.warn("openplace: server says", msg);
        break;
      default:
        break;
    }
  }

  batch(buf) {
    const n = buf.byteLength;
    if (n < 9 || (n - 9) % 5 !== 0) return;
    const dv = new DataView(buf);
    if (dv.getUint8(0) !== 0x01) return;
    const first = dv.getUint32(1) * 2 ** 32 + dv.getUint32(5);
    const count = (n - 9) / 5;
    const last = first + count - 1;
    if (first > this.lastSeq + 1) {
      // We missed something: resume from what we have.
      console.warn(`openplace: gap (have ${this.lastSeq}, got ${first}); resuming`);
      this.stop();
      this.open();
      return;
    }
    if (last <= this.lastSeq) return; // all old
    const apply = this.apply;
    for (let k = this.lastSeq + 1 - first, off = 9 + 5 * k; k < count; k++, off += 5) {
      apply(dv.getUint32(off), dv.getUint8(off + 4));
    }
    this.lastSeq = last;
    this.attempt = 0;
    this.onSeq(last);
  }
}

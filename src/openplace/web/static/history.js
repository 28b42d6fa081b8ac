// History mode: the board at any past moment (seq), scrubbed with a slider or played.
//
// The placements come from GET /api/history in pages of `pageSize` records, aligned on
// multiples of it (page k holds seqs k*P+1 .. (k+1)*P), fetched lazily and kept (a
// bounded number). Boards at some seqs are kept as checkpoints (one byte a pixel):
// seq 0 (the empty board), every page end that playback or scrubbing crosses, and the
// bases fetched from GET /api/board?seq= when jumping far. Showing seq t then costs
// the cheapest of: applying the records after the shown seq (forward), undoing the
// records back to t (each applied record remembers the colour it replaced), or
// restoring the nearest checkpoint at or before t and applying at most about one page
// of records. Only one batch of requests is in flight at a time and it always serves
// the latest wanted seq, so a fast drag across the slider costs a few requests, not
// one per step.

import { Board } from "./board.js";

const PAGE = 50_000; // records per page; lowered to the server's limit if it has a lower one
const MAX_PAGES = 40; // ~26 MB of records at most
const MAX_CHECKPOINTS = 24; // one byte a pixel each: 24 MB on a 1000 x 1000 board
const UNDO_MAX = 50_000; // further back than this, restore a checkpoint instead
const UNKNOWN = 255; // `prev` of a record not applied yet
export const SPEEDS = [10, 100, 1_000, 10_000, 100_000]; // placements a second

class HttpError extends Error {
  constructor(status, url) {
    super(`HTTP ${status} for ${url}`);
    this.status = status;
  }
}

async function get(url) {
  const res = await fetch(url); // default caching: past moments are immutable
  if (!res.ok) throw new HttpError(res.status, url);
  return res;
}

/** One page of the log: seqs start+1 .. start+size, of which `count` are loaded. */
class Page {
  constructor(start, size) {
    this.start = start;
    this.size = size;
    this.count = 0;
    this.index = new Uint32Array(size);
    this.color = new Uint8Array(size);
    this.time = new Float64Array(size);
    this.prev = new Uint8Array(size).fill(UNKNOWN);
    this.loading = null;
  }

  get end() {
    return this.start + this.count; // the last loaded seq
  }
}

/** The log and checkpoints, and a Board showing one seq of it. */
export class Timeline {
  constructor(width, height, palette) {
    this.n = width * height;
    this.board = new Board(width, height, palette); // what history mode shows
    this.seq = 0; // the seq `board` shows
    this.pageSize = PAGE;
    this.pages = new Map(); // page number -> Page
    this.checkpoints = new Map([[0, new Uint8Array(this.n)]]); // seq -> colours
    this.committed = Infinity; // the newest seq the history answered with, when short
  }

  pageOf(seq) {
    return Math.floor((seq - 1) / this.pageSize);
  }

  /** The loaded page holding `seq`, or null. */
  loadedPage(seq) {
    const p = this.pages.get(this.pageOf(seq));
    return p && p.end >= seq ? p : null;
  }

  /** Are the records a+1 .. b all loaded? */
  has(a, b) {
    for (let s = a + 1; s <= b; ) {
      const p = this.loadedPage(s);
      if (!p) return false;
      s = p.start + p.size + 1;
    }
    return true;
  }

  /** The time (unix seconds) of placement `seq`, or null if not loaded. */
  timeOf(seq) {
    const p = seq > 0 ? this.loadedPage(seq) : null;
    return p ? p.time[seq - 1 - p.start] : null;
  }

  /** The newest checkpoint at or before `seq`. */
  checkpointBefore(seq) {
    let best = 0;
    for (const s of this.checkpoints.keys()) if (s <= seq && s > best) best = s;
    return best;
  }

  // -- showing a seq ------------------------------------------------------------------

  /** Show `t` if everything it needs is here; false if something must be fetched. */
  render(t) {
    const cur = this.seq;
    if (t === cur) return true;
    const c = this.checkpointBefore(t);
    // Restoring repaints the whole board: count that as a quarter record a pixel.
    const restore = this.has(c, t) ? this.n / 4 + (t - c) : Infinity;
    const forward = t > cur && this.has(cur, t) ? t - cur : Infinity;
    const back = t < cur && cur - t <= UNDO_MAX && this.canUndo(t, cur) ? cur - t : Infinity;
    const best = Math.min(restore, forward, back);
    if (best === Infinity) return false;
    if (best === forward) this.forward(t);
    else if (best === back) this.undo(t);
    else {
      this.board.loadColors(this.checkpoints.get(c));
      this.seq = c;
      this.forward(t);
    }
    return true;
  }

  forward(t) {
    const board = this.board;
    const colors = board.colors;
    for (let s = this.seq + 1; s <= t; ) {
      const p = this.loadedPage(s);
      const j0 = s - 1 - p.start;
      const j1 = Math.min(t, p.start + p.size) - p.start; // exclusive
      const { index, color, prev } = p;
      for (let j = j0; j < j1; j++) {
        const i = index[j];
        prev[j] = colors[i];
        board.set(i, color[j]);
      }
      s = p.start + j1 + 1;
      if (j1 === p.size) this.keep(p.start + p.size, t);
    }
    this.seq = t;
  }

  canUndo(t, cur) {
    for (let s = cur; s > t; s--) {
      const p = this.loadedPage(s);
      if (!p || p.prev[s - 1 - p.start] === UNKNOWN) return false;
    }
    return true;
  }

  undo(t) {
    const board = this.board;
    for (let s = this.seq; s > t; s--) {
      const p = this.loadedPage(s);
      const j = s - 1 - p.start;
      board.set(p.index[j], p.prev[j]);
    }
    this.seq = t;
  }

  /** Keep the shown board as a checkpoint at `seq` (a page end), evicting one far from `near`. */
  keep(seq, near, colors = this.board.colors) {
    if (this.checkpoints.has(seq)) return;
    this.checkpoints.set(seq, new Uint8Array(colors));
    if (this.checkpoints.size <= MAX_CHECKPOINTS) return;
    let worst = -1;
    for (const s of this.checkpoints.keys()) {
      if (s !== 0 && s !== seq && (worst < 0 || Math.abs(s - near) > Math.abs(worst - near))) worst = s;
    }
    this.checkpoints.delete(worst);
  }

  // -- fetching -----------------------------------------------------------------------

  /** Fetch what showing `t` needs: at most one base board and two pages, in parallel. */
  async load(t) {
    if (t === 0) return;
    const k = this.pageOf(t);
    const pageStart = k * this.pageSize;
    let from = this.checkpointBefore(t);
    if (this.seq <= t && this.seq > from) from = this.seq;
    const first = from >= t ? k : this.pageOf(from + 1);
    const missing = [];
    for (let q = first; q <= k; q++) {
      const p = this.pages.get(q);
      if (!p || p.end < Math.min(t, (q + 1) * this.pageSize)) missing.push(q);
    }
    const jobs = [];
    if (missing.length > 2 || (missing.length === 2 && missing[0] !== first)) {
      // Far from anything we hold: the board at the start of t's page, and that page.
      if (!this.checkpoints.has(pageStart)) jobs.push(this.fetchBase(pageStart, t));
      jobs.push(this.fetchPage(k, t));
    } else {
      for (const q of missing) jobs.push(this.fetchPage(q, t));
    }
    await Promise.all(jobs);
  }

  async fetchBase(seq, near) {
    const res = await get(`/api/board?seq=${seq}`);
    const bytes = new Uint8Array(await res.arrayBuffer());
    if (bytes.length * 2 !== this.n) throw new Error(`board is ${bytes.length} bytes`);
    const colors = new Uint8Array(this.n);
    for (let j = 0; j < bytes.length; j++) {
      colors[2 * j] = bytes[j] >> 4;
      colors[2 * j + 1] = bytes[j] & 15;
    }
    this.keep(seq, near, colors);
  }

  /** Load page `k` (up to its end, or to the newest committed seq), one request at a time. */
  fetchPage(k, near) {
    let p = this.pages.get(k);
    if (!p) {
      p = new Page(k * this.pageSize, this.pageSize);
      this.pages.set(k, p);
      this.evictPages(this.pageOf(Math.max(1, near)));
    }
    if (!p.loading) {
      p.loading = this.fill(p).finally(() => {
        p.loading = null;
      });
    }
    return p.loading;
  }

  async fill(p) {
    while (p.count < p.size) {
      const from = p.end + 1;
      const to = p.start + p.size;
      let res;
      try {
        res = await get(`/api/history?from=${from}&to=${to}`);
      } catch (err) {
        if (!(err instanceof HttpError) || err.status !== 404) throw err;
        this.committed = p.end; // nothing committed after what we hold yet
        return;
      }
      const got = this.take(p, await res.arrayBuffer(), from);
      const next = res.headers.get("x-next");
      if (next !== null && got > 0 && got < p.size && p.count === got) {
        // The server answers fewer records at a time than our pages: use its size.
        this.resize(got);
        return;
      }
      if (next === null) {
        if (p.count < p.size) this.committed = parseInt(res.headers.get("x-seq") || "0", 10) || p.end;
        return;
      }
      if (got === 0) return;
    }
  }

  /** Copy a /api/history body into `p`; the number of records. */
  take(p, buf, from) {
    const dv = new DataView(buf);
    if (buf.byteLength < 13 || dv.getUint8(0) !== 0x02) throw new Error("not a history body");
    const first = dv.getUint32(1) * 2 ** 32 + dv.getUint32(5);
    const k = dv.getUint32(9);
    if (buf.byteLength !== 13 + 13 * k) throw new Error("history body of the wrong length");
    if (k === 0) return 0;
    if (first !== from) throw new Error(`history from ${first}, asked ${from}`);
    const times = 13 + 5 * k;
    const count = Math.min(k, p.size - p.count);
    for (let r = 0, j = p.count; r < count; r++, j++) {
      p.index[j] = dv.getUint32(13 + 5 * r);
      p.color[j] = dv.getUint8(17 + 5 * r);
      p.time[j] = dv.getFloat64(times + 8 * r);
    }
    p.count += count;
    return count;
  }

  /** Pages of `size` records from now on (the records we hold are dropped; checkpoints stay). */
  resize(size) {
    this.pageSize = size;
    this.pages.clear();
  }

  evictPages(keepNear) {
    while (this.pages.size > MAX_PAGES) {
      let worst = null;
      for (const [q, p] of this.pages) {
        if (p.loading) continue;
        if (worst === null || Math.abs(q - keepNear) > Math.abs(worst - keepNear)) worst = q;
      }
      if (worst === null) return;
      this.pages.delete(worst);
    }
  }

  /** Fetch the page with `t`'s time (again if the page size changed meanwhile). */
  async loadTime(t) {
    for (let i = 0; i < 3 && this.timeOf(t) === null; i++) {
      const size = this.pageSize;
      await this.fetchPage(this.pageOf(t), t);
      if (this.pageSize === size) return;
    }
  }

  /** Start fetching the page after `t`'s when t is past the middle of its page. */
  prefetch(t, head) {
    if (t <= 0) return;
    const k = this.pageOf(t);
    const next = (k + 1) * this.pageSize;
    if (next >= head || t - k * this.pageSize < this.pageSize / 2) return;
    const p = this.pages.get(k + 1);
    if (p && (p.loading || p.count === p.size || p.end >= head)) return;
    this.fetchPage(k + 1, t).catch(() => {});
  }
}

/**
 * The history mode controller: the bar (slider, play, speed, heatmap, PNG, live),
 * the shown seq and its time. `view` draws `timeline.board` while active.
 *
 * hooks: getHead() the live head; onChange() after the shown seq or the mode changed;
 * onEnter(), onExit().
 */
export class HistoryMode {
  constructor({ width, height, palette, view, liveBoard, hooks }) {
    this.width = width;
    this.height = height;
    this.palette = palette;
    this.view = view;
    this.liveBoard = liveBoard;
    this.hooks = hooks;
    this.timeline = null; // created on first use
    this.active = false;
    this.target = 0; // the seq wanted
    this.pumping = false;
    this.loading = false;
    this.failed = false;
    this.playing = false;
    this.playPos = 0;
    this.playLast = 0;
    this.heatOn = false;
    this.heatShown = -1;
    this.heatLoading = false;
    this.heatTimer = null;
    this.heatAt = 0;
    this.retryTimer = null;
    this.el = (id) => document.getElementById(id);
    this.bind();
  }

  get seq() {
    return this.timeline ? this.timeline.seq : 0;
  }

  head() {
    return Math.max(0, this.hooks.getHead());
  }

  bind() {
    const slider = this.el("history-slider");
    slider.addEventListener("input", () => {
      this.pause();
      this.go(Number(slider.value));
    });
    this.el("history-play").addEventListener("click", () => (this.playing ? this.pause() : this.play()));
    this.el("history-heat").addEventListener("click", () => this.setHeat(!this.heatOn));
    this.el("history-live").addEventListener("click", () => this.exit());
    this.el("history-speed").addEventListener("change", () => {
      if (this.playing) this.playPos = this.seq; // keep going from here at the new pace
    });
    const speed = this.el("history-speed");
    for (const s of SPEEDS) {
      const o = document.createElement("option");
      o.value = String(s);
      o.textContent = s >= 1000 ? `${s / 1000}k/s` : `${s}/s`;
      speed.append(o);
    }
  }

  /** Enter history mode showing `seq` (clamped to the history); or jump there if in it. */
  enter(seq) {
    const head = this.head();
    seq = Math.max(0, Math.min(head, Math.floor(seq)));
    if (!this.timeline) this.timeline = new Timeline(this.width, this.height, this.palette);
    if (!this.active) {
      this.active = true;
      const tl = this.timeline;
      // Start from the live board when it is the moment asked for: nothing to fetch.
      if (seq === head && this.liveBoard) {
        tl.board.loadColors(this.liveBoard.colors);
        tl.seq = head;
      }
      this.view.setBoard(tl.board);
      document.body.classList.add("history");
      this.el("history").hidden = false;
      this.el("history-open").setAttribute("aria-pressed", "true");
      const speed = this.el("history-speed");
      if (!speed.dataset.chosen) {
        // About 20 s for the whole history.
        const want = Math.max(1, head / 20);
        let best = SPEEDS[0];
        for (const s of SPEEDS) if (Math.abs(Math.log(s / want)) < Math.abs(Math.log(best / want))) best = s;
        speed.value = String(best);
        speed.dataset.chosen = "1";
      }
      this.hooks.onEnter();
    }
    this.headChanged();
    this.go(seq);
  }

  exit() {
    if (!this.active) return;
    this.pause();
    this.setHeat(false);
    this.active = false;
    clearTimeout(this.retryTimer);
    document.body.classList.remove("history");
    this.el("history").hidden = true;
    this.el("history-open").setAttribute("aria-pressed", "false");
    this.liveBoard.invalidate();
    this.view.setBoard(this.liveBoard);
    this.hooks.onExit();
  }

  /** The board was replaced (a resync): what we hold of its past means nothing now. */
  forget() {
    this.exit();
    this.timeline = null;
  }

  /** The live head moved: the slider reaches it. */
  headChanged() {
    if (!this.active) return;
    const slider = this.el("history-slider");
    const head = String(this.head());
    if (slider.max !== head) slider.max = head;
    this.el("history-head").textContent = `of ${this.head().toLocaleString("en-US")}`;
  }

  /** Show `seq` as soon as possible. */
  go(seq) {
    this.target = Math.max(0, Math.min(this.head(), Math.floor(seq)));
    this.el("history-slider").value = String(this.target);
    this.pump();
  }

  step(delta) {
    this.pause();
    this.go(this.target + delta);
  }

  async pump() {
    if (this.pumping) return;
    this.pumping = true;
    let delay = 500;
    try {
      while (this.active) {
        const tl = this.timeline;
        const t = Math.min(this.target, tl.committed === Infinity ? this.target : Math.max(tl.committed, 0));
        if (tl.render(t)) {
          this.setLoading(false);
          this.failed = false;
          this.shown();
          if (t > 0 && tl.timeOf(t) === null) {
            // Shown from the live board or a checkpoint: its time comes with its page.
            tl.loadTime(t)
              .then(() => this.seq === t && this.shown())
              .catch(() => {});
          }
          tl.prefetch(t, this.head());
          if (t < this.target) {
            // The history does not have the newest placements yet (not committed): retry.
            tl.committed = Infinity;
            clearTimeout(this.retryTimer);
            this.retryTimer = setTimeout(() => this.pump(), 1000);
          }
          return;
        }
        this.setLoading(true);
        try {
          await tl.load(t);
        } catch (err) {
          console.warn("openplace: history", err);
          this.failed = true;
          this.setLoading(true);
          await new Promise((r) => setTimeout(r, delay));
          delay = Math.min(8000, delay * 2);
        }
      }
    } finally {
      this.pumping = false;
    }
  }

  setLoading(on) {
    this.loading = on;
    const el = this.el("history-state");
    el.textContent = !on ? "" : this.failed ? "Can't load — retrying…" : "Loading…";
  }

  /** The shown seq changed: its label, time, PNG link, heatmap, URL. */
  shown() {
    const seq = this.seq;
    if (!this.playing) this.el("history-slider").value = String(this.target);
    this.el("history-seq").textContent = `#${seq.toLocaleString("en-US")}`;
    const timeEl = this.el("history-time");
    const ts = this.timeline.timeOf(seq);
    if (seq === 0) {
      timeEl.textContent = "before the first placement";
      timeEl.removeAttribute("datetime");
    } else if (ts === null) {
      timeEl.textContent = "…";
    } else {
      const d = new Date(ts * 1000);
      timeEl.dateTime = d.toISOString();
      timeEl.textContent = d.toLocaleString(undefined, {
        year: "numeric", month: "short", day: "numeric",
        hour: "2-digit", minute: "2-digit", second: "2-digit",
      });
      timeEl.title = d.toISOString();
    }
    const scale = Math.max(1, Math.min(16, Math.floor(4096 / Math.max(this.width, this.height))));
    const png = this.el("history-png");
    png.href = `/api/board.png?seq=${seq}&scale=${scale}`;
    png.download = `openplace-seq-${seq}.png`;
    this.requestHeat();
    this.hooks.onChange();
  }

  // -- playback -----------------------------------------------------------------------

  play() {
    if (this.playing) return;
    if (this.target >= this.head()) this.go(0);
    this.playing = true;
    this.playPos = this.target;
    this.playLast = performance.now();
    this.el("history-play").classList.add("playing");
    this.el("history-play").setAttribute("aria-label", "Pause");
    const tick = (now) => {
      if (!this.playing) return;
      const dt = Math.min(250, now - this.playLast);
      this.playLast = now;
      // Wait for the data rather than run ahead of it.
      if (this.seq === this.target) {
        this.playPos += (Number(this.el("history-speed").value) * dt) / 1000;
        const head = this.head();
        const next = Math.min(head, Math.floor(this.playPos));
        if (next !== this.target) {
          this.target = next;
          this.el("history-slider").value = String(next);
          this.pump();
        }
        if (next >= head) {
          this.pause();
          return;
        }
      }
      requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  }

  pause() {
    if (!this.playing) return;
    this.playing = false;
    this.el("history-play").classList.remove("playing");
    this.el("history-play").setAttribute("aria-label", "Play");
    this.requestHeat();
  }

  // -- heatmap ------------------------------------------------------------------------

  setHeat(on) {
    this.heatOn = on;
    this.el("history-heat").setAttribute("aria-pressed", String(on));
    if (!on) {
      clearTimeout(this.heatTimer);
      this.heatShown = -1;
      this.view.overlay = null;
      this.view.requestDraw();
    } else this.requestHeat();
  }

  /** Bring the heatmap to the shown seq: after a pause in scrubbing, about once a second in play. */
  requestHeat() {
    if (!this.heatOn || this.heatLoading) return;
    clearTimeout(this.heatTimer);
    const wait = this.playing ? Math.max(0, 1000 - (performance.now() - this.heatAt)) : 150;
    this.heatTimer = setTimeout(() => this.loadHeat(), wait);
  }

  async loadHeat() {
    const seq = this.seq;
    if (!this.heatOn || seq === this.heatShown) return;
    if (seq === 0) {
      // Nothing placed yet: nothing to show.
      this.heatShown = 0;
      this.view.overlay = null;
      this.view.requestDraw();
      this.el("history-heat").dataset.seq = "0";
      return;
    }
    this.heatLoading = true;
    this.heatAt = performance.now();
    try {
      const img = new Image();
      img.src = `/api/heatmap.png?to=${seq}`;
      await img.decode();
      if (this.heatOn) {
        this.heatShown = seq;
        this.view.overlay = img;
        this.view.requestDraw();
        this.el("history-heat").dataset.seq = String(seq);
      }
    } catch (err) {
      console.warn("openplace: heatmap", err);
    } finally {
      this.heatLoading = false;
    }
    if (this.heatOn && this.seq !== this.heatShown) this.requestHeat();
  }
}

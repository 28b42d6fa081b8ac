// The viewport: where the board is on screen (centre + zoom), drawing it crisp,
// and turning mouse / touch gestures into pan, zoom, click and inspect.

const MAX_ZOOM = 64;
const DRAG_THRESHOLD = { mouse: 4, pen: 6, touch: 10 };
const LONG_PRESS_MS = 550;
// Up to this many changed board pixels are drawn on screen one by one; more, and the
// whole view is drawn again.
const FEW_ON_SCREEN = 256;

export class View {
  /**
   * @param {HTMLCanvasElement} canvas the on-screen canvas
   * @param {import('./board.js').Board} board
   * @param {object} handlers onClick(x, y), onInspect(x, y), onHover(x, y | null), onMove()
   */
  constructor(canvas, board, handlers) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { alpha: false });
    this.board = board;
    this.h = handlers;
    this.cx = board.width / 2; // board coordinates at the centre of the screen
    this.cy = board.height / 2;
    this.z = 1; // screen (CSS) pixels per board pixel
    this.w = 1; // canvas size in CSS pixels
    this.hgt = 1;
    this.dpr = 1;
    this.hover = null; // {x, y} under the mouse
    this.preview = null; // colour to preview under the mouse, or null
    this.marked = null; // {x, y} highlighted (inspected pixel)
    this.overlay = null; // an image the size of the board drawn over it (heatmap), or null
    this.areas = []; // protected rectangles [{x, y, w, h}] outlined over the board
    // A template (template.js) drawn over the board: {image, x, y, w, h, opacity}, or null.
    this.template = null;
    this.pointers = new Map();
    this.gesture = null;
    this.frame = 0;
    this.full = true; // the next frame draws the whole view, not only changed pixels
    this.draws = { full: 0, pixels: 0 }; // frames drawn, of each kind (for tests, benchmarks)
    this.background = "#e8eaef";
    board.onChange = () => this.requestDraw(false);
    this.bind();
    new ResizeObserver(() => this.resize()).observe(canvas);
    this.resize();
  }

  /** Draw another board (history mode's) from now on. */
  setBoard(board) {
    if (this.board !== board) this.board.onChange = null; // its changes are not shown now
    this.board = board;
    board.onChange = () => this.requestDraw(false);
    this.requestDraw();
  }

  get minZoom() {
    const fit = Math.min(this.w / this.board.width, this.hgt / this.board.height);
    return Math.min(0.5, fit * 0.5);
  }

  /** The zoom that shows the whole board with a margin. */
  fitZoom() {
    // Leave room for the toolbars above and below.
    const room = Math.max(this.hgt * 0.5, this.hgt - 170);
    const fit = Math.min((this.w * 0.92) / this.board.width, room / this.board.height);
    return Math.max(this.minZoom, Math.min(MAX_ZOOM, fit));
  }

  resize() {
    const rect = this.canvas.getBoundingClientRect();
    this.w = Math.max(1, rect.width);
    this.hgt = Math.max(1, rect.height);
    this.dpr = window.devicePixelRatio || 1;
    this.canvas.width = Math.round(this.w * this.dpr);
    this.canvas.height = Math.round(this.hgt * this.dpr);
    this.background = getComputedStyle(this.canvas).getPropertyValue("--stage").trim() || "#e8eaef";
    this.setView(this.cx, this.cy, this.z, true);
    this.draw(); // at once: resizing the canvas cleared it
  }

  setView(cx, cy, z, quiet = false) {
    this.z = Math.max(this.minZoom, Math.min(MAX_ZOOM, z));
    this.cx = Math.max(0, Math.min(this.board.width, cx));
    this.cy = Math.max(0, Math.min(this.board.height, cy));
    this.requestDraw();
    if (!quiet && this.h.onMove) this.h.onMove();
  }

  /** Board coordinates (fractional) of a point in canvas CSS pixels. */
  toBoard(sx, sy) {
    return { x: this.cx + (sx - this.w / 2) / this.z, y: this.cy + (sy - this.hgt / 2) / this.z };
  }

  /** Canvas CSS pixel position of board coordinates. */
  toScreen(bx, by) {
    return { x: this.w / 2 + (bx - this.cx) * this.z, y: this.hgt / 2 + (by - this.cy) * this.z };
  }

  /** The board pixel under a client (event) position, or null outside the board. */
  pixelAt(clientX, clientY) {
    const rect = this.canvas.getBoundingClientRect();
    const p = this.toBoard(clientX - rect.left, clientY - rect.top);
    const x = Math.floor(p.x);
    const y = Math.floor(p.y);
    return this.board.contains(x, y) ? { x, y } : null;
  }

  /** Client position of the centre of board pixel (x, y). */
  clientOf(x, y) {
    const rect = this.canvas.getBoundingClientRect();
    const p = this.toScreen(x + 0.5, y + 0.5);
    return { x: rect.left + p.x, y: rect.top + p.y };
  }

  zoomAt(factor, sx, sy) {
    const before = this.toBoard(sx, sy);
    const z = Math.max(this.minZoom, Math.min(MAX_ZOOM, this.z * factor));
    this.setView(before.x - (sx - this.w / 2) / z, before.y - (sy - this.hgt / 2) / z, z);
  }

  zoomBy(factor) {
    this.zoomAt(factor, this.w / 2, this.hgt / 2);
  }

  panBy(dx, dy) {
    this.setView(this.cx - dx / this.z, this.cy - dy / this.z, this.z);
  }

  /**
   * Draw in the next animation frame, once however often this is called before it.
   * Nothing is drawn otherwise: a page with nothing happening draws nothing.
   * @param {boolean} full the whole view (it moved, or what is drawn over the board
   *   changed); false: only board pixels changed, and only they may be drawn.
   */
  requestDraw(full = true) {
    if (full) this.full = true;
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  draw() {
    const full = this.full;
    this.full = false;
    if (!full && this.drawChanges()) return;
    this.drawAll();
  }

  /**
   * Draw only the board pixels that changed since the last frame, where that is all that
   * changed. False (nothing drawn) if the whole view must be drawn instead: many pixels,
   * a pixel on the board's edge or under an outline, or an overlay.
   */
  drawChanges() {
    const { board, ctx, dpr, z } = this;
    const changes = board.pendingChanges();
    if (changes === null || changes.length > FEW_ON_SCREEN || this.overlay) return false;
    if (changes.length === 0) return true;
    const s = z * dpr; // device pixels a board pixel
    const origin = this.toScreen(0, 0);
    const ox = origin.x * dpr;
    const oy = origin.y * dpr;
    const right = ox + board.width * s;
    const bottom = oy + board.height * s;
    const { width: cw, height: ch } = this.canvas;
    const over = this.decorationBoxes();
    const rects = [];
    for (const i of changes) {
      const x = i % board.width;
      const y = (i - x) / board.width;
      // The device pixels this board pixel touches, whole.
      const x0 = Math.floor(ox + x * s);
      const y0 = Math.floor(oy + y * s);
      const x1 = Math.ceil(ox + (x + 1) * s);
      const y1 = Math.ceil(oy + (y + 1) * s);
      if (x1 <= 0 || y1 <= 0 || x0 >= cw || y0 >= ch) continue; // off screen
      // A device pixel shared with the margin around the board: draw it all.
      if (x0 < ox || y0 < oy || x1 > right || y1 > bottom) return false;
      for (const b of over) if (x0 < b[2] && x1 > b[0] && y0 < b[3] && y1 > b[1]) return false;
      rects.push(x0, y0, x1, y1);
    }
    board.flush();
    ctx.save();
    ctx.imageSmoothingEnabled = false;
    for (let k = 0; k < rects.length; k += 4) {
      const [x0, y0, x1, y1] = rects.slice(k, k + 4);
      // The board pixels under those device pixels (and one more each side), drawn as a
      // full draw draws them, clipped to those device pixels.
      const bx0 = Math.max(0, Math.floor((x0 - ox) / s) - 1);
      const by0 = Math.max(0, Math.floor((y0 - oy) / s) - 1);
      const bx1 = Math.min(board.width, Math.ceil((x1 - ox) / s) + 1);
      const by1 = Math.min(board.height, Math.ceil((y1 - oy) / s) + 1);
      ctx.save();
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.beginPath();
      ctx.rect(x0, y0, x1 - x0, y1 - y0);
      ctx.clip();
      ctx.setTransform(s, 0, 0, s, ox, oy);
      const w = bx1 - bx0;
      const h = by1 - by0;
      ctx.drawImage(board.canvas, bx0, by0, w, h, bx0, by0, w, h);
      if (this.template) this.drawTemplate(bx0, by0, bx1, by1);
      ctx.restore();
    }
    ctx.restore();
    this.draws.pixels++;
    return true;
  }

  /** Device-pixel boxes [x0, y0, x1, y1] of what is drawn over the board: outlines. */
  decorationBoxes() {
    const { dpr } = this;
    const boxes = [];
    const around = (x, y) => {
      const z = this.z;
      const p = this.toScreen(x, y);
      const size = Math.max(z, 6);
      const off = (size - z) / 2;
      const lw = Math.max(1, Math.min(3, z / 8)) * dpr;
      const m = 2 * lw + 2;
      const rx = (p.x - off) * dpr;
      const ry = (p.y - off) * dpr;
      boxes.push([rx - m, ry - m, rx + size * dpr + m, ry + size * dpr + m]);
    };
    if (this.marked) around(this.marked.x, this.marked.y);
    if (this.hover && this.z >= 3) around(this.hover.x, this.hover.y);
    const m = 2 * dpr + 2;
    for (const a of this.areas) {
      const p = this.toScreen(a.x, a.y);
      const x0 = p.x * dpr;
      const y0 = p.y * dpr;
      const x1 = x0 + a.w * this.z * dpr;
      const y1 = y0 + a.h * this.z * dpr;
      boxes.push([x0 - m, y0 - m, x1 + m, y0 + m], [x0 - m, y1 - m, x1 + m, y1 + m]);
      boxes.push([x0 - m, y0 - m, x0 + m, y1 + m], [x1 - m, y0 - m, x1 + m, y1 + m]);
    }
    return boxes;
  }

  /** Draw the whole view: the margin, the board, what is drawn over it. */
  drawAll() {
    this.draws.full++;
    this.board.flush();
    const { ctx, dpr, z, board } = this;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = this.background;
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    const origin = this.toScreen(0, 0);
    // A soft shadow under the board.
    ctx.save();
    ctx.shadowColor = "rgba(20, 24, 40, 0.18)";
    ctx.shadowBlur = 24 * dpr;
    ctx.shadowOffsetY = 6 * dpr;
    ctx.fillStyle = "#fff";
    ctx.fillRect(origin.x * dpr, origin.y * dpr, board.width * z * dpr, board.height * z * dpr);
    ctx.restore();
    ctx.imageSmoothingEnabled = false;
    ctx.setTransform(z * dpr, 0, 0, z * dpr, origin.x * dpr, origin.y * dpr);
    ctx.drawImage(board.canvas, 0, 0);
    if (this.overlay) {
      ctx.globalAlpha = 0.6;
      ctx.drawImage(this.overlay, 0, 0, board.width, board.height);
      ctx.globalAlpha = 1;
    }
    if (this.template) this.drawTemplate(0, 0, board.width, board.height);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    if (this.areas.length) this.drawAreas();
    if (this.marked) this.outline(this.marked.x, this.marked.y, "#2563eb", null);
    if (this.hover && z >= 3) {
      const fill = this.preview === null ? null : board.palette[this.preview];
      this.outline(this.hover.x, this.hover.y, "rgba(17, 24, 39, 0.85)", fill);
    }
  }

  /**
   * The part of the template over board pixels [x0, x1) x [y0, y1), under the board's
   * transform: one template pixel a board pixel, never past the board's edge.
   */
  drawTemplate(x0, y0, x1, y1) {
    const t = this.template;
    const ax = Math.max(x0, t.x);
    const ay = Math.max(y0, t.y);
    const bx = Math.min(x1, t.x + t.w, this.board.width);
    const by = Math.min(y1, t.y + t.h, this.board.height);
    if (bx <= ax || by <= ay) return;
    const { ctx } = this;
    ctx.globalAlpha = t.opacity;
    ctx.drawImage(t.image, ax - t.x, ay - t.y, bx - ax, by - ay, ax, ay, bx - ax, by - ay);
    ctx.globalAlpha = 1;
  }

  /** A thin dashed outline, white and dark in turn (seen on any colour), around each area. */
  drawAreas() {
    const { ctx, dpr } = this;
    const dash = 5 * dpr;
    ctx.save();
    ctx.lineWidth = Math.round(1.5 * dpr);
    ctx.setLineDash([dash, dash]);
    for (const a of this.areas) {
      const p = this.toScreen(a.x, a.y);
      const rect = [p.x * dpr, p.y * dpr, a.w * this.z * dpr, a.h * this.z * dpr].map(Math.round);
      ctx.lineDashOffset = 0;
      ctx.strokeStyle = "rgba(255, 255, 255, 0.95)";
      ctx.strokeRect(...rect);
      ctx.lineDashOffset = dash;
      ctx.strokeStyle = "rgba(17, 24, 39, 0.9)";
      ctx.strokeRect(...rect);
    }
    ctx.restore();
  }

  outline(x, y, stroke, fill) {
    const { ctx, dpr, z } = this;
    const p = this.toScreen(x, y);
    const s = Math.max(z, 6);
    const off = (s - z) / 2;
    const rx = (p.x - off) * dpr;
    const ry = (p.y - off) * dpr;
    const rs = s * dpr;
    if (fill) {
      ctx.globalAlpha = 0.65;
      ctx.fillStyle = fill;
      ctx.fillRect(rx, ry, rs, rs);
      ctx.globalAlpha = 1;
    }
    const lw = Math.max(1, Math.min(3, z / 8)) * dpr;
    ctx.lineWidth = lw;
    ctx.strokeStyle = "rgba(255, 255, 255, 0.9)";
    ctx.strokeRect(rx - lw, ry - lw, rs + 2 * lw, rs + 2 * lw);
    ctx.strokeStyle = stroke;
    ctx.strokeRect(rx - lw / 2, ry - lw / 2, rs + lw, rs + lw);
  }

  // -- input ----------------------------------------------------------------------

  bind() {
    const c = this.canvas;
    c.addEventListener("pointerdown", (e) => this.down(e));
    c.addEventListener("pointermove", (e) => this.move(e));
    c.addEventListener("pointerup", (e) => this.up(e, true));
    c.addEventListener("pointercancel", (e) => this.up(e, false));
    c.addEventListener("pointerleave", (e) => {
      if (e.pointerType === "mouse") this.setHover(null);
    });
    c.addEventListener("wheel", (e) => this.wheel(e), { passive: false });
    c.addEventListener("contextmenu", (e) => {
      e.preventDefault();
      if (this.gesture && this.gesture.pointerType === "touch") return; // long-press handles it
      const p = this.pixelAt(e.clientX, e.clientY);
      if (p && this.h.onInspect) this.h.onInspect(p.x, p.y);
    });
  }

  local(e) {
    const rect = this.canvas.getBoundingClientRect();
    return { x: e.clientX - rect.left, y: e.clientY - rect.top };
  }

  down(e) {
    if (e.pointerType === "mouse" && e.button !== 0 && e.button !== 1) return;
    try {
      this.canvas.setPointerCapture(e.pointerId);
    } catch {
      /* not capturable */
    }
    const p = this.local(e);
    this.pointers.set(e.pointerId, { x: p.x, y: p.y });
    if (this.pointers.size === 1) {
      this.gesture = {
        pointerType: e.pointerType,
        button: e.button,
        start: p,
        moved: false,
        done: false,
        timer: null,
      };
      if (e.pointerType !== "mouse") {
        this.gesture.timer = setTimeout(() => {
          const g = this.gesture;
          if (!g || g.moved || g.done || this.pointers.size !== 1) return;
          g.done = true;
          const px = this.pixelAt(e.clientX, e.clientY);
          if (px && this.h.onInspect) this.h.onInspect(px.x, px.y);
        }, LONG_PRESS_MS);
      }
      this.canvas.classList.add("grabbing");
    } else if (this.gesture) {
      // A second finger: this is a pinch, never a click.
      this.gesture.moved = true;
      clearTimeout(this.gesture.timer);
      this.gesture.pinch = this.pinchState();
    }
  }

  pinchState() {
    const [a, b] = [...this.pointers.values()];
    return {
      dist: Math.hypot(a.x - b.x, a.y - b.y),
      mid: { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 },
    };
  }

  move(e) {
    const p = this.local(e);
    if (e.pointerType === "mouse") this.setHover(this.pixelAt(e.clientX, e.clientY));
    const prev = this.pointers.get(e.pointerId);
    const g = this.gesture;
    if (!prev || !g) return;
    if (this.pointers.size >= 2) {
      prev.x = p.x;
      prev.y = p.y;
      const before = g.pinch || this.pinchState();
      const now = this.pinchState();
      if (before.dist > 0) this.zoomAt(now.dist / before.dist, before.mid.x, before.mid.y);
      this.panBy(now.mid.x - before.mid.x, now.mid.y - before.mid.y);
      g.pinch = now;
      return;
    }
    if (!g.moved) {
      const limit = DRAG_THRESHOLD[e.pointerType] ?? 6;
      if (Math.hypot(p.x - g.start.x, p.y - g.start.y) < limit) return;
      g.moved = true;
      clearTimeout(g.timer);
    }
    this.panBy(p.x - prev.x, p.y - prev.y);
    prev.x = p.x;
    prev.y = p.y;
  }

  up(e, ok) {
    if (!this.pointers.has(e.pointerId)) return;
    this.pointers.delete(e.pointerId);
    const g = this.gesture;
    if (this.pointers.size > 0) {
      if (g) g.pinch = this.pointers.size >= 2 ? this.pinchState() : null;
      return;
    }
    this.gesture = null;
    this.canvas.classList.remove("grabbing");
    if (!g) return;
    clearTimeout(g.timer);
    if (ok && !g.moved && !g.done && g.button === 0) {
      const px = this.pixelAt(e.clientX, e.clientY);
      if (px && this.h.onClick) this.h.onClick(px.x, px.y);
    }
  }

  wheel(e) {
    e.preventDefault();
    let dy = e.deltaY;
    if (e.deltaMode === 1) dy *= 16;
    else if (e.deltaMode === 2) dy *= this.hgt;
    const k = e.ctrlKey ? 0.01 : 0.0022; // ctrl+wheel is a trackpad pinch: small deltas
    const factor = Math.exp(-Math.max(-300, Math.min(300, dy)) * k);
    const p = this.local(e);
    this.zoomAt(factor, p.x, p.y);
    this.setHover(this.pixelAt(e.clientX, e.clientY));
  }

  setHover(p) {
    const old = this.hover;
    if (old === p || (old && p && old.x === p.x && old.y === p.y)) return;
    this.hover = p;
    this.requestDraw();
    if (this.h.onHover) this.h.onHover(p);
  }
}

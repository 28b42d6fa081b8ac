// The viewport: where the board is on screen (centre + zoom), drawing it crisp,
// and turning mouse / touch gestures into pan, zoom, click and inspect.

const MAX_ZOOM = 64;
const DRAG_THRESHOLD = { mouse: 4, pen: 6, touch: 10 };
const LONG_PRESS_MS = 550;

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
    this.pointers = new Map();
    this.gesture = null;
    this.frame = 0;
    this.background = "#e8eaef";
    board.onChange = () => this.requestDraw();
    this.bind();
    new ResizeObserver(() => this.resize()).observe(canvas);
    this.resize();
  }

  /** Draw another board (history mode's) from now on. */
  setBoard(board) {
    this.board = board;
    board.onChange = () => this.requestDraw();
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
    this.draw();
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

  requestDraw() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  draw() {
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
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    if (this.areas.length) this.drawAreas();
    if (this.marked) this.outline(this.marked.x, this.marked.y, "#2563eb", null);
    if (this.hover && z >= 3) {
      const fill = this.preview === null ? null : board.palette[this.preview];
      this.outline(this.hover.x, this.hover.y, "rgba(17, 24, 39, 0.85)", fill);
    }
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

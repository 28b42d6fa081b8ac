// Template overlays: an image placed at board coordinates (x, y), drawn over the board
// half see-through (view.js draws it, one image pixel a board pixel), so a community can
// follow a plan. It comes from a file on this computer (never uploaded) or from a URL on
// this site; a URL template is kept in the page's address (#template=…&tx=&ty=&to=), so
// the address is a link that opens the same template at the same place.
//
// "Differs" counts the template's opaque pixels whose nearest palette colour is not the
// board's colour there: counted once when a template or a board loads, then kept up to
// date one placement at a time (the text is written at most 4 times a second, and only
// when a placement changed it: a page at rest does nothing).

import { parseHex } from "./board.js";

const DEFAULT_OPACITY = 0.6;
const MAX_BYTES = 16 * 1024 * 1024; // a template file or download larger than this is refused
const RENDER_EVERY_MS = 250;

/** A template URL the page may load: same origin, http(s). The URL, or an Error. */
export function sameOriginUrl(text) {
  let url;
  try {
    url = new URL(text.trim(), location.href);
  } catch {
    return new Error(`"${text}" is not a URL`);
  }
  if ((url.protocol !== "http:" && url.protocol !== "https:") || url.origin !== location.origin) {
    return new Error(
      `Refused: templates load only from this site (${location.origin}), not from ${url.origin === "null" ? url.protocol : url.origin}`,
    );
  }
  return url;
}

export class Templates {
  /**
   * @param {object} o
   * @param {import('./view.js').View} o.view
   * @param {import('./board.js').Board} o.board the live board (differs is counted on it)
   * @param {(id: string) => HTMLElement} o.el
   * @param {(msg: string, kind?: string, ms?: number) => void} o.toast
   * @param {() => {x: number, y: number} | null} o.selected the page's selected pixel
   * @param {() => void} o.onChange the state kept in the address changed
   */
  constructor({ view, board, el, toast, selected, onChange }) {
    this.view = view;
    this.board = board;
    this.el = el;
    this.toast = toast;
    this.selected = selected;
    this.onChange = onChange;
    this.image = null; // a canvas, one pixel a template pixel
    this.want = null; // Int8Array: palette index each template pixel asks for, -1 transparent
    this.w = 0;
    this.h = 0;
    this.x = 0;
    this.y = 0;
    this.opacity = DEFAULT_OPACITY;
    this.visible = true;
    this.url = null; // the same-origin path of a URL template; null for a file (or none)
    this.name = ""; // what the panel says it is
    this.loading = false;
    this.error = "";
    this.differs = null;
    this.renderTimer = null;
    this.token = 0;
    this.lut = new Map(); // rgb -> nearest palette index
    this.rgb = board.palette.map(parseHex);
    this.bind();
    this.render();
  }

  get loaded() {
    return this.image !== null;
  }

  // -- the panel ----------------------------------------------------------------------

  bind() {
    const el = this.el;
    el("template-open").addEventListener("click", () => this.setOpen(el("template").hidden));
    el("template-close").addEventListener("click", () => this.setOpen(false));
    el("template-file").addEventListener("change", () => {
      const file = el("template-file").files[0];
      if (file) this.loadFile(file);
      el("template-file").value = ""; // the same file again is a change too
    });
    el("template-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const text = el("template-url").value;
      if (text.trim()) this.loadUrl(text);
    });
    const pos = () => {
      const x = parseInt(el("template-x").value, 10);
      const y = parseInt(el("template-y").value, 10);
      this.moveTo(Number.isFinite(x) ? x : this.x, Number.isFinite(y) ? y : this.y);
    };
    el("template-x").addEventListener("change", pos);
    el("template-y").addEventListener("change", pos);
    el("template-here").addEventListener("click", () => {
      const p = this.selected();
      if (p) this.moveTo(p.x, p.y);
    });
    el("template-opacity").addEventListener("input", () => {
      this.opacity = Number(el("template-opacity").value);
      this.show();
      this.changed();
    });
    el("template-visible").addEventListener("change", () => this.setVisible(el("template-visible").checked));
    el("template-remove").addEventListener("click", () => this.clear());
    el("template-copy").addEventListener("click", async () => {
      const link = el("template-link").value;
      try {
        await navigator.clipboard.writeText(link);
        this.toast("Template link copied");
      } catch {
        el("template-link").select();
        this.toast("Select the link and copy it");
      }
    });
    el("template-x").max = String(this.board.width - 1);
    el("template-y").max = String(this.board.height - 1);
  }

  setOpen(open) {
    this.el("template").hidden = !open;
    this.el("template-open").setAttribute("aria-pressed", String(open));
    if (open) {
      this.renderHere();
      (this.loaded ? this.el("template-x") : this.el("template-url")).focus();
    }
  }

  /** The "place at the selected pixel" button follows the page's selected pixel. */
  renderHere() {
    const p = this.selected();
    const b = this.el("template-here");
    b.disabled = !p || !this.loaded;
    const title = p ? `Put the template's top-left corner at (${p.x}, ${p.y})` : "Select a pixel first (right-click it)";
    if (b.title !== title) b.title = title;
  }

  render() {
    const el = this.el;
    el("template-open").classList.toggle("has-template", this.loaded);
    el("template-status").textContent = this.loading
      ? "Loading…"
      : this.loaded
        ? `${this.name} · ${this.w}×${this.h}`
        : "No template";
    el("template-error").textContent = this.error;
    el("template-error").hidden = !this.error;
    for (const id of ["template-x", "template-y", "template-opacity", "template-visible", "template-remove"]) {
      el(id).disabled = !this.loaded;
    }
    el("template-x").value = String(this.x);
    el("template-y").value = String(this.y);
    el("template-opacity").value = String(this.opacity);
    el("template-opacity-value").textContent = `${Math.round(this.opacity * 100)}%`;
    el("template-visible").checked = this.visible;
    const shareable = this.loaded && this.url !== null;
    el("template-share").hidden = !shareable;
    el("template-noshare").hidden = !(this.loaded && this.url === null);
    if (shareable) el("template-link").value = this.link();
    this.renderHere();
    this.renderDiffers();
  }

  renderDiffers() {
    const text =
      this.differs === null ? "" : this.differs === 0 ? "Done: every pixel matches" : `${this.differs} ${this.differs === 1 ? "pixel differs" : "pixels differ"}`;
    const out = this.el("template-differs");
    if (out.textContent !== text) out.textContent = text;
  }

  // -- loading --------------------------------------------------------------------------

  async loadFile(file) {
    if (file.size > MAX_BYTES) return this.fail(`The file is too large (over ${MAX_BYTES >> 20} MB)`);
    await this.load(file, null, file.name || "file");
  }

  /** Load from a URL on this site; a cross-origin URL is refused before any request. */
  async loadUrl(text, position = null) {
    const url = sameOriginUrl(text);
    if (url instanceof Error) return this.fail(url.message);
    const path = url.pathname + url.search;
    const token = ++this.token;
    this.loading = true;
    this.error = "";
    this.render();
    let blob;
    try {
      const res = await fetch(url, { credentials: "same-origin" });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      if (new URL(res.url).origin !== location.origin) throw new Error("redirected to another site");
      blob = await res.blob();
    } catch (err) {
      if (token === this.token) this.fail(`Couldn't load the template from ${path}: ${err.message}`);
      return;
    }
    if (token !== this.token) return;
    if (blob.size > MAX_BYTES) return this.fail(`The template is too large (over ${MAX_BYTES >> 20} MB)`);
    await this.load(blob, path, path.split("?")[0].split("/").pop() || path, position, token);
  }

  async load(blob, url, name, position = null, token = ++this.token) {
    this.loading = true;
    this.error = "";
    this.render();
    let bitmap;
    try {
      bitmap = await createImageBitmap(blob, { premultiplyAlpha: "none", colorSpaceConversion: "none" });
    } catch {
      if (token === this.token) this.fail(`${name} is not an image the browser can read`);
      return;
    }
    if (token !== this.token) return;
    const { width: w, height: h } = bitmap;
    if (w > this.board.width || h > this.board.height) {
      bitmap.close();
      return this.fail(`The template is ${w}×${h}, larger than the canvas (${this.board.width}×${this.board.height})`);
    }
    const canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0);
    bitmap.close();
    this.image = canvas;
    this.want = this.match(ctx.getImageData(0, 0, w, h).data);
    this.w = w;
    this.h = h;
    this.url = url;
    this.name = name;
    this.loading = false;
    this.visible = true;
    if (position) {
      this.x = position.x;
      this.y = position.y;
      this.opacity = position.opacity;
    }
    this.x = this.clampX(this.x);
    this.y = this.clampY(this.y);
    this.recount();
    this.show();
    this.changed();
  }

  fail(message) {
    this.loading = false;
    this.error = message;
    this.render();
    this.toast(message, "error", 5000);
  }

  /** The palette index each pixel asks for (nearest colour), -1 where it is transparent. */
  match(rgba) {
    const want = new Int8Array(rgba.length / 4);
    const lut = this.lut;
    for (let i = 0, j = 0; i < want.length; i++, j += 4) {
      if (rgba[j + 3] < 128) {
        want[i] = -1;
        continue;
      }
      const key = (rgba[j] << 16) | (rgba[j + 1] << 8) | rgba[j + 2];
      let best = lut.get(key);
      if (best === undefined) {
        let d = Infinity;
        this.rgb.forEach(([r, g, b], k) => {
          const e = (r - rgba[j]) ** 2 + (g - rgba[j + 1]) ** 2 + (b - rgba[j + 2]) ** 2;
          if (e < d) {
            d = e;
            best = k;
          }
        });
        lut.set(key, best);
      }
      want[i] = best;
    }
    return want;
  }

  clear() {
    this.token++;
    this.image = null;
    this.want = null;
    this.url = null;
    this.name = "";
    this.error = "";
    this.differs = null;
    this.show();
    this.changed();
  }

  // -- position, opacity, visibility ---------------------------------------------------

  clampX(x) {
    return Math.max(0, Math.min(this.board.width - 1, Math.trunc(x)));
  }

  clampY(y) {
    return Math.max(0, Math.min(this.board.height - 1, Math.trunc(y)));
  }

  moveTo(x, y) {
    this.x = this.clampX(x);
    this.y = this.clampY(y);
    this.recount();
    this.show();
    this.changed();
  }

  setVisible(on) {
    if (!this.loaded) return;
    this.visible = on;
    this.show();
    this.render();
    this.toast(on ? "Template shown" : "Template hidden (T shows it)");
  }

  /** `T`: show or hide the template; without one, open the panel. */
  toggle() {
    if (this.loaded) this.setVisible(!this.visible);
    else this.setOpen(true);
  }

  /** Tell the view what to draw. */
  show() {
    this.view.template =
      this.loaded && this.visible
        ? { image: this.image, x: this.x, y: this.y, w: this.w, h: this.h, opacity: this.opacity }
        : null;
    this.view.requestDraw();
  }

  changed() {
    this.render();
    this.onChange();
  }

  // -- differs ------------------------------------------------------------------------

  /** Count from scratch (a template or a whole board loaded, the template moved). */
  recount() {
    if (!this.loaded) return;
    const { want, w, h, x: tx, y: ty, board } = this;
    const colors = board.colors;
    let n = 0;
    for (let y = 0; y < h && ty + y < board.height; y++) {
      const row = (ty + y) * board.width + tx;
      for (let x = 0; x < w && tx + x < board.width; x++) {
        const c = want[y * w + x];
        if (c >= 0 && colors[row + x] !== c) n++;
      }
    }
    this.differs = n;
    this.renderSoon();
  }

  /** A placement on the live board: `index` went from colour `before` to `after`. */
  placed(index, before, after) {
    if (!this.loaded || before === after) return;
    const bx = index % this.board.width;
    const x = bx - this.x;
    const y = (index - bx) / this.board.width - this.y;
    if (x < 0 || y < 0 || x >= this.w || y >= this.h) return;
    const c = this.want[y * this.w + x];
    if (c < 0) return;
    if (before === c) this.differs++;
    else if (after === c) this.differs--;
    else return;
    this.renderSoon();
  }

  renderSoon() {
    if (this.renderTimer !== null) return;
    this.renderTimer = setTimeout(() => {
      this.renderTimer = null;
      this.renderDiffers();
    }, RENDER_EVERY_MS);
  }

  // -- the address ----------------------------------------------------------------------

  /** The template's part of the page's address: "" for none, or a file. */
  hashPart() {
    if (!this.loaded || this.url === null) return "";
    const p = new URLSearchParams({ template: this.url, tx: String(this.x), ty: String(this.y), to: String(this.opacity) });
    return p.toString();
  }

  /** A link to this page showing the template where it is (and the view as it is). */
  link() {
    const v = this.view;
    const z = Math.round(v.z * 100) / 100;
    return `${location.origin}${location.pathname}#x=${Math.floor(v.cx)}&y=${Math.floor(v.cy)}&z=${z}&${this.hashPart()}`;
  }

  /** Follow the address: load its template (or move/fade the one shown) if it names one. */
  fromHash(params) {
    const url = params.get("template");
    if (!url) return;
    const num = (k, dflt) => {
      const v = parseFloat(params.get(k) ?? "");
      return Number.isFinite(v) ? v : dflt;
    };
    const position = {
      x: this.clampX(num("tx", 0)),
      y: this.clampY(num("ty", 0)),
      opacity: Math.max(0.05, Math.min(1, num("to", DEFAULT_OPACITY))),
    };
    if (this.loaded && this.url === url) {
      this.opacity = position.opacity;
      this.moveTo(position.x, position.y);
      return;
    }
    this.loadUrl(url, position);
  }
}

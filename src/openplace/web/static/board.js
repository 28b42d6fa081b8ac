// The board model: authoritative colours from the server (packed board + live
// records), an overlay of optimistic placements, and an offscreen canvas with
// one image pixel per board pixel that the view draws scaled.

export function parseHex(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
// Up to this many changed pixels are copied (and redrawn on screen) one by one; more,
// and the rectangle around them is copied in one go.
export const FEW_PIXELS = 1024;

export class Board {
  constructor(width, height, palette) {
    this.width = width;
    this.height = height;
    this.palette = palette;
    this.colors = new Uint8Array(width * height); // authoritative, one byte a pixel
    this.pending = new Map(); // index -> colour shown optimistically
    this.canvas = document.createElement("canvas");
    this.canvas.width = width;
    this.canvas.height = height;
    this.ctx = this.canvas.getContext("2d", { alpha: false });
    this.image = this.ctx.createImageData(width, height);
    this.pixels32 = new Uint32Array(this.image.data.buffer);
    this.lut = new Uint32Array(16);
    palette.forEach((hex, i) => {
      const [r, g, b] = parseHex(hex);
      this.lut[i] = LITTLE_ENDIAN
        ? ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0
        : ((r << 24) | (g << 16) | (b << 8) | 255) >>> 0;
    });
    this.dirty = null; // [x0, y0, x1, y1] inclusive, or null
    this.changes = []; // indices of the pixels changed since the last flush, or null: many
    this.onChange = null; // called when something needs redrawing
  }

  /** Replace everything with a packed board (two pixels a byte, even index high nibble). */
  load(packed) {
    const bytes = new Uint8Array(packed);
    const n = this.width * this.height;
    if (bytes.length * 2 !== n) {
      throw new Error(`board is ${bytes.length} bytes, expected ${n / 2}`);
    }
    const colors = this.colors;
    for (let j = 0; j < bytes.length; j++) {
      const b = bytes[j];
      colors[2 * j] = b >> 4;
      colors[2 * j + 1] = b & 15;
    }
    const px = this.pixels32;
    const lut = this.lut;
    for (let i = 0; i < n; i++) px[i] = lut[colors[i]];
    for (const [i, c] of this.pending) px[i] = lut[c];
    this.invalidate();
  }

  /** Replace everything with colours, one a pixel (history mode's checkpoints). */
  loadColors(colors) {
    this.colors.set(colors);
    const px = this.pixels32;
    const lut = this.lut;
    for (let i = 0; i < colors.length; i++) px[i] = lut[colors[i]];
    for (const [i, c] of this.pending) px[i] = lut[c];
    this.invalidate();
  }

  /** Everything needs copying and drawing again. */
  invalidate() {
    this.dirty = [0, 0, this.width - 1, this.height - 1];
    this.changes = null;
    this.changed();
  }

  index(x, y) {
    return y * this.width + x;
  }

  contains(x, y) {
    return x >= 0 && y >= 0 && x < this.width && y < this.height;
  }

  /** The colour shown at (x, y): the optimistic one if any, else the server's. */
  get(x, y) {
    const i = this.index(x, y);
    const p = this.pending.get(i);
    return p === undefined ? this.colors[i] : p;
  }

  /** A placement from the server. */
  set(index, color) {
    if (index >= this.colors.length || color > 15) return;
    this.colors[index] = color;
    if (!this.pending.has(index)) this.paint(index, color);
  }

  /** Show `color` at `index` before the server confirms it. */
  setPending(index, color) {
    this.pending.set(index, color);
    this.paint(index, color);
  }

  /** Stop showing the optimistic colour (confirmed or refused): show the server's. */
  clearPending(index) {
    if (!this.pending.delete(index)) return;
    this.paint(index, this.colors[index]);
  }

  paint(index, color) {
    this.pixels32[index] = this.lut[color];
    const x = index % this.width;
    const y = (index - x) / this.width;
    const ch = this.changes;
    if (ch !== null) {
      if (ch.length < FEW_PIXELS) ch.push(index);
      else this.changes = null;
    }
    const d = this.dirty;
    if (d === null) this.dirty = [x, y, x, y];
    else {
      if (x < d[0]) d[0] = x;
      if (y < d[1]) d[1] = y;
      if (x > d[2]) d[2] = x;
      if (y > d[3]) d[3] = y;
    }
    this.changed();
  }

  changed() {
    if (this.onChange) this.onChange();
  }

  /** Copy changed image pixels to the offscreen canvas; true if anything changed. */
  flush() {
    const d = this.dirty;
    if (d === null) return false;
    const ch = this.changes;
    this.dirty = null;
    this.changes = [];
    if (ch === null) {
      this.ctx.putImageData(this.image, 0, 0, d[0], d[1], d[2] - d[0] + 1, d[3] - d[1] + 1);
    } else {
      // A few pixels scattered over the board: copy each, not the rectangle around them
      // all (at 1,000 placements a second that is most of the board, every frame).
      const w = this.width;
      for (const i of ch) this.ctx.putImageData(this.image, 0, 0, i % w, (i / w) | 0, 1, 1);
    }
    return true;
  }

  /** The indices changed since the last flush, or null if there are many (or everything
   *  is to be drawn again); flush() copies them. */
  pendingChanges() {
    return this.dirty === null ? [] : this.changes;
  }
}

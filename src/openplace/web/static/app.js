// openplace web client: wires the board, the view, the API and the live stream
// to the page.

import { Board } from "./board.js";
import { HistoryMode } from "./history.js";
import { Api, ApiError, LiveStream } from "./net.js";
import { Templates } from "./template.js";
import { View } from "./view.js";

const $ = (id) => document.getElementById(id);
const COLOR_KEY = "openplace.color";
const HINT_KEY = "openplace.hinted";
const MODERATOR_KEY = "openplace.moderator";

const api = new Api();
let board = null;
let view = null;
let stream = null;
let canvasInfo = null;
let selected = 0;
let inspectMode = false;
let cooldownUntil = 0; // performance.now() deadline; 0 = ready
let placing = false;
let hist = null; // history mode (history.js)
let openAtSeq = null; // a #seq=N the page was opened with, entered once the board is here
const awaiting = new Map(); // index -> seq of our placement not yet seen on the stream
let policy = { frozen: false, protected: [] }; // the moderators' (GET /api/policy, the stream)
let policyVersion = 0; // bumped by every policy learnt, so an older answer cannot undo a newer one
let moderator = null; // moderator.js's hooks, on a moderator's page once it is loaded
let shownUser = null; // the user id the pixel panel shows as having placed the pixel
let tmpl = null; // the template overlay (template.js)

// -- small UI helpers -------------------------------------------------------------

let toastTimer = null;
let toasted = false; // a message has been shown: the first-visit hint must not cover it

function toast(message, kind = "info", ms = 2600) {
  toasted = true;
  const el = $("toast");
  el.textContent = message;
  el.dataset.kind = kind;
  el.classList.add("show");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => el.classList.remove("show"), ms);
}

function mmss(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000));
  const m = Math.floor(s / 60);
  return `${String(m).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
}

function ago(iso) {
  const s = Math.max(0, (Date.now() + api.clockOffset - Date.parse(iso)) / 1000);
  if (s < 5) return "just now";
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} days ago`;
}

// -- palette ----------------------------------------------------------------------

function buildPalette(palette) {
  const root = $("palette");
  root.replaceChildren();
  palette.forEach((hex, i) => {
    const b = document.createElement("button");
    b.className = "swatch";
    b.type = "button";
    b.style.setProperty("--c", hex);
    b.dataset.color = String(i);
    b.setAttribute("role", "radio");
    b.setAttribute("aria-label", `Colour ${i + 1} (${hex})`);
    b.title = i < 10 ? `${hex} · key ${(i + 1) % 10}` : hex;
    b.addEventListener("click", () => selectColor(i));
    root.append(b);
  });
  const stored = parseInt(localStorage.getItem(COLOR_KEY) || "", 10);
  selectColor(Number.isInteger(stored) && stored >= 0 && stored < palette.length ? stored : 5);
}

function selectColor(i) {
  selected = i;
  for (const b of $("palette").children) {
    const on = Number(b.dataset.color) === i;
    b.classList.toggle("selected", on);
    b.setAttribute("aria-checked", String(on));
  }
  try {
    localStorage.setItem(COLOR_KEY, String(i));
  } catch {
    /* ignore */
  }
  if (inspectMode) setInspect(false);
  updatePreview();
}

function setInspect(on) {
  inspectMode = on;
  $("inspect").setAttribute("aria-pressed", String(on));
  document.body.classList.toggle("inspecting", on);
  updatePreview();
}

function updatePreview() {
  if (!view) return;
  view.preview = !inspectMode && isReady() && !inHistory() && !policy.frozen ? selected : null;
  view.requestDraw();
}

// -- cooldown ---------------------------------------------------------------------

function isReady() {
  return cooldownUntil <= performance.now();
}

function setCooldown(ms) {
  const max = (canvasInfo ? canvasInfo.cooldown_seconds : 300) * 1000 + 1000;
  ms = Math.min(ms, max); // a client clock far off must not lock us out
  cooldownUntil = ms > 0 ? performance.now() + ms : 0;
  renderCooldown();
  updatePreview();
}

function renderCooldown() {
  // Runs 4 times a second: it writes to the page only what changed, so a page at rest
  // recalculates no style and lays nothing out.
  const el = $("cooldown");
  const left = cooldownUntil - performance.now();
  let state;
  let text;
  let title = el.title;
  if (placing) {
    state = "placing";
    text = "Placing…";
  } else if (policy.frozen) {
    state = "frozen";
    text = "Frozen";
    title = "The canvas is frozen: nobody can place pixels right now";
  } else if (left > 0) {
    state = "cooling";
    text = mmss(left);
    title = "Time until you can place another pixel";
  } else {
    if (el.dataset.state === "cooling") updatePreview();
    state = "ready";
    text = "Ready";
    title = "You can place a pixel";
  }
  if (el.dataset.state !== state) el.dataset.state = state;
  setText($("cooldown-text"), text);
  if (el.title !== title) el.title = title;
}

/** Set an element's text only if it differs (the same text still costs a layout). */
function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

// -- placing ----------------------------------------------------------------------

function inHistory() {
  return hist !== null && hist.active;
}

async function place(x, y) {
  if (inHistory()) {
    // Placing is off while looking at the past: a click shows the pixel's story instead.
    inspect(x, y);
    return;
  }
  if (inspectMode) return inspect(x, y);
  if (placing) return;
  if (policy.frozen) {
    toast(FROZEN_MESSAGE, "error", 4000);
    return;
  }
  if (!isReady()) {
    toast(`Hang on — you can place again in ${mmss(cooldownUntil - performance.now())}`);
    const el = $("cooldown");
    el.classList.remove("nudge");
    void el.offsetWidth;
    el.classList.add("nudge");
    return;
  }
  const index = board.index(x, y);
  const color = selected;
  board.setPending(index, color);
  awaiting.delete(index);
  placing = true;
  renderCooldown();
  updatePreview();
  try {
    const res = await api.place(x, y, color);
    setCooldown(Math.min(api.msUntil(res.next_at), canvasInfo.cooldown_seconds * 1000));
    if (stream.lastSeq >= res.seq) board.clearPending(index);
    else awaiting.set(index, res.seq);
  } catch (err) {
    board.clearPending(index);
    if (err instanceof ApiError && err.status === 429 && err.code === "cooldown") {
      // retry_after is relative, so immune to a wrong client clock; next_at as a fallback.
      const retry = Number(err.body.retry_after);
      setCooldown(Number.isFinite(retry) ? retry * 1000 : api.msUntil(err.body.next_at));
      toast(`Not yet — you can place again in ${mmss(cooldownUntil - performance.now())}`);
    } else if (err instanceof ApiError && err.status === 403 && err.code === "frozen") {
      applyPolicy({ ...policy, frozen: true });
      toast(FROZEN_MESSAGE, "error", 4000);
    } else if (err instanceof ApiError && err.status === 403 && err.code === "banned") {
      toast(bannedMessage(err.body), "error", 8000);
    } else if (err instanceof ApiError && err.status === 403 && err.code === "protected") {
      toast("This area is protected — pixels can't be placed here", "error", 4000);
    } else if (err instanceof ApiError) {
      toast(`Couldn't place the pixel: ${err.message}`, "error", 4000);
    } else {
      toast("Couldn't reach the server — pixel not placed", "error", 4000);
    }
  } finally {
    placing = false;
    renderCooldown();
    updatePreview();
  }
}

function bannedMessage({ reason, expires_at: until }) {
  let text = "You are banned from placing pixels";
  if (reason) text += `: ${reason}`;
  if (until) text += ` (until ${new Date(until).toLocaleString()})`;
  return text;
}

/** Our optimistic pixels whose placement the stream has now delivered. */
function confirmUpTo(seq) {
  for (const [index, s] of awaiting) {
    if (s <= seq) {
      awaiting.delete(index);
      board.clearPending(index);
    }
  }
}

// -- the moderators' policy -------------------------------------------------------

const FROZEN_MESSAGE = "The canvas is frozen — nobody can place pixels right now";

/** Show `{frozen, protected}`: the frozen banner, placing off or on, the protected areas. */
function applyPolicy(next) {
  policyVersion++;
  const thawed = policy.frozen && next.frozen !== true;
  policy = { frozen: next.frozen === true, protected: next.protected || [] };
  if (thawed) toast("The canvas is open again — you can place pixels");
  $("frozen").hidden = !policy.frozen;
  document.body.classList.toggle("frozen", policy.frozen);
  view.areas = policy.protected;
  renderCooldown();
  updatePreview();
}

/** Ask the server for the policy (at start and after a reconnect, when changes were missed). */
function fetchPolicy() {
  const asked = policyVersion;
  api
    .policy()
    .then((p) => {
      if (policyVersion === asked) applyPolicy(p); // else the stream told us something newer
    })
    .catch((err) => console.warn("openplace: /api/policy failed", err));
}

// -- pixel info -------------------------------------------------------------------

let inspectToken = 0;

function showPlacedBy(userId, placedAt) {
  shownUser = userId || null;
  if (moderator) moderator.showUser(shownUser);
  const user = $("info-user");
  if (!userId) {
    user.textContent = "Nobody yet";
    user.title = "";
    $("info-when").textContent = "—";
    $("info-when").title = "";
    return;
  }
  user.textContent = userId;
  user.title = userId;
  if (userId === api.userId) {
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = "you";
    user.append(badge);
  }
  $("info-when").textContent = ago(placedAt);
  $("info-when").title = new Date(placedAt).toLocaleString();
}

/** The pixel's placements (newest first), the one shown at `current` marked. */
function showPixelHistory(placements, current, later) {
  const list = $("info-history");
  list.replaceChildren();
  for (const p of placements.slice(0, 8)) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "hist-item";
    if (p.seq === current) b.classList.add("current");
    b.title = `#${p.seq} · ${new Date(p.placed_at).toLocaleString()} · ${p.user_id} — show the canvas then`;
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.style.setProperty("--c", board.palette[p.color]);
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = p.user_id === api.userId ? "you" : p.user_id;
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = ago(p.placed_at);
    b.append(chip, who, when);
    b.dataset.seq = String(p.seq);
    b.addEventListener("click", () => hist.enter(p.seq));
    li.append(b);
    list.append(li);
  }
  const n = placements.length;
  let note = n === 0 ? "no placements" : n === 1 ? "1 placement" : `${n} placements`;
  if (n >= 8) note = `latest 8 of ${note}`;
  if (later > 0) note += ` · ${later} later`;
  $("info-history-note").textContent = note;
}

async function inspect(x, y) {
  const token = ++inspectToken;
  const at = inHistory() ? hist.seq : null; // the moment shown, or null for now
  const panel = $("info");
  panel.hidden = false;
  $("toast").classList.remove("show"); // on phones they share the top of the screen
  view.marked = { x, y };
  view.requestDraw();
  tmpl.renderHere();
  $("info-coords").textContent = at === null ? `(${x}, ${y})` : `(${x}, ${y}) at #${at}`;
  $("info-swatch").style.setProperty("--c", board.palette[view.board.get(x, y)]);
  $("info-user").textContent = "…";
  shownUser = null;
  if (moderator) moderator.showUser(null);
  $("info-when").textContent = "…";
  $("info-when").title = "";
  $("info-history").replaceChildren();
  $("info-history-note").textContent = "Loading…";
  const past = api.pixelHistory(x, y, at === null ? 8 : 1000);
  past.catch(() => {}); // awaited below
  try {
    if (at === null) {
      const info = await api.pixel(x, y);
      if (token !== inspectToken) return;
      if (info.color !== null && info.color !== undefined) {
        $("info-swatch").style.setProperty("--c", board.palette[info.color]);
      }
      showPlacedBy(info.user_id, info.placed_at);
    }
    const { placements } = await past;
    if (token !== inspectToken) return;
    if (at === null) {
      showPixelHistory(placements, placements.length ? placements[0].seq : null, 0);
    } else {
      // As it was at `at`: the placements up to it.
      const upto = placements.filter((p) => p.seq <= at);
      const then = upto[0];
      showPlacedBy(then ? then.user_id : null, then ? then.placed_at : null);
      showPixelHistory(upto, then ? then.seq : null, placements.length - upto.length);
    }
  } catch {
    if (token !== inspectToken) return;
    if ($("info-user").textContent === "…") {
      $("info-user").textContent = "Couldn't load";
      $("info-when").textContent = "—";
    }
    $("info-history-note").textContent = "Couldn't load the history";
  }
}

function closeInfo() {
  inspectToken++;
  $("info").hidden = true;
  if (view) {
    view.marked = null;
    view.requestDraw();
  }
  if (tmpl) tmpl.renderHere();
}

// -- the view in the URL ----------------------------------------------------------

function parseHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  const num = (k) => {
    const v = parseFloat(p.get(k) ?? "");
    return Number.isFinite(v) ? v : null;
  };
  return { x: num("x"), y: num("y"), z: num("z"), seq: num("seq") };
}

/** The hash changed (a link was followed): go to its view and moment. */
function hashChanged() {
  if (location.hash.startsWith("#moderator=")) {
    takeModeratorToken();
    loadModerator();
    return;
  }
  applyHash();
  tmpl.fromHash(new URLSearchParams(location.hash.slice(1)));
  const { seq } = parseHash();
  if (seq !== null) hist.enter(seq);
  else if (inHistory()) hist.exit();
}

function applyHash() {
  const h = parseHash();
  if (h.x === null && h.y === null && h.z === null) return false;
  view.setView(
    h.x === null ? view.cx : h.x + 0.5,
    h.y === null ? view.cy : h.y + 0.5,
    h.z === null ? view.z : h.z,
    true,
  );
  renderZoom();
  return true;
}

let hashTimer = null;
function viewMoved() {
  renderZoom();
  scheduleHash();
}

/** Keep the view (in history mode the moment shown, and a URL template) in the URL, at most
 *  5 times a second. */
function scheduleHash() {
  if (hashTimer !== null) return;
  hashTimer = setTimeout(() => {
    hashTimer = null;
    const z = Math.round(view.z * 100) / 100;
    let hash = `#x=${Math.floor(view.cx)}&y=${Math.floor(view.cy)}&z=${z}`;
    if (inHistory()) hash += `&seq=${hist.seq}`;
    const template = tmpl.hashPart();
    if (template) hash += `&${template}`;
    if (location.hash !== hash) history.replaceState(null, "", hash);
  }, 200);
}

function renderZoom() {
  const z = view.z;
  $("zoom-level").textContent = z >= 10 ? `${Math.round(z)}×` : `${Math.round(z * 10) / 10}×`;
}

function renderCoords(p) {
  $("coords-text").textContent = p ? `${p.x}, ${p.y}` : "—";
}

// -- connection status ------------------------------------------------------------

let retryTicker = null;
function renderStatus(state, detail) {
  const el = $("status");
  el.dataset.state = state;
  if (state === "live") beat();
  clearInterval(retryTicker);
  const text = $("status-text");
  if (state === "live") text.textContent = "Live";
  else if (state === "connecting") text.textContent = "Connecting…";
  else if (state === "syncing") text.textContent = "Syncing…";
  else if (state === "reconnecting") {
    const tick = () => {
      const s = Math.ceil((detail.retryAt - Date.now()) / 1000);
      text.textContent = s > 0 ? `Reconnecting in ${s} s` : "Reconnecting…";
    };
    tick();
    retryTicker = setInterval(tick, 500);
  }
  if (state !== "live") $("online").textContent = "";
}

// The live dot pulses once when the page goes live and when placements arrive (at most
// one pulse at a time), not forever: a page with nothing happening animates nothing.
const BEAT_MS = 2500; // the pulse's animation (style.css) and a little more
let beating = false;
const reducedMotion = matchMedia("(prefers-reduced-motion: reduce)");

function beat() {
  if (beating || reducedMotion.matches) return;
  const dot = $("status").querySelector(".dot");
  beating = true;
  dot.classList.add("beat");
  setTimeout(() => {
    dot.classList.remove("beat");
    beating = false;
  }, BEAT_MS);
}

function renderOnline(n) {
  setText($("online"), `${n} online`);
}

// -- the moderator's page ---------------------------------------------------------

/** `#moderator=<token>`: keep the token and take it out of the address bar at once. */
function takeModeratorToken() {
  const prefix = "#moderator=";
  if (!location.hash.startsWith(prefix)) return;
  const raw = location.hash.slice(prefix.length);
  history.replaceState(null, "", location.pathname + location.search);
  try {
    const token = decodeURIComponent(raw);
    if (token) localStorage.setItem(MODERATOR_KEY, token);
  } catch {
    /* a mangled link, or private mode: no moderator view */
  }
}

/** Only a page holding a moderator token loads moderator.js. */
function loadModerator() {
  if (!localStorage.getItem(MODERATOR_KEY)) return;
  // import(), not a <script>: the page's CSP requires Trusted Types for script URLs.
  import("./moderator.js")
    .then((m) => m.start({ key: MODERATOR_KEY, toast }))
    .then((hooks) => {
      moderator = hooks;
      if (moderator && !$("info").hidden) moderator.showUser(shownUser);
    })
    .catch((err) => console.warn("openplace: moderator.js failed", err));
}

// -- start ------------------------------------------------------------------------

/** Fetch and show the board; never one older than `expect` (see LiveStream). */
async function loadBoard(expect) {
  let fetched = await api.board();
  const stale = (b) =>
    expect && ((expect.boardId && b.boardId && b.boardId !== expect.boardId) || b.seq < expect.seq);
  for (let attempt = 0; stale(fetched); attempt++) {
    if (attempt >= 5) {
      // The server is the authority: if it keeps answering this board, show it.
      console.warn("openplace: the server keeps sending another board than expected");
      break;
    }
    await new Promise((r) => setTimeout(r, 100 * 2 ** attempt));
    fetched = await api.board({ fresh: true });
  }
  const { data, seq, boardId } = fetched;
  board.load(data);
  tmpl.recount();
  confirmUpTo(seq);
  return { seq, boardId };
}

async function fetchCanvas() {
  for (let attempt = 0; ; attempt++) {
    try {
      return await api.canvas();
    } catch (err) {
      const delay = Math.min(10_000, 500 * 2 ** attempt);
      $("loading-text").textContent = "Can't reach the server — retrying…";
      console.warn("openplace: /api/canvas failed", err);
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

function toggleHistory() {
  if (inHistory()) hist.exit();
  else hist.enter(stream.lastSeq);
}

function bindControls() {
  $("zoom-in").addEventListener("click", () => view.zoomBy(1.6));
  $("zoom-out").addEventListener("click", () => view.zoomBy(1 / 1.6));
  $("zoom-fit").addEventListener("click", () =>
    view.setView(board.width / 2, board.height / 2, view.fitZoom()),
  );
  $("inspect").addEventListener("click", () => setInspect(!inspectMode));
  $("info-close").addEventListener("click", closeInfo);
  $("info-share").addEventListener("click", async () => {
    const m = view.marked;
    if (!m) return;
    const url = new URL(location.href);
    url.hash = `x=${m.x}&y=${m.y}&z=${Math.max(8, Math.round(view.z))}`;
    if (inHistory()) url.hash += `&seq=${hist.seq}`;
    const template = tmpl.hashPart();
    if (template) url.hash += `&${template}`;
    try {
      await navigator.clipboard.writeText(url.href);
      toast("Link copied");
    } catch {
      history.replaceState(null, "", url.hash);
      toast("Link is in the address bar");
    }
  });
  window.addEventListener("hashchange", hashChanged);
  $("history-open").addEventListener("click", () => toggleHistory());
  window.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
    const k = e.key;
    if (k === "h" || k === "H") toggleHistory();
    else if (inHistory() && k === " ") {
      if (e.target instanceof HTMLButtonElement || e.target instanceof HTMLAnchorElement) return;
      if (hist.playing) hist.pause();
      else hist.play();
    }
    else if (inHistory() && (k === "," || k === ".")) hist.step(k === "," ? -1 : 1);
    else if (/^[0-9]$/.test(k)) selectColor((Number(k) + 9) % 10);
    else if (k === "+" || k === "=") view.zoomBy(1.6);
    else if (k === "-" || k === "_") view.zoomBy(1 / 1.6);
    else if (k === "i" || k === "I") setInspect(!inspectMode);
    else if (k === "t" || k === "T") tmpl.toggle();
    else if (k === "Escape") {
      if (!$("template").hidden) tmpl.setOpen(false);
      closeInfo();
      setInspect(false);
    } else if (k.startsWith("Arrow")) {
      const step = 80;
      const d = { ArrowLeft: [step, 0], ArrowRight: [-step, 0], ArrowUp: [0, step], ArrowDown: [0, -step] }[k];
      view.panBy(d[0], d[1]);
    } else return;
    e.preventDefault();
  });
}

async function main() {
  canvasInfo = await fetchCanvas();
  const { width, height, palette } = canvasInfo;
  board = new Board(width, height, palette);
  buildPalette(palette);
  view = new View($("board"), board, {
    onClick: (x, y) => {
      renderCoords({ x, y }); // touch has no hover: show the tapped pixel
      place(x, y);
    },
    onInspect: (x, y) => {
      renderCoords({ x, y });
      inspect(x, y);
    },
    onHover: renderCoords,
    onMove: viewMoved,
  });
  if (!applyHash()) view.setView(width / 2, height / 2, view.fitZoom(), true);
  tmpl = new Templates({
    view,
    board,
    el: $,
    toast,
    selected: () => view.marked,
    onChange: scheduleHash,
  });
  tmpl.fromHash(new URLSearchParams(location.hash.slice(1)));
  openAtSeq = parseHash().seq;
  hist = new HistoryMode({
    width,
    height,
    palette,
    view,
    liveBoard: board,
    hooks: {
      getHead: () => stream.lastSeq,
      onChange: scheduleHash,
      onEnter: () => {
        setInspect(false);
        updatePreview();
        scheduleHash();
        if (!$("info").hidden && view.marked) inspect(view.marked.x, view.marked.y);
      },
      onExit: () => {
        updatePreview();
        scheduleHash();
        if (!$("info").hidden && view.marked) inspect(view.marked.x, view.marked.y);
      },
    },
  });
  renderZoom();
  bindControls();
  updatePreview();
  fetchPolicy(); // the stream tells changes; this covers the page loading before it connects
  loadModerator();

  let everLive = false;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  stream = new LiveStream({
    url: (since, boardId) =>
      `${scheme}//${location.host}/ws?since=${since}` +
      (boardId ? `&board=${encodeURIComponent(boardId)}` : ""),
    loadBoard: async (expect) => {
      const loaded = await loadBoard(expect);
      document.body.classList.remove("loading");
      if (expect) hist.forget(); // another board (restored): its past is another one too
      if (openAtSeq !== null) {
        // Opened with #seq=N: history mode at N, now that the head is known.
        const seq = openAtSeq;
        openAtSeq = null;
        setTimeout(() => hist.enter(seq), 0);
      }
      return loaded;
    },
    apply: (index, color) => {
      const before = board.colors[index];
      board.set(index, color);
      if (before !== undefined) tmpl.placed(index, before, board.colors[index]);
    },
    onSeq: (seq) => {
      confirmUpTo(seq);
      beat();
      hist.headChanged();
    },
    onStatus: (state, detail) => {
      // Back after a break: the policy may have changed meanwhile.
      if (state === "live" && everLive) fetchPolicy();
      everLive ||= state === "live";
      renderStatus(state, detail);
    },
    onOnline: renderOnline,
    onPolicy: applyPolicy,
  });
  stream.start();

  setInterval(renderCooldown, 250);
  api
    .me()
    .then((me) => {
      if (me.next_at) setCooldown(api.msUntil(me.next_at));
    })
    .catch((err) => console.warn("openplace: /api/me failed", err));

  if (!localStorage.getItem(HINT_KEY)) {
    const touch = matchMedia("(pointer: coarse)").matches;
    setTimeout(() => {
      if (toasted || inHistory() || openAtSeq !== null) return;
      toast(
        touch
          ? "Tap to place · drag to move · pinch to zoom · long-press to inspect"
          : "Click to place · drag to move · scroll to zoom · right-click to inspect",
        "info",
        6000,
      );
    }, 400);
    try {
      localStorage.setItem(HINT_KEY, "1");
    } catch {
      /* ignore */
    }
  }

  // A tiny read-only hook for tests and the curious.
  window.openplace = Object.freeze({
    get lastSeq() {
      return stream.lastSeq;
    },
    get connected() {
      return stream.connected;
    },
    get status() {
      return stream.state;
    },
    get view() {
      return { x: view.cx, y: view.cy, z: view.z };
    },
    // The colour shown (in history mode, at the moment shown); livePixel: now.
    getPixel: (x, y) => (board.contains(x, y) ? view.board.get(x, y) : null),
    livePixel: (x, y) => (board.contains(x, y) ? board.get(x, y) : null),
    get history() {
      return {
        active: inHistory(),
        seq: hist.seq,
        target: hist.target,
        loading: hist.loading,
        playing: hist.playing,
        heatmapSeq: hist.heatOn ? hist.heatShown : null,
      };
    },
    clientOf: (x, y) => view.clientOf(x, y),
    // Frames that drew the board: the whole view, or only pixels that changed.
    get draws() {
      return { ...view.draws };
    },
    get template() {
      return {
        loaded: tmpl.loaded,
        loading: tmpl.loading,
        visible: tmpl.visible,
        x: tmpl.x,
        y: tmpl.y,
        w: tmpl.w,
        h: tmpl.h,
        opacity: tmpl.opacity,
        url: tmpl.url,
        differs: tmpl.differs,
        error: tmpl.error,
      };
    },
    get policy() {
      return { frozen: policy.frozen, protected: policy.protected.map((a) => ({ ...a })) };
    },
  });
}

// Keep iOS Safari from zooming the whole page on a pinch.
document.addEventListener("gesturestart", (e) => e.preventDefault());

takeModeratorToken();
main();

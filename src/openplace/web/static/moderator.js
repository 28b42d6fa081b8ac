// The moderator's tools, loaded by app.js only on a page holding a moderator token
// (localStorage "openplace.moderator", set by opening /#moderator=<token>): a badge
// with who is signed in, and in the pixel panel, banning the pixel's user and rolling
// back what they placed in the last hour.

import { ApiError } from "./net.js";

let current = null; // the tools shown, replaced by the next start() or gone at sign-out

/** An admin API request with the moderator's token: the JSON answer, or an ApiError. */
async function call(token, method, path, body) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  let data = null;
  try {
    data = await res.json();
  } catch {
    data = null;
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function shieldIcon() {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", "M12 3l8 3v6c0 4.5-3.4 8-8 9-4.6-1-8-4.5-8-9V6z");
  svg.append(path);
  return svg;
}

/**
 * Check the token (GET /api/admin/me) and show the tools. A token the server refuses
 * is forgotten. Resolves to `{showUser(id)}`, for the pixel panel to say whose pixel
 * it shows, or null when there are no tools.
 */
export async function start({ key, toast }) {
  if (current) current.stop();
  const token = localStorage.getItem(key);
  if (!token) return null;
  let me;
  try {
    me = await call(token, "GET", "/api/admin/me");
  } catch (err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
      localStorage.removeItem(key);
    } else {
      console.warn("openplace: /api/admin/me failed", err);
    }
    return null;
  }
  current = new ModeratorTools({ key, token, name: me.name, toast });
  return current;
}

class ModeratorTools {
  constructor({ key, token, name, toast }) {
    this.key = key;
    this.token = token;
    this.toast = toast;
    this.user = null; // the user whose pixel the panel shows

    const signOut = el("button", { type: "button", className: "text-btn", textContent: "sign out" });
    signOut.addEventListener("click", () => this.signOut());
    this.badge = el(
      "div",
      { id: "moderator", className: "card mod-badge", title: "You are signed in as a moderator" },
      shieldIcon(),
      el("span", {}, el("span", { className: "mod-label" }, "Moderator: "), el("strong", {}, name)),
      signOut,
    );
    document.querySelector(".topbar").append(this.badge);

    const button = (id, className, text) => el("button", { type: "button", id, className }, text);
    this.banBtn = button("mod-ban", "mod-btn danger", "Ban user");
    this.rollbackBtn = button("mod-rollback", "mod-btn", "Roll back last hour");
    this.result = el("p", { id: "mod-result", className: "mod-result" });
    this.result.setAttribute("role", "status");
    this.banBtn.addEventListener("click", () => this.ban());
    this.rollbackBtn.addEventListener("click", () => this.rollback());
    this.actions = el(
      "div",
      { id: "mod-actions", className: "mod-actions", hidden: true },
      el("div", { className: "mod-buttons" }, this.banBtn, this.rollbackBtn),
      this.result,
    );
    document.getElementById("info").insertBefore(this.actions, document.getElementById("info-share"));
  }

  /** The pixel panel now shows a pixel of `userId` (null: nobody's, or not known yet). */
  showUser(userId) {
    if (userId !== this.user) this.say("");
    this.user = userId;
    // A moderator's own changes (rollbacks, fills) are placements by "mod:<name>".
    this.actions.hidden = !userId || userId.startsWith("mod:");
  }

  say(text, kind = "ok") {
    this.result.textContent = text;
    this.result.dataset.kind = kind;
  }

  async ban() {
    const user = this.user;
    if (!user) return;
    const answer = prompt(`Ban ${user} from placing pixels.\nReason (they will see it):`, "");
    if (answer === null) return;
    const reason = answer.trim();
    if (!reason) {
      this.say("A ban needs a reason", "error");
      return;
    }
    if (!confirm(`Ban ${user}?\nReason: ${reason}`)) return;
    const done = await this.act("POST", "/api/admin/ban", { user, reason });
    if (!done) return;
    const until = done.ban && done.ban.expires_at;
    this.say(`banned: ${user}` + (until ? ` until ${new Date(until).toLocaleString()}` : ""));
  }

  async rollback() {
    const user = this.user;
    if (!user) return;
    if (!confirm(`Roll back everything ${user} placed in the last hour?`)) return;
    const done = await this.act("POST", "/api/admin/rollback", { users: [user], since: "1h" });
    if (!done) return;
    const n = done.pixels_changed;
    let text = `rolled back: ${n} ${n === 1 ? "pixel" : "pixels"}`;
    if (done.pixels_left) text += `, ${done.pixels_left} left (placed on meanwhile)`;
    this.say(text);
  }

  /** Send an admin action with the buttons off; its answer, or null (the error is shown). */
  async act(method, path, body) {
    this.say("Working…");
    this.banBtn.disabled = this.rollbackBtn.disabled = true;
    try {
      return await call(this.token, method, path, body);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        this.signOut("Your moderator token is no longer valid: signed out");
      } else if (err instanceof ApiError) {
        this.say(`Failed: ${err.message}`, "error");
      } else {
        this.say("Failed: couldn't reach the server", "error");
      }
      return null;
    } finally {
      this.banBtn.disabled = this.rollbackBtn.disabled = false;
    }
  }

  signOut(message = "Signed out as moderator") {
    localStorage.removeItem(this.key);
    this.stop();
    this.toast(message);
  }

  /** Take the tools off the page; showUser does nothing from now on. */
  stop() {
    this.badge.remove();
    this.actions.remove();
    if (current === this) current = null;
  }
}

// The dashboard: a shell (header, navigation, live indicator) and five pages, fed by one
// server-sent-events stream of the plane's state (/sage/v1/timeline/stream: a tick a second
// with the new chart points and the models, the queue and the policy) plus a few JSON calls.

import { auth, events, onUnauthorized } from "./api.js";
import { h, setText } from "./dom.js";
import * as overview from "./pages/overview.js";
import * as models from "./pages/models.js";
import * as queue from "./pages/queue.js";
import * as jobs from "./pages/jobs.js";
import * as playground from "./pages/playground.js";

const PAGES = [overview, models, queue, jobs, playground];
const HISTORY = 300;

// What the pages share: the timeline's points (the last five minutes), the latest state, and
// subscribers called on each tick.
export class Store {
  constructor() {
    this.points = [];
    this.state = null;
    this.listeners = new Set();
    this.lastTick = 0;
  }

  subscribe(listener) {
    this.listeners.add(listener);
    if (this.state) listener(this);
    return () => this.listeners.delete(listener);
  }

  apply(tick) {
    const last = this.points.length ? this.points[this.points.length - 1].seq : 0;
    if (tick.points.length && tick.points[0].seq <= last) this.points = [];  // a daemon restarted: start over
    this.points.push(...tick.points);
    if (this.points.length > HISTORY) this.points.splice(0, this.points.length - HISTORY);
    if (tick.state && Object.keys(tick.state).length) this.state = tick.state;
    this.lastTick = Date.now();
    for (const listener of this.listeners) {
      try {
        listener(this);
      } catch (error) {
        console.error(error);
      }
    }
  }
}

export function mount(root) {
  const store = new Store();
  const live = h("span", { class: "live", id: "live", dataset: { state: "connecting" } }, h("span", { class: "dot" }), h("span", { class: "live-text", text: "connecting" }));
  const nav = h("nav", { class: "tabs" });
  const main = h("main", { id: "page" });
  const banner = h("p", { class: "banner error", id: "banner", hidden: true, role: "alert" });
  const logout = auth.key ? h("button", { class: "link", id: "logout", text: "sign out", onclick: () => { auth.clear(); location.reload(); } }) : null;
  root.replaceChildren(
    h("header", { class: "top" }, h("h1", null, h("a", { href: "#overview", text: "SAGE daemon" })), nav, h("div", { class: "top-right" }, live, logout)),
    banner, main,
  );

  onUnauthorized(() => {
    auth.clear();
    location.reload();  // with keys, the daemon serves the login form again
  });

  const ctx = {
    store,
    notify(error) {
      setText(banner, error ? String(error.message || error) : "");
      banner.hidden = !error;
      if (error) setTimeout(() => { banner.hidden = true; }, 8000);
    },
  };
  const pages = new Map();
  for (const page of PAGES) {
    nav.append(h("a", { href: `#${page.id}`, dataset: { page: page.id }, text: page.title }));
  }

  let current = null;
  function route() {
    const id = (location.hash || "#overview").slice(1).split("/")[0];
    const page = PAGES.find((p) => p.id === id) || overview;
    if (!pages.has(page.id)) pages.set(page.id, page.create(ctx));
    const view = pages.get(page.id);
    if (current === view) return;
    current?.hide?.();
    main.replaceChildren(view.el);
    main.dataset.page = page.id;
    for (const link of nav.children) link.classList.toggle("active", link.dataset.page === page.id);
    current = view;
    view.show?.();
    document.title = `${page.title} · SAGE daemon`;
  }
  window.addEventListener("hashchange", route);
  route();

  follow(store, live);
  setInterval(() => {
    if (store.lastTick && Date.now() - store.lastTick > 3500) setLive(live, "stale", "no data");
  }, 1000);
}

function setLive(el, state, text) {
  el.dataset.state = state;
  setText(el.querySelector(".live-text"), text);
}

// The timeline stream, reconnected after a failure (the daemon restarting).
async function follow(store, live) {
  let delay = 1000;
  for (;;) {
    try {
      for await (const { event, data } of events("/sage/v1/timeline/stream")) {
        if (event !== "tick") continue;
        store.apply(data);
        setLive(live, "live", "live");
        delay = 1000;
      }
    } catch (error) {
      console.warn("timeline stream:", error);
    }
    setLive(live, "offline", "offline");
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 10000);
  }
}


if (document.body.dataset.mount === "app") mount(document.body);

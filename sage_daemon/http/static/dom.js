// DOM helpers. Every string from the daemon (model names, model output, job names and logs) goes
// into the page as text: h() and setText() use text nodes and textContent, never innerHTML.

export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = String(value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "value") el.value = value;
    else if (key === "style") throw new Error("no inline styles: the page's CSP forbids them");
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function setText(el, text) {
  const value = text === null || text === undefined ? "" : String(text);
  if (el.textContent !== value) el.textContent = value;
}

export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

// A table whose rows are kept by key and whose cells change only when their text does (a table
// redrawn every second would lose the hover and the buttons under the pointer). A cell is a
// string, a Node, or a function that updates its <td> in place.
export class KeyedTable {
  constructor(columns, { key, cells, actions, empty = "nothing here", onRow } = {}) {
    this.columns = columns;
    this.key = key;
    this.cells = cells;
    this.actions = actions;
    this.onRow = onRow;
    this.rows = new Map();
    this.body = h("tbody");
    this.emptyRow = h("tr", { class: "empty" }, h("td", { colspan: columns.length + (actions ? 1 : 0), text: empty }));
    this.el = h("table", { class: "table" },
      h("thead", null, h("tr", null, columns.map((c) => h("th", { text: c })), actions ? h("th", { text: "" }) : null)),
      this.body);
    this.body.append(this.emptyRow);
  }

  update(items) {
    const seen = new Set();
    let previous = null;
    for (const item of items) {
      const id = String(this.key(item));
      seen.add(id);
      let row = this.rows.get(id);
      if (!row) {
        row = { tr: h("tr", { dataset: { key: id } }), tds: [], extra: null };
        row.tds = this.columns.map(() => h("td"));
        row.tr.append(...row.tds);
        if (this.actions) {
          row.extra = h("td", { class: "actions" });
          row.tr.append(row.extra);
        }
        if (this.onRow) {
          row.tr.classList.add("clickable");
          row.tr.addEventListener("click", (event) => {
            if (!(event.target instanceof HTMLButtonElement)) this.onRow(row.item);
          });
        }
        this.rows.set(id, row);
      }
      row.item = item;
      const values = this.cells(item);
      values.forEach((value, i) => {
        const td = row.tds[i];
        if (typeof value === "function") value(td);
        else if (value instanceof Node) {
          if (td.firstChild !== value) td.replaceChildren(value);
        } else setText(td, value);
      });
      if (this.actions) this.actions(item, row.extra);
      const wanted = previous ? previous.nextSibling : this.body.firstChild;
      if (wanted !== row.tr) this.body.insertBefore(row.tr, wanted);
      previous = row.tr;
    }
    for (const [id, row] of this.rows) {
      if (!seen.has(id)) {
        row.tr.remove();
        this.rows.delete(id);
      }
    }
    if (items.length === 0) {
      if (!this.emptyRow.isConnected) this.body.append(this.emptyRow);
    } else this.emptyRow.remove();
  }
}

// ---------------------------------------------------------------------------------- formatting

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

export function ms(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  return seconds < 1 ? `${Math.round(seconds * 1000)} ms` : `${seconds.toFixed(2)} s`;
}

export function rate(value, digits = 1) {
  if (value === null || value === undefined) return "—";
  return value >= 100 ? Math.round(value).toString() : value.toFixed(digits);
}

export function when(epochSeconds) {
  if (!epochSeconds) return "—";
  const date = new Date(epochSeconds * 1000);
  const today = new Date();
  return date.toDateString() === today.toDateString() ? date.toLocaleTimeString() : date.toLocaleString();
}

export function badge(text, kind = text) {
  return h("span", { class: "badge", dataset: { kind: String(kind) }, text });
}

// A <progress> in `td`, made once and updated in place; `value` null = indeterminate.
export function progressCell(value, label) {
  return (td) => {
    let bar = td.querySelector("progress");
    let text = td.querySelector(".progress-label");
    if (!bar) {
      bar = h("progress", { max: 100 });
      text = h("span", { class: "progress-label" });
      td.replaceChildren(bar, text);
      td.classList.add("progress-cell");
    }
    if (value === null || value === undefined) bar.removeAttribute("value");
    else bar.value = value;
    setText(text, label ?? (value === null || value === undefined ? "" : `${Math.round(value)}%`));
  };
}

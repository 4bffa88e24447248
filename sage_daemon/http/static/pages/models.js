// Models: every configured model, live (kind, backend, device, state, slots, keep-alive left,
// memory, why it was placed where it is), with load and unload.

import { events, post } from "../api.js";
import { KeyedTable, badge, bytes, duration, h, progressCell } from "../dom.js";

export const id = "models";
export const title = "Models";

export function create(ctx) {
  const pending = new Set();

  async function act(model, action, button) {
    pending.add(model.id);
    button.disabled = true;
    try {
      await post(`/sage/v1/models/${encodeURIComponent(model.id)}/${action}`);
    } catch (error) {
      ctx.notify(error);
    } finally {
      pending.delete(model.id);
      button.disabled = false;
    }
  }

  const table = new KeyedTable(
    ["Model", "Kind", "Backend", "Device", "State", "Slots busy", "Keep-alive left", "Memory", "Placement"],
    {
      key: (m) => m.id,
      empty: "no models configured",
      cells: (m) => [
        m.id,
        m.kind,
        m.backend,
        m.device,
        badgeCell(m.state, m.restart_in_s != null ? `${m.state} (restart in ${duration(m.restart_in_s)})` : m.state),
        m.slots_total ? progressCell((100 * m.slots_busy) / m.slots_total, `${m.slots_busy}/${m.slots_total}`) : progressCell(0, "—"),
        m.keep_alive_left_s === null || m.keep_alive_left_s === undefined ? (m.state === "ready" ? "forever" : "—") : duration(m.keep_alive_left_s),
        bytes(m.memory_bytes),
        m.reason || "—",
      ],
      actions: (m, td) => {
        if (!td.firstChild) {
          const load = h("button", { class: "small", dataset: { action: "load" }, text: "Load" });
          const unload = h("button", { class: "small", dataset: { action: "unload" }, text: "Unload" });
          load.addEventListener("click", () => act(td.model, "load", load));
          unload.addEventListener("click", () => act(td.model, "unload", unload));
          td.append(load, " ", unload);
        }
        td.model = m;
        const loaded = m.state === "ready" || m.state === "loading";
        const [load, unload] = td.querySelectorAll("button");
        if (!pending.has(m.id)) {
          load.disabled = loaded;
          unload.disabled = !loaded;
        }
      },
    },
  );

  // Pull a model from the Hugging Face Hub (the daemon downloads it, resumably), then serve it
  // under a name: the same models.pull and models.add the `sagectl pull` / `models add` use.
  const refInput = h("input", { type: "text", id: "pull-ref", placeholder: "hf:OWNER/REPO:Q4_K_M", size: 40, autocomplete: "off" });
  const nameInput = h("input", { type: "text", id: "pull-name", placeholder: "name (optional)", size: 20, autocomplete: "off" });
  const pullButton = h("button", { id: "pull-start", text: "Pull" });
  const bar = h("progress", { id: "pull-progress", max: 100, value: 0 });
  const status = h("span", { class: "muted", id: "pull-status" });
  async function startPull() {
    const ref = refInput.value.trim();
    if (!ref) return;
    pullButton.disabled = true;
    bar.value = 0;
    status.textContent = "resolving…";
    try {
      let result = null;
      for await (const { event, data } of events("/sage/v1/models/pull", { method: "POST", body: { ref } })) {
        if (event === "progress") {
          if (data.total_bytes) bar.value = (100 * data.completed_bytes) / data.total_bytes;
          status.textContent = data.phase === "downloading"
            ? `${bytes(data.completed_bytes)} of ${bytes(data.total_bytes)}, ${bytes(data.bytes_per_s)}/s${data.eta_s != null ? `, ${duration(data.eta_s)} left` : ""}`
            : `${data.phase} ${data.file || ""}`;
        } else if (event === "done") {
          result = data;
        } else if (event === "error") {
          throw new Error((data.error && data.error.message) || "the pull failed");
        }
      }
      if (!result) throw new Error("the pull ended without a result");
      bar.value = 100;
      const name = nameInput.value.trim() || result.name;
      await post("/sage/v1/models/add", { name, source: result.path });
      status.textContent = `pulled ${bytes(result.size_bytes)}; serving it as ${name}`;
    } catch (error) {
      status.textContent = "";
      ctx.notify(error);
    } finally {
      pullButton.disabled = false;
    }
  }
  pullButton.addEventListener("click", startPull);
  const pull = h("section", { class: "card", id: "model-pull" },
    h("h2", { text: "Pull a model" }),
    h("p", { class: "muted", text: "From the Hugging Face Hub: a GGUF repo (pick the quant with :Q4_K_M), a .gguf file in a repo, or a sentence-transformers repo. The download resumes if it is interrupted." }),
    h("div", { class: "row" }, refInput, " ", nameInput, " ", pullButton),
    h("div", { class: "row" }, bar, " ", status));

  const el = h("section", { class: "page models" }, h("div", { class: "card wide" }, h("h2", { text: "Models" }), table.el), pull);

  ctx.store.subscribe((store) => table.update(store.state.models));
  return { el };
}

function badgeCell(kind, text) {
  return (td) => {
    let el = td.firstChild;
    if (!el) {
      el = badge(text, kind);
      td.append(el);
    }
    if (el.textContent !== text) el.textContent = text;
    el.dataset.kind = kind;
  };
}

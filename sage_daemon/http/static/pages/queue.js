// Queue and scheduling: the waiting requests (position, class, priority, estimated wait) and the
// last five minutes of the plane: who held the CPU cores, batch sizes, latency percentiles, the queue.

import { TimeChart } from "../charts.js";
import { KeyedTable, duration, h, ms, replace, setText } from "../dom.js";
import { policySelect } from "./shared.js";

export const id = "queue";
export const title = "Queue & scheduling";

const percent = (v) => (v === null || v === undefined ? "—" : `${Math.round(v * 100)}%`);
const latency = (v) => ms(v);
const count = (v) => (v === null || v === undefined ? "—" : `${+v.toFixed(1)}`);

export function create(ctx) {
  const policy = policySelect(ctx);
  const summary = h("ul", { class: "plain inline", id: "queue-summary" });
  const total = h("span", { class: "muted", id: "queue-total" });
  const table = new KeyedTable(["#", "Request", "Model", "Class", "Priority", "Waited", "Estimated wait"], {
    key: (e) => e.request_id,
    empty: "no request is waiting",
    cells: (e) => [e.position + 1, e.request_id, e.model, e.kind, e.priority, duration(e.waited_s), e.estimated_wait_s == null ? "—" : duration(e.estimated_wait_s)],
  });
  const charts = [
    new TimeChart({
      title: "CPU cores held (share of each second)", format: percent, max: 1,
      series: [{ label: "chat engines", key: "gate_llm", fill: true }, { label: "embedding engines", key: "gate_embedding", fill: true }],
    }),
    new TimeChart({
      title: "Batch sizes",
      format: count,
      series: [{ label: "decode batch (running generations)", key: "running_llm" }, { label: "embedding batch (mean inputs)", key: "embedding_batch" }],
    }),
    new TimeChart({
      title: "Latency (last 10 s)", format: latency,
      series: [
        { label: "TTFT p50", key: "ttft_p50" }, { label: "TTFT p95", key: "ttft_p95" },
        { label: "embedding p50", key: "embedding_p50" }, { label: "embedding p95", key: "embedding_p95" },
      ],
    }),
    new TimeChart({ title: "Waiting requests", format: count, series: [{ label: "waiting", key: "waiting", fill: true }] }),
  ];
  const gateNote = h("p", { class: "muted", id: "gate-note" });

  const el = h("section", { class: "page queue" },
    h("div", { class: "card wide" },
      h("div", { class: "row" }, h("h2", { text: "Waiting requests" }), total, h("span", { class: "spacer" }), h("label", { for: policy.select.id, text: "Policy " }), policy.el),
      summary, table.el),
    h("div", { class: "charts" }, charts.map((c) => c.el)),
    gateNote);

  ctx.store.subscribe((store) => {
    const state = store.state;
    const q = state.queue;
    policy.set(state.policy, state.policies);
    setText(total, q.total > q.entries.length ? `${q.total} waiting (the first ${q.entries.length} shown)` : `${q.total} waiting`);
    table.update(q.entries);
    const point = store.points[store.points.length - 1] || { waiting_by_model: {}, running_by_model: {} };
    const names = new Set([...Object.keys(point.waiting_by_model), ...Object.keys(point.running_by_model)]);
    const items = [...names].sort().map((m) => h("li", null, h("span", { class: "model-name", text: m }), `: ${point.running_by_model[m] || 0} running, ${point.waiting_by_model[m] || 0} waiting`));
    const signature = items.map((i) => i.textContent).join("|");
    if (summary.dataset.signature !== signature) {
      summary.dataset.signature = signature;
      replace(summary, items);
    }
    setText(gateNote, state.gate?.kind === "interleave"
      ? "Chat and embedding engines take the cores in turn, a step at a time (control/gate.py)."
      : "No shared CPU gate (cpu_sharing = \"parallel\", or the engines are elsewhere).");
    if (el.isConnected) for (const chart of charts) chart.update(store.points);
  });

  return {
    el,
    show() {
      for (const chart of charts) chart.update(ctx.store.points);
    },
  };
}

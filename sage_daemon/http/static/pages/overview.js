// Overview: the daemon, its host, the policy (switchable), throughput and errors, live.

import { api } from "../api.js";
import { TimeChart } from "../charts.js";
import { bytes, duration, h, rate, replace, setText } from "../dom.js";
import { policySelect } from "./shared.js";

export const id = "overview";
export const title = "Overview";

export function create(ctx) {
  const fields = {};
  const field = (name, label) => {
    fields[name] = h("dd", { dataset: { field: name }, text: "—" });
    return [h("dt", { text: label }), fields[name]];
  };
  const policy = policySelect(ctx);
  const gpus = h("ul", { class: "plain", id: "host-gpus" });
  const modelList = h("ul", { class: "plain model-summary", id: "overview-models" });
  const throughput = new TimeChart({
    title: "Throughput (per second)",
    series: [
      { label: "requests/s", key: "requests_s" },
      { label: "tokens/s", key: "tokens_s" },
      { label: "embedding texts/s", key: "embedding_texts_s" },
      { label: "errors/s", key: "errors_s", color: "#d2384b" },
    ],
  });

  const el = h("section", { class: "page overview" },
    h("div", { class: "grid" },
      h("article", { class: "card" }, h("h2", { text: "Daemon" }),
        h("dl", null, field("state", "State"), field("version", "Version"), field("uptime", "Uptime"), field("in_flight", "In flight"), field("http", "HTTP"), field("socket", "RPC socket"))),
      h("article", { class: "card" }, h("h2", { text: "Host" }),
        h("dl", null, field("hostname", "Name"), field("cpu", "CPU"), field("cores", "Cores"), field("memory", "Memory"), field("wsl2", "WSL2"), field("vllm", "vLLM")),
        h("h3", { text: "GPUs" }), gpus),
      h("article", { class: "card" }, h("h2", { text: "Scheduling" }),
        h("label", { for: policy.select.id, text: "Policy" }), policy.el,
        h("dl", null, field("requests_s", "Requests/s"), field("tokens_s", "Tokens/s"), field("texts_s", "Embedding texts/s"), field("errors", "Errors"))),
      h("article", { class: "card" }, h("h2", { text: "Models" }), modelList, h("p", null, h("a", { href: "#models", text: "all models →" })))),
    throughput.el);

  async function load() {
    try {
      const data = await api("/sage/v1/overview");
      const { status, node, version } = data;
      setText(fields.version, `${version.daemon_version} (protocol ${version.protocol}, Python ${version.python})`);
      setText(fields.http, status.http_url);
      setText(fields.socket, status.socket);
      setText(fields.hostname, node.hostname);
      setText(fields.cpu, node.cpu_model || "—");
      setText(fields.cores, node.cpu_count);
      setText(fields.memory, `${bytes(node.memory_available_bytes)} free of ${bytes(node.memory_total_bytes)}`);
      setText(fields.wsl2, node.is_wsl2 ? "yes" : "no");
      setText(fields.vllm, node.vllm_available ? "available" : "not installed");
      replace(gpus, node.gpus.length
        ? node.gpus.map((g) => h("li", { text: `${g.index}: ${g.name} — ${bytes(g.memory_free_bytes)} free of ${bytes(g.memory_total_bytes)}` }))
        : h("li", { class: "muted", text: `none (${node.gpu_source})` }));
      policy.set(data.policy, data.policies);
    } catch (error) {
      ctx.notify(error);
    }
  }

  ctx.store.subscribe((store) => {
    const state = store.state;
    if (!state) return;
    setText(fields.state, state.daemon.state);
    fields.state.dataset.state = state.daemon.state;
    setText(fields.uptime, duration(state.daemon.uptime_s));
    setText(fields.in_flight, state.daemon.in_flight);
    policy.set(state.policy, state.policies);
    const point = store.points[store.points.length - 1];
    if (point) {
      setText(fields.requests_s, rate(point.requests_s));
      setText(fields.tokens_s, rate(point.tokens_s));
      setText(fields.texts_s, rate(point.embedding_texts_s));
    }
    const totals = state.totals || {};
    setText(fields.errors, `${totals.errors ?? 0} of ${totals.requests ?? 0} requests`);
    const items = state.models.map((m) => h("li", { dataset: { model: m.id } },
      h("span", { class: "model-name", text: m.id }), " ",
      h("span", { class: "badge", dataset: { kind: m.state }, text: m.state }), " ",
      h("span", { class: "muted", text: `${m.kind} · ${m.backend} · ${m.device}` })));
    const signature = JSON.stringify(state.models.map((m) => [m.id, m.state, m.kind, m.backend, m.device]));
    if (modelList.dataset.signature !== signature) {
      modelList.dataset.signature = signature;
      replace(modelList, items.length ? items : h("li", { class: "muted", text: "no models configured" }));
    }
    if (el.isConnected) throughput.update(store.points);
  });

  return {
    el,
    show() {
      load();
      throughput.update(ctx.store.points);
    },
  };
}


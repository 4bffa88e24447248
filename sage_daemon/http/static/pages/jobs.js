// Jobs: the list with state and progress, a job's stages and its logs following live, cancel and
// retry, a pipeline to submit, and the collections with their counts.

import { api, events, post } from "../api.js";
import { KeyedTable, badge, bytes, h, progressCell, replace, setText, when } from "../dom.js";

export const id = "jobs";
export const title = "Jobs";

const TERMINAL = new Set(["succeeded", "failed", "cancelled", "interrupted"]);
const EXAMPLE = `name = "embed-notes"

[[stages]]
op = "from_items"
items = [{ id = "a", text = "The daemon serves chat and embeddings." }, { id = "b", text = "Jobs run pipelines." }]

[[stages]]
op = "embed"
model = "minilm"

[[stages]]
op = "collect"
`;

// Per stage: done = 100; else the share of what the stage before it produced that this one has
// taken in, once that stage is done; else unknown (null: an indeterminate bar).
export function stageProgress(detail) {
  const state = detail.job.state;
  return detail.stages.map((stage, i) => {
    if (stage.done || state === "succeeded") return 100;
    const before = detail.stages[i - 1];
    if (before && before.done && before.items_out > 0) return Math.min(99, (100 * stage.items_in) / before.items_out);
    return TERMINAL.has(state) ? 0 : null;
  });
}

export function jobProgress(detail) {
  if (detail.job.state === "succeeded") return 100;
  const stages = stageProgress(detail);
  if (!stages.length) return 0;
  return Math.floor(stages.reduce((sum, v) => sum + (v ?? 0), 0) / stages.length);
}

export function create(ctx) {
  const progress = new Map();  // job id → percent, from the watched job and the list's refreshes
  let selected = null;
  let watching = null;  // AbortController of the selected job's streams

  const jobs = new KeyedTable(["ID", "Name", "State", "Attempt", "Created", "Progress", "Error"], {
    key: (j) => j.id,
    empty: "no jobs yet",
    onRow: (j) => select(j.id),
    cells: (j) => [
      j.id, j.name, stateBadge(j.state), j.attempt, when(j.created_at),
      progressCell(progress.get(j.id) ?? (j.state === "succeeded" ? 100 : TERMINAL.has(j.state) ? 0 : null)),
      j.error || "",
    ],
    actions: (j, td) => actionButtons(j, td),
  });

  const collections = new KeyedTable(["Name", "Items", "Dimensions", "Model", "Size", "Updated"], {
    key: (c) => c.name,
    empty: "no collections yet (an index or to_collection stage makes one)",
    cells: (c) => [c.name, c.count, c.dimensions, c.model, bytes(c.size_bytes), when(c.updated_at)],
  });

  const toml = h("textarea", { id: "job-toml", rows: 12, spellcheck: "false", value: EXAMPLE });
  const name = h("input", { id: "job-name", placeholder: "name (optional: the pipeline's own)" });
  const submitted = h("span", { class: "muted", id: "job-submitted" });
  const form = h("form", { class: "card", id: "job-form" },
    h("h2", { text: "Submit a pipeline" }),
    h("label", { for: "job-toml", text: "Pipeline (TOML, as for sagectl job submit; relative paths resolve in the daemon's working folder)" }),
    toml, h("div", { class: "row" }, name, h("button", { type: "submit", text: "Submit" }), submitted));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const job = await post("/sage/v1/jobs", { toml: toml.value, name: name.value.trim() });
      setText(submitted, `job ${job.id} submitted`);
      await refresh();
      select(job.id);
    } catch (error) {
      ctx.notify(error);
    }
  });

  const detailTitle = h("h2", { text: "Job" });
  const detailState = h("p", { id: "job-state" });
  const overall = h("progress", { max: 100, id: "job-progress" });
  const overallLabel = h("span", { class: "progress-label", id: "job-progress-label" });
  const stages = new KeyedTable(["#", "Stage", "Operators", "Kind", "Node", "In", "Out", "Errors", "Progress"], {
    key: (s) => s.index,
    cells: (s) => [s.index, s.name, s.ops, s.kind, s.node ? `${s.node}${s.reason ? ` (${s.reason})` : ""}` : "—", s.items_in, s.items_out, s.errors, progressCell(s.progress)],
  });
  const notes = h("ul", { class: "plain muted" });
  const results = h("pre", { class: "results", id: "job-results" });
  const logs = h("pre", { class: "logs", id: "job-logs" });
  const detailActions = h("span", { class: "actions" });
  const detail = h("section", { class: "card wide", id: "job-detail", hidden: true },
    h("div", { class: "row" }, detailTitle, h("span", { class: "spacer" }), detailActions),
    detailState, h("div", { class: "row" }, overall, overallLabel),
    stages.el, notes,
    h("h3", { text: "Logs" }), logs,
    h("h3", { text: "Results" }), results);

  const el = h("section", { class: "page jobs" },
    h("div", { class: "card wide" }, h("h2", { text: "Jobs" }), jobs.el),
    detail, form,
    h("div", { class: "card wide" }, h("h2", { text: "Collections" }), collections.el));

  function stateBadge(state) {
    return (td) => {
      let b = td.firstChild;
      if (!b) td.append((b = badge(state)));
      setText(b, state);
      b.dataset.kind = state;
    };
  }

  function actionButtons(job, td) {
    if (!td.firstChild) {
      const cancel = h("button", { class: "small", dataset: { action: "cancel" }, text: "Cancel" });
      const retry = h("button", { class: "small", dataset: { action: "retry" }, text: "Retry" });
      cancel.addEventListener("click", () => act(td.job.id, "cancel"));
      retry.addEventListener("click", () => act(td.job.id, "retry"));
      td.append(cancel, " ", retry);
    }
    td.job = job;
    const [cancel, retry] = td.querySelectorAll("button");
    cancel.disabled = TERMINAL.has(job.state);
    retry.disabled = !TERMINAL.has(job.state) || job.state === "succeeded";
  }

  async function act(jobId, action) {
    try {
      await post(`/sage/v1/jobs/${jobId}/${action}`);
      await refresh();
      if (action === "retry" || selected === jobId) select(jobId, true);
    } catch (error) {
      ctx.notify(error);
    }
  }

  async function refresh() {
    try {
      const [list, cols] = await Promise.all([api("/sage/v1/jobs?limit=50"), api("/sage/v1/collections").catch(() => ({ collections: [] }))]);
      jobs.update(list.jobs);
      collections.update(cols.collections);
    } catch (error) {
      ctx.notify(error);
    }
  }

  function showDetail(d) {
    const percents = stageProgress(d);
    const percent = jobProgress(d);
    progress.set(d.job.id, percent);
    setText(detailTitle, `Job ${d.job.id}: ${d.job.name}`);
    replace(detailState, badge(d.job.state), ` attempt ${d.job.attempt} · ${d.job.executor} · created ${when(d.job.created_at)}`,
      d.job.finished_at ? ` · finished ${when(d.job.finished_at)}` : "", d.job.error ? h("span", { class: "error", text: ` · ${d.job.error}` }) : "",
      d.job.result_location ? ` · results: ${d.job.result_location}` : "");
    overall.value = percent;
    overall.dataset.percent = String(percent);
    setText(overallLabel, `${percent}%`);
    stages.update(d.stages.map((s, i) => ({ ...s, progress: percents[i] })));
    replace(notes, d.notes.map((n) => h("li", { text: n })));
    actionButtons(d.job, detailActions);
    if (d.results && d.results.length) setText(results, d.results.map((r) => JSON.stringify(r, null, 1)).join("\n"));
    const row = jobs.rows.get(String(d.job.id));
    if (row) jobs.update([...jobs.rows.values()].map((r) => (r.item.id === d.job.id ? d.job : r.item)));
  }

  async function select(jobId, restart = false) {
    if (selected === jobId && !restart) return;
    watching?.abort();
    selected = jobId;
    watching = new AbortController();
    const signal = watching.signal;
    detail.hidden = false;
    detail.dataset.job = String(jobId);
    logs.replaceChildren();
    setText(results, "");
    location.hash = `#jobs/${jobId}`;
    followLogs(jobId, signal);
    try {
      for await (const { event, data } of events(`/sage/v1/jobs/${jobId}/watch?interval_s=0.5&results=20`, { signal })) {
        if (event === "job" || event === "end") showDetail(data);
        if (event === "error") ctx.notify(new Error(data.error?.message || "the job's stream failed"));
        if (event === "end") refresh();
      }
    } catch (error) {
      if (!signal.aborted) ctx.notify(error);
    }
  }

  async function followLogs(jobId, signal) {
    try {
      for await (const { event, data } of events(`/sage/v1/jobs/${jobId}/logs?follow=1`, { signal })) {
        if (event !== "log") continue;
        const line = h("span", { class: "log-line", dataset: { level: data.level } },
          `${new Date(data.ts * 1000).toLocaleTimeString()} ${data.level.padEnd(7)} ${data.message}\n`);
        const atBottom = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
        logs.append(line);
        if (atBottom) logs.scrollTop = logs.scrollHeight;
      }
    } catch (error) {
      if (!signal.aborted) ctx.notify(error);
    }
  }

  let timer = null;
  return {
    el,
    show() {
      refresh();
      timer = setInterval(refresh, 5000);  // the list; the selected job itself is followed live
      const wanted = Number((location.hash.split("/")[1] || "").trim());
      if (wanted) select(wanted);
    },
    hide() {
      clearInterval(timer);
      watching?.abort();
      selected = null;
    },
  };
}

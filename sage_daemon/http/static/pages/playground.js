// Playground: a chat that streams from any chat model (through /v1/chat/completions with the
// user's key, like any client), an embedding similarity box (/v1/embeddings), and `ask` over a
// collection with its sources (the job sagectl ask submits: retrieve → prompt → generate).

import { api, events, post } from "../api.js";
import { h, ms, replace, setText } from "../dom.js";
import { modelsOf, syncOptions } from "./shared.js";

export const id = "playground";
export const title = "Playground";

// As sagectl ask (sage_client/cli.py ASK_TEMPLATE, ASK_SYSTEM): context first, the question last.
const ASK_TEMPLATE = "Context:\n{context}\n\nUsing the context above, answer this question in one or two sentences: {question}";
const ASK_SYSTEM = "You are a helpful assistant.";

export function create(ctx) {
  const chat = chatBox(ctx);
  const similarity = similarityBox(ctx);
  const ask = askBox(ctx);
  const el = h("section", { class: "page playground" }, chat.el, similarity.el, ask.el);
  ctx.store.subscribe((store) => {
    chat.models(modelsOf(store.state, (m) => m.kind === "llm" && (m.chat_template || m.state !== "ready")));
    similarity.models(modelsOf(store.state, (m) => m.kind === "embedding"));
    ask.models(modelsOf(store.state, (m) => m.kind === "llm"), modelsOf(store.state, (m) => m.kind === "rerank"));
  });
  return { el, show: () => ask.collections() };
}

function chatBox(ctx) {
  const model = h("select", { id: "chat-model" });
  const system = h("input", { id: "chat-system", value: "You are a helpful assistant.", placeholder: "system prompt" });
  const maxTokens = h("input", { id: "chat-max-tokens", type: "number", min: 1, max: 4096, value: "128" });
  const log = h("div", { class: "chat-log", id: "chat-log", "aria-live": "polite" });
  const input = h("textarea", { id: "chat-input", rows: 3, placeholder: "Say something…" });
  const send = h("button", { type: "submit", id: "chat-send", text: "Send" });
  const stop = h("button", { type: "button", id: "chat-stop", text: "Stop", disabled: true });
  const clear = h("button", { type: "button", class: "link", text: "clear" });
  const stats = h("span", { class: "muted", id: "chat-stats" });
  const form = h("form", { class: "chat-form" }, input, h("div", { class: "row" }, send, stop, clear, stats));
  const history = [];
  let controller = null;

  clear.addEventListener("click", () => {
    history.length = 0;
    log.replaceChildren();
  });
  stop.addEventListener("click", () => controller?.abort());
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || !model.value || controller) return;
    input.value = "";
    history.push({ role: "user", content: text });
    log.append(h("div", { class: "message user" }, h("span", { class: "who", text: "you" }), h("div", { class: "text", text })));
    const content = h("div", { class: "text" });
    const message = h("div", { class: "message assistant", dataset: { chunks: "0", done: "false" } }, h("span", { class: "who", text: model.value }), content);
    log.append(message);
    controller = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    setText(stats, "waiting…");
    const started = performance.now();
    let first = null;
    let chunks = 0;
    let answer = "";
    let usage = null;
    try {
      const messages = system.value.trim() ? [{ role: "system", content: system.value.trim() }, ...history] : [...history];
      const body = { model: model.value, messages, stream: true, stream_options: { include_usage: true }, max_tokens: Number(maxTokens.value) || 128 };
      for await (const { data } of events("/v1/chat/completions", { method: "POST", body, signal: controller.signal })) {
        if (data === "[DONE]") break;
        if (data.error) throw new Error(data.error.message);
        if (data.usage) usage = data.usage;
        const delta = data.choices?.[0]?.delta?.content;
        if (delta) {
          if (first === null) first = performance.now();
          chunks += 1;
          answer += delta;
          content.append(document.createTextNode(delta));  // model output is text, never markup
          message.dataset.chunks = String(chunks);
          log.scrollTop = log.scrollHeight;
        }
      }
      history.push({ role: "assistant", content: answer });
    } catch (error) {
      if (error.name !== "AbortError") {
        content.append(h("span", { class: "error", text: ` [${error.message}]` }));
        history.pop();
      } else history.push({ role: "assistant", content: answer });
    } finally {
      const seconds = (performance.now() - started) / 1000;
      const tokens = usage?.completion_tokens ?? chunks;
      setText(stats, first === null ? "" : `TTFT ${ms((first - started) / 1000)} · ${tokens} tokens · ${(tokens / Math.max(1e-3, seconds - (first - started) / 1000)).toFixed(1)} tokens/s`);
      message.dataset.done = "true";
      controller = null;
      send.disabled = false;
      stop.disabled = true;
    }
  });

  const el = h("article", { class: "card wide", id: "chat" },
    h("h2", { text: "Chat" }),
    h("div", { class: "row" }, h("label", { for: "chat-model", text: "Model" }), model, h("label", { for: "chat-max-tokens", text: "Max tokens" }), maxTokens),
    h("div", { class: "row" }, h("label", { for: "chat-system", text: "System" }), system),
    log, form);
  return { el, models: (names) => syncOptions(model, names, "no chat model") };
}

function cosine(a, b) {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / (Math.sqrt(na) * Math.sqrt(nb) || 1);
}

function similarityBox(ctx) {
  const model = h("select", { id: "embed-model" });
  const query = h("input", { id: "embed-query", value: "How do I start the daemon?" });
  const texts = h("textarea", { id: "embed-texts", rows: 5, value: "Run sage-daemon or start the systemd service.\nThe queue answers 429 when it is full.\nEmbeddings are batched by the control plane." });
  const out = h("table", { class: "table", id: "embed-results" });
  const note = h("span", { class: "muted" });
  const form = h("form", null,
    h("div", { class: "row" }, h("label", { for: "embed-model", text: "Model" }), model),
    h("label", { for: "embed-query", text: "Query" }), query,
    h("label", { for: "embed-texts", text: "Texts (one a line)" }), texts,
    h("div", { class: "row" }, h("button", { type: "submit", text: "Compare" }), note));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const lines = texts.value.split("\n").map((l) => l.trim()).filter(Boolean);
    if (!query.value.trim() || !lines.length || !model.value) return;
    setText(note, "embedding…");
    try {
      const started = performance.now();
      const reply = await post("/v1/embeddings", { model: model.value, input: [query.value.trim(), ...lines] });
      const vectors = reply.data.sort((a, b) => a.index - b.index).map((d) => d.embedding);
      const ranked = lines.map((text, i) => ({ text, score: cosine(vectors[0], vectors[i + 1]) })).sort((a, b) => b.score - a.score);
      replace(out, h("thead", null, h("tr", null, h("th", { text: "Similarity" }), h("th", { text: "" }), h("th", { text: "Text" }))),
        h("tbody", null, ranked.map((r) => h("tr", null,
          h("td", { text: r.score.toFixed(3) }),
          h("td", null, h("meter", { min: -1, max: 1, value: r.score })),
          h("td", { text: r.text })))));
      setText(note, `${vectors[0].length} dimensions · ${ms((performance.now() - started) / 1000)} · ${reply.usage.prompt_tokens} tokens`);
    } catch (error) {
      setText(note, "");
      ctx.notify(error);
    }
  });
  const el = h("article", { class: "card", id: "similarity" }, h("h2", { text: "Embedding similarity" }), form, out);
  return { el, models: (names) => syncOptions(model, names, "no embedding model") };
}

function askBox(ctx) {
  const collection = h("select", { id: "ask-collection" });
  const model = h("select", { id: "ask-model" });
  const rerank = h("select", { id: "ask-rerank" });
  const k = h("input", { id: "ask-k", type: "number", min: 1, max: 20, value: "2" });
  const question = h("input", { id: "ask-question", placeholder: "Ask the collection…" });
  const answer = h("div", { class: "answer", id: "ask-answer" });
  const sources = h("ol", { class: "sources", id: "ask-sources" });
  const note = h("span", { class: "muted", id: "ask-note" });
  const form = h("form", null,
    h("div", { class: "row" }, h("label", { for: "ask-collection", text: "Collection" }), collection, h("label", { for: "ask-k", text: "k" }), k),
    h("div", { class: "row" }, h("label", { for: "ask-model", text: "Model" }), model, h("label", { for: "ask-rerank", text: "Rerank" }), rerank),
    h("label", { for: "ask-question", text: "Question" }), question,
    h("div", { class: "row" }, h("button", { type: "submit", text: "Ask" }), note));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!question.value.trim() || !collection.value || !model.value) return;
    const retrieve = { op: "retrieve", collection: collection.value, k: Number(k.value) || 2, hybrid: true };
    if (rerank.value) retrieve.rerank_model = rerank.value;
    const spec = {
      name: "ask", priority: "high",
      stages: [
        { op: "from_items", items: [{ id: "question", question: question.value.trim() }] },
        retrieve,
        { op: "prompt", template: ASK_TEMPLATE },
        { op: "generate", model: model.value, max_tokens: 200, temperature: 0.0, system: ASK_SYSTEM, stop: ["\n\n"] },
        { op: "collect" },
      ],
    };
    answer.replaceChildren();
    sources.replaceChildren();
    try {
      const job = await post("/sage/v1/jobs", { spec });
      setText(note, `job ${job.id}…`);
      let last = null;
      for await (const { event, data } of events(`/sage/v1/jobs/${job.id}/watch?interval_s=0.3&results=1`)) {
        if (event === "job" || event === "end") last = data;
      }
      if (!last || last.job.state !== "succeeded" || !last.results.length) throw new Error(`job ${job.id} ${last?.job.state || "ended"}: ${last?.job.error || "no answer"}`);
      const result = last.results[0];
      setText(answer, (result.answer || "").trim());
      replace(sources, (result.contexts || []).map((c) => h("li", null,
        h("strong", { text: c.id ?? "?" }), c.score !== undefined ? h("span", { class: "muted", text: ` (${Number(c.rerank_score ?? c.score).toFixed(3)})` }) : "",
        h("div", { class: "muted excerpt", text: String(c.text ?? "").slice(0, 300) }))));
      setText(note, `job ${job.id} · ${((last.job.finished_at - last.job.created_at) || 0).toFixed(1)} s`);
    } catch (error) {
      setText(note, "");
      ctx.notify(error);
    }
  });
  const el = h("article", { class: "card", id: "ask" }, h("h2", { text: "Ask a collection" }), form, answer, h("h3", { text: "Sources" }), sources);
  return {
    el,
    models(llms, rerankers) {
      syncOptions(model, llms, "no chat model");
      const names = ["", ...rerankers];
      if (rerank.dataset.options !== JSON.stringify(names)) {
        rerank.dataset.options = JSON.stringify(names);
        rerank.replaceChildren(...names.map((n) => h("option", { value: n, text: n || "none" })));
      }
    },
    async collections() {
      try {
        const list = await api("/sage/v1/collections");
        syncOptions(collection, list.collections.map((c) => c.name), "no collection");
      } catch {
        syncOptions(collection, [], "no collection");
      }
    },
  };
}

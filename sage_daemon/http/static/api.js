// Talking to the daemon: JSON calls under /sage/v1 and /v1, and server-sent events read from a
// fetch() body (EventSource cannot send the Authorization header). The API key, when the daemon
// has keys, lives in this tab's sessionStorage only.

const KEY = "sage.apiKey";

export const auth = {
  get key() {
    return sessionStorage.getItem(KEY) || "";
  },
  set(key) {
    sessionStorage.setItem(KEY, key);
  },
  clear() {
    sessionStorage.removeItem(KEY);
  },
  headers(extra = {}) {
    const headers = { ...extra };
    if (this.key) headers.Authorization = `Bearer ${this.key}`;
    return headers;
  },
};

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code || "";
  }
}

let unauthorized = () => {};
// What happens when a call answers 401 (the key was dropped or changed): the app goes back to the login form.
export function onUnauthorized(callback) {
  unauthorized = callback;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = "";
  try {
    const body = await response.json();
    message = body?.error?.message || message;
    code = body?.error?.code || "";
  } catch {
    // not JSON: the status says enough
  }
  if (response.status === 401) unauthorized();
  return new ApiError(response.status, message, code);
}

export async function api(path, { method = "GET", body, signal } = {}) {
  const headers = auth.headers({ Accept: "application/json" });
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, signal, cache: "no-store", credentials: "omit",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

export const post = (path, body = {}, options = {}) => api(path, { ...options, method: "POST", body });

// The events of a text/event-stream reply, as {event, data} with data parsed as JSON when it is
// JSON ("[DONE]" stays a string). Stops when the stream ends or `signal` aborts.
export async function* events(path, { method = "GET", body, signal } = {}) {
  const headers = auth.headers({ Accept: "text/event-stream" });
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, signal, cache: "no-store", credentials: "omit",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let match;
      while ((match = /\r?\n\r?\n/.exec(buffer))) {
        const block = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        const parsed = parseEvent(block);
        if (parsed) yield parsed;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function parseEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  const text = data.join("\n");
  try {
    return { event, data: JSON.parse(text) };
  } catch {
    return { event, data: text };
  }
}

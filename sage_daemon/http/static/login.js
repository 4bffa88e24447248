// The login form the daemon serves when it has API keys: the key is checked against
// /sage/v1/session, kept in this tab's sessionStorage, and the dashboard is mounted in place.

import { auth } from "./api.js";

async function valid(key) {
  const response = await fetch("/sage/v1/session", { headers: { Authorization: `Bearer ${key}`, Accept: "application/json" }, cache: "no-store", credentials: "omit" });
  if (response.status === 401) return false;
  if (!response.ok) throw new Error(`the daemon answered ${response.status}`);
  return true;
}

async function open() {
  const { mount } = await import("./app.js");
  document.title = "SAGE daemon";
  mount(document.body);
}

const form = document.getElementById("login-form");
const input = document.getElementById("login-key");
const error = document.getElementById("login-error");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.textContent = "";
  const key = input.value.trim();
  try {
    if (!(await valid(key))) {
      error.textContent = "That key is not one of the daemon's API keys.";
      input.select();
      return;
    }
  } catch (failure) {
    error.textContent = `Cannot reach the daemon: ${failure.message}`;
    return;
  }
  auth.set(key);
  await open();
});

if (auth.key) {
  valid(auth.key).then((ok) => (ok ? open() : auth.clear())).catch(() => {});
}

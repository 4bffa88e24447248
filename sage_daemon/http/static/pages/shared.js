// Pieces used by more than one page.

import { post } from "../api.js";
import { h } from "../dom.js";

let count = 0;

// The scheduling policy as a <select>: a change is POSTed to /sage/v1/policy at once.
export function policySelect(ctx) {
  count += 1;
  const select = h("select", { id: `policy-${count}`, class: "policy-select", dataset: { role: "policy" } });
  const status = h("span", { class: "muted policy-status" });
  let busy = false;
  select.addEventListener("change", async () => {
    busy = true;
    select.disabled = true;
    status.textContent = "switching…";
    try {
      const result = await post("/sage/v1/policy", { name: select.value });
      status.textContent = `was ${result.previous}`;
      select.dataset.current = result.policy;
    } catch (error) {
      ctx.notify(error);
      select.value = select.dataset.current || select.value;
      status.textContent = "";
    } finally {
      busy = false;
      select.disabled = false;
    }
  });
  return {
    el: h("span", { class: "policy" }, select, " ", status),
    select,
    set(current, names) {
      if (names && select.options.length !== names.length) {
        select.replaceChildren(...names.map((n) => h("option", { value: n, text: n })));
      }
      if (!busy && current && select.dataset.current !== current) {
        select.value = current;
        select.dataset.current = current;
      }
    },
  };
}

// Models of a kind from the latest state, for the playground's pickers.
export function modelsOf(state, predicate) {
  return (state?.models || []).filter(predicate).map((m) => m.id);
}

// Keep a <select>'s options equal to `names`, keeping the choice when it is still there.
export function syncOptions(select, names, placeholder = "no model") {
  const key = JSON.stringify(names);
  if (select.dataset.options === key) return;
  select.dataset.options = key;
  const chosen = select.value;
  select.replaceChildren(...(names.length ? names.map((n) => h("option", { value: n, text: n })) : [h("option", { value: "", text: placeholder })]));
  if (names.includes(chosen)) select.value = chosen;
}

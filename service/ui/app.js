// The page of GET /ui: the service's own APIs called from the browser (no library, no build step).
//   GET /models     the model menu (default model first selected)
//   POST /classify  one call per image: the top-k labels, and the time it took
//   POST /explain   one call per image and chosen class (format=json): the Grad-CAM overlay as a PNG
// A refusal is shown as the service's own message (the "error" of its JSON body). A 401 (the service
// has SERVICE_API_KEYS set) asks for a key, kept in sessionStorage and sent on every call.
"use strict";

const KEY_STORAGE = "imgcls-api-key";
const state = { models: [], files: [], cards: [] };
const $ = (selector, root = document) => root.querySelector(selector);

// --- calling the service --------------------------------------------------------------------------

let pendingKey = null; // one dialog for all the calls refused at once

function askForKey(reason) {
  if (!pendingKey) {
    pendingKey = new Promise((resolve) => {
      const dialog = $("#key-dialog");
      $("#key-reason").textContent = reason;
      $("#key").value = "";
      dialog.addEventListener("close", () => {
        const key = dialog.returnValue === "ok" ? $("#key").value.trim() : "";
        if (key) sessionStorage.setItem(KEY_STORAGE, key);
        updateForgetButton();
        pendingKey = null;
        resolve(Boolean(key));
      }, { once: true });
      // Not a submit button: Enter in the key field submits with the form's first one, "Use this key".
      $("#key-cancel").onclick = () => dialog.close("cancel");
      dialog.showModal();
      $("#key").focus();
    });
  }
  return pendingKey;
}

async function errorMessage(response) {
  // The service answers every refusal with {"error": "<one line>", "detail": [...]}.
  try {
    const body = await response.clone().json();
    if (body && typeof body.error === "string") return body.error;
  } catch (ignored) { /* not JSON: a proxy's page, say */ }
  return `HTTP ${response.status} ${response.statusText}`.trim();
}

async function api(path, options = {}) {
  for (;;) {
    const headers = new Headers(options.headers || {});
    const key = sessionStorage.getItem(KEY_STORAGE);
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401) return response;
    if (!(await askForKey(await errorMessage(response)))) return response; // cancelled: shown as the error
  }
}

function imageForm(file, fields) {
  const form = new FormData();
  form.append("images", file, file.name);
  for (const [name, value] of Object.entries(fields)) form.append(name, String(value));
  return form;
}

async function timed(call) {
  const start = performance.now();
  const response = await call();
  return { response, ms: performance.now() - start };
}

// --- models ---------------------------------------------------------------------------------------

function currentModel() {
  return state.models.find((m) => m.name === $("#model").value);
}

function describeModel(model) {
  const parts = [model.recipe, `${model.classes.length} classes`, `${model.input.width}x${model.input.height}`];
  if (model.test_accuracy != null) parts.push(`${model.evaluated_on || "test"} accuracy ${(100 * model.test_accuracy).toFixed(1)}%`);
  return parts.filter(Boolean).join(" · ");
}

async function loadModels() {
  setStatus("Loading the models…");
  let response;
  try {
    response = await api("/models");
  } catch (err) {
    return setStatus(`The service cannot be reached: ${err.message}`, true);
  }
  if (!response.ok) return setStatus(await errorMessage(response), true);
  const listing = await response.json();
  state.models = listing.models;
  const select = $("#model");
  select.replaceChildren(...listing.models.map((m) => new Option(m.default ? `${m.name} (default)` : m.name, m.name, m.default, m.default)));
  onModelChange();
  setStatus("");
}

function onModelChange() {
  const model = currentModel();
  if (!model) return;
  $("#model-info").textContent = describeModel(model);
  const topK = $("#top-k");
  topK.max = model.classes.length;
  topK.value = Math.min(Math.max(1, Number(topK.value) || 1), model.classes.length);
  state.cards.forEach(run);
}

// --- images ---------------------------------------------------------------------------------------

function addFiles(files) {
  const list = [...files];
  if (!list.length) return;
  for (const file of list) {
    const card = makeCard(file);
    state.cards.push(card);
    $("#results").prepend(card.element);
    run(card);
  }
  setStatus(`${list.length} image${list.length > 1 ? "s" : ""} sent.`);
}

function makeCard(file) {
  const element = $("#card-template").content.firstElementChild.cloneNode(true);
  const card = { file, element, url: URL.createObjectURL(file), run: 0 };
  $(".original", element).src = card.url;
  $(".original", element).alt = file.name;
  $(".name", element).textContent = file.name;
  $(".show-heatmap", element).addEventListener("change", () => showHeatmap(card));
  $(".explain-label", element).addEventListener("change", () => explain(card, card.run));
  return card;
}

function setStatus(text, isError = false) {
  const status = $("#status");
  status.textContent = text;
  status.classList.toggle("failed", isError);
}

function showError(card, message) {
  const error = $(".error", card.element);
  error.textContent = message;
  error.hidden = !message;
  card.element.classList.toggle("failed", Boolean(message));
}

function renderLabels(card, answer) {
  const rows = answer.top_k.map((item) => {
    const row = document.createElement("li");
    row.className = item.label === answer.label ? "top" : "";
    const percent = (100 * item.probability).toFixed(1);
    row.innerHTML = '<span class="label"></span><span class="bar" aria-hidden="true"><span></span></span><span class="value"></span>';
    $(".label", row).textContent = item.label;
    $(".bar span", row).style.width = `${Math.max(0, Math.min(100, 100 * item.probability))}%`;
    $(".value", row).textContent = `${percent}%`;
    return row;
  });
  $(".labels", card.element).replaceChildren(...rows);
}

function setTiming(card) {
  const parts = Object.entries(card.times).map(([what, ms]) => `${what} ${Math.round(ms)} ms`);
  $(".timing", card.element).textContent = parts.length ? parts.join(" · ") : "";
}

async function run(card) {
  const model = currentModel();
  if (!model) return;
  const runId = ++card.run; // answers of an earlier model or top-k are dropped when they come late
  card.times = {};
  showError(card, "");
  card.element.setAttribute("aria-busy", "true");
  $(".labels", card.element).replaceChildren();
  $(".explain", card.element).disabled = true;
  const select = $(".explain-label", card.element);
  select.replaceChildren(new Option("the predicted class", ""), ...model.classes.map((c) => new Option(c, c)));
  let result;
  try {
    result = await timed(() => api("/classify", { method: "POST", body: imageForm(card.file, { model: model.name, top_k: $("#top-k").value }) }));
  } catch (err) {
    result = { error: `The service cannot be reached: ${err.message}` };
  }
  if (runId !== card.run) return;
  card.element.removeAttribute("aria-busy");
  if (result.error || !result.response.ok) {
    showError(card, result.error || await errorMessage(result.response));
    $(".overlay", card.element).hidden = true;
    $(".original", card.element).hidden = false;
    return;
  }
  const [answer] = await result.response.json();
  card.times.classify = result.ms;
  setTiming(card);
  renderLabels(card, answer);
  card.element.dataset.label = answer.label;
  $(".explain", card.element).disabled = false;
  explain(card, runId);
}

async function explain(card, runId) {
  const model = currentModel();
  const note = $(".heatmap-note", card.element);
  const overlay = $(".overlay", card.element);
  const label = $(".explain-label", card.element).value;
  note.textContent = "Drawing the heatmap…";
  let result;
  try {
    result = await timed(() => api("/explain", { method: "POST", body: imageForm(card.file, { model: model.name, label, format: "json" }) }));
  } catch (err) {
    result = { error: `The service cannot be reached: ${err.message}` };
  }
  if (runId !== card.run) return;
  if (result.error || !result.response.ok) {
    note.textContent = result.error || await errorMessage(result.response);
    overlay.hidden = true;
    overlay.removeAttribute("src");
    delete card.element.dataset.explained;
    showHeatmap(card);
    return;
  }
  const answer = await result.response.json();
  overlay.src = `data:image/png;base64,${answer.heatmap_png}`;
  overlay.alt = `Grad-CAM heatmap of ${answer.explained} over ${card.file.name}`;
  card.element.dataset.explained = answer.explained;
  note.textContent = `Where the evidence for ${answer.explained} lies (red: most).`;
  card.times.explain = result.ms;
  setTiming(card);
  showHeatmap(card);
}

function showHeatmap(card) {
  const overlay = $(".overlay", card.element);
  const on = $(".show-heatmap", card.element).checked && Boolean(overlay.getAttribute("src"));
  overlay.hidden = !on;
  $(".original", card.element).hidden = on;
}

// --- the page -------------------------------------------------------------------------------------

function updateForgetButton() {
  $("#forget-key").hidden = !sessionStorage.getItem(KEY_STORAGE);
}

function wireDropZone() {
  const drop = $("#drop");
  const input = $("#files");
  drop.addEventListener("click", () => input.click());
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault(); // Space would scroll the page
      input.click();
    }
  });
  input.addEventListener("change", () => {
    addFiles(input.files);
    input.value = ""; // the same file chosen again is a new request
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    addFiles(event.dataTransfer.files);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  wireDropZone();
  $("#model").addEventListener("change", onModelChange);
  $("#top-k").addEventListener("change", () => {
    onModelChange();
  });
  $("#forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    updateForgetButton();
    setStatus("The API key is forgotten.");
  });
  updateForgetButton();
  loadModels();
});

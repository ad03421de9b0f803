// xplain web page: upload an image, run several methods, compare their heatmaps.
// Plain browser JavaScript, no build step, no external resources.
"use strict";

const FINAL = ["succeeded", "failed", "cancelled"];
const HIDDEN_PARAMS = new Set();  // parameter names not shown on the page
const $ = (selector, root = document) => root.querySelector(selector);

const state = { file: null, previewUrl: null, methods: [], models: [] };

class ProblemError extends Error {}

// The API key lives in sessionStorage: this tab only, gone when it closes. Every call sends it,
// the event stream included (a streamed fetch, since EventSource cannot send headers), and
// images and downloads are fetched with it and shown from blob URLs.
const KEY_STORE = "xplain-api-key";
const apiKey = () => sessionStorage.getItem(KEY_STORE) || "";

function withKey(options = {}) {
  const headers = new Headers(options.headers || {});
  if (apiKey()) headers.set("X-API-Key", apiKey());
  return { ...options, headers };
}

async function api(path, options = {}) {
  const response = await fetch(path, withKey(options));
  if (response.status === 401) $("#key-state").textContent = "this service needs a valid API key";
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      detail = body.detail || body.title || detail;
    } catch (_) { /* not JSON: keep the status line */ }
    throw new ProblemError(detail);
  }
  return response;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message || "";
  box.hidden = !message;
}

function listOf(body, key) {
  return Array.isArray(body) ? body : (body[key] || []);
}

// ---- catalogue -------------------------------------------------------------------------
async function loadModels() {
  const select = $("#model");
  const models = listOf(await (await api("/v1/models")).json(), "models");
  state.models = models;
  select.replaceChildren(...models.map((m) => new Option(
    `${m.name} (${m.input_size[0]}×${m.input_size[1]}, ${m.num_classes} classes)`, m.name)));
  if (!models.length) showError("No worker is serving a model yet; reload when one is up.");
}

function schemaType(prop) {
  if (prop.enum) return "enum";
  if (prop.type) return prop.type;
  const options = (prop.anyOf || []).filter((p) => p.type !== "null");
  return options.length ? schemaType(options[0]) : "string";
}

function enumValues(prop) {
  if (prop.enum) return prop.enum;
  const inner = (prop.anyOf || []).find((p) => p.enum);
  return inner ? inner.enum : [];
}

function paramInput(name, prop) {
  const type = schemaType(prop);
  let input;
  if (type === "enum") {
    input = document.createElement("select");
    for (const value of enumValues(prop)) input.add(new Option(value, value));
    if (prop.default != null) input.value = prop.default;
  } else if (type === "boolean") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = Boolean(prop.default);
  } else {
    input = document.createElement("input");
    if (type === "integer" || type === "number") {
      input.type = "number";
      input.step = type === "integer" ? "1" : "any";
    }
    if (prop.default != null) {
      input.value = typeof prop.default === "object" ? JSON.stringify(prop.default) : prop.default;
    }
    input.placeholder = prop.default == null ? "default" : "";
  }
  input.dataset.param = name;
  input.dataset.kind = type;
  input.title = prop.description || "";
  return input;
}

function readParam(input, prop) {
  // Returns [changed, value]: only values that differ from the default are sent.
  const kind = input.dataset.kind;
  let value;
  if (kind === "boolean") value = input.checked;
  else if (input.value === "") return [false, null];
  else if (kind === "integer" || kind === "number") value = Number(input.value);
  else if (kind === "array" || kind === "object") value = JSON.parse(input.value);
  else value = input.value;
  return [JSON.stringify(value) !== JSON.stringify(prop.default ?? null), value];
}

function methodSchema(method) {
  return method.params_schema || method.schema || method.parameters || {};
}

async function loadMethods() {
  const box = $("#methods");
  state.methods = listOf(await (await api("/v1/methods")).json(), "methods");
  const rows = state.methods.map((method, index) => {
    const row = document.createElement("div");
    row.className = "method";
    const check = document.createElement("input");
    check.type = "checkbox";
    check.value = method.name;
    check.id = `m-${method.name}`;
    check.checked = index === 0 || method.name === "gradcam";
    row.classList.toggle("on", check.checked);
    check.addEventListener("change", () => row.classList.toggle("on", check.checked));
    const label = document.createElement("label");
    label.htmlFor = check.id;
    label.innerHTML = `<b></b> <span class="lane"></span>`;
    label.querySelector("b").textContent = method.name;
    label.querySelector(".lane").textContent = method.lane || "";
    label.title = `${method.summary || ""} — ${method.paper || ""}`;
    const params = document.createElement("div");
    params.className = "params";
    for (const [name, prop] of Object.entries(methodSchema(method).properties || {})) {
      if (HIDDEN_PARAMS.has(name)) continue;
      const caption = document.createElement("label");
      caption.textContent = name;
      const input = paramInput(name, prop);
      input.id = `p-${method.name}-${name}`;
      caption.htmlFor = input.id;
      params.append(caption, input);
    }
    row.append(check, label, params);
    return row;
  });
  box.replaceChildren(Object.assign(document.createElement("legend"), { textContent: "Methods" }), ...rows);
}

function chosenParams(method) {
  const props = methodSchema(method).properties || {};
  const params = {};
  for (const input of document.querySelectorAll(`#methods [id^="p-${method.name}-"]`)) {
    const name = input.dataset.param;
    const [changed, value] = readParam(input, props[name] || {});
    if (changed) params[name] = value;
  }
  return params;
}

// ---- upload ----------------------------------------------------------------------------
function setFile(file) {
  if (!file) return;
  state.file = file;
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(file);
  const preview = $("#preview");
  preview.src = state.previewUrl;
  preview.hidden = false;
  $("#drop-text").firstChild.textContent = `${file.name} — drop another image or `;
  $("#run").disabled = false;
  showError("");
}

function wireUpload() {
  const drop = $("#drop");
  $("#file").addEventListener("change", (event) => setFile(event.target.files[0]));
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    setFile(event.dataTransfer.files[0]);
  });
}

// ---- jobs ------------------------------------------------------------------------------
function curlCommand(method, params, model, target, evaluate) {
  const parts = [`curl -F file=@${state.file.name}`, `-F method=${method}`];
  if (model) parts.push(`-F model=${model}`);
  if (target) parts.push(`-F target=${JSON.stringify(target)}`);
  if (Object.keys(params).length) parts.push(`-F 'params=${JSON.stringify(params)}'`);
  if (evaluate) parts.push(`-F 'evaluate=["deletion","insertion"]'`);
  parts.push(`${location.origin}/v1/explanations`);
  return parts.join(" ");
}

function newCard(method) {
  const card = $("#card-template").content.firstElementChild.cloneNode(true);
  card.dataset.method = method;
  $(".title", card).textContent = method;
  $(".base", card).src = state.previewUrl;
  $(".heat", card).style.opacity = $("#opacity").value / 100;
  $(".curl", card).addEventListener("click", () => { $(".curl-text", card).hidden ^= true; });
  $("#results").append(card);
  return card;
}

function setStatus(card, status, progress) {
  card.dataset.status = status;
  $(".status", card).textContent = status;
  if (progress != null) $(".bar", card).value = progress;
  $(".cancel", card).hidden = FINAL.includes(status);
}

function cardError(card, message) {
  const text = $(".error-text", card);
  text.textContent = message;
  text.hidden = false;
}

function showPrediction(job) {
  if (!job.predictions || !$("#prediction").hidden) return;
  $("#top5").replaceChildren(...job.predictions.map((p) => {
    const item = document.createElement("li");
    item.textContent = `${p.label} — ${(p.score * 100).toFixed(1)} %`;
    return item;
  }));
  $("#prediction").hidden = false;
}

async function blobUrl(path) {
  return URL.createObjectURL(await (await api(path)).blob());
}

async function finish(card, jobId) {
  const job = await (await api(`/v1/jobs/${jobId}?heatmap_data=false`)).json();
  setStatus(card, job.status, job.status === "succeeded" ? 1 : null);
  if (job.status === "failed") cardError(card, (job.error && job.error.detail) || "the job failed");
  if (job.status !== "succeeded") return;
  showPrediction(job);
  const png = `/v1/jobs/${jobId}/heatmap.png`;
  $(".heat", card).src = await blobUrl(`${png}?style=heatmap`);
  const meta = job.meta || {};
  const facts = [`${Math.round(job.timings.total_ms)} ms`];
  if (meta.forward_passes != null) {
    const n = meta.forward_passes;
    facts.push(`${n} forward pass${n === 1 ? "" : "es"}`);
  }
  if (meta.layer) facts.push(`layer ${meta.layer}`);
  if (job.target) facts.push(`target ${job.target.label}`);
  for (const [name, value] of Object.entries(job.evaluation || {})) facts.push(`${name} ${value.toFixed(3)}`);
  if (job.cached) facts.push("cached");
  $(".facts", card).textContent = facts.join(" · ");
  Object.assign($(".png", card), { href: await blobUrl(`${png}?style=overlay`), download: `${job.method}.png`, hidden: false });
  Object.assign($(".json", card), { href: await blobUrl(`/v1/jobs/${jobId}`), download: `${job.method}.json`, hidden: false });
}

// Server-sent events over fetch: calls onEvent(name, data) for each event until the stream
// ends or `signal` aborts.
async function streamEvents(path, onEvent, signal) {
  const response = await api(path, { signal, headers: { Accept: "text/event-stream" } });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(name, data.join("\n"));
    }
  }
}

function follow(card, jobId) {
  const stop = new AbortController();
  let ended = false;
  const end = () => {
    if (ended) return;
    ended = true;
    stop.abort();
    finish(card, jobId).catch((error) => cardError(card, error.message));
  };
  const onEvent = (name, data) => {
    let event;
    try { event = JSON.parse(data); } catch (_) { return; }
    setStatus(card, event.status, event.progress);
    if (FINAL.includes(event.status)) end();
  };
  streamEvents(`/v1/jobs/${jobId}/events`, onEvent, stop.signal)
    .then(end)
    .catch((error) => { if (error.name !== "AbortError") end(); });
  $(".cancel", card).addEventListener("click", async () => {
    try {
      await api(`/v1/jobs/${jobId}`, { method: "DELETE" });
      setStatus(card, "cancelled", null);
      ended = true;
      stop.abort();
    } catch (error) {
      cardError(card, error.message);
    }
  });
}

async function submit(method) {
  const model = $("#model").value;
  const target = $("#target").value.trim();
  const evaluate = $("#evaluate").checked;
  const params = chosenParams(method);
  const card = newCard(method.name);
  $(".curl-text", card).textContent = curlCommand(method.name, params, model, target, evaluate);
  setStatus(card, "sending", 0);
  const form = new FormData();
  form.append("file", state.file);
  form.append("method", method.name);
  if (model) form.append("model", model);
  if (target) form.append("target", target);
  form.append("params", JSON.stringify(params));
  if (evaluate) form.append("evaluate", JSON.stringify(["deletion", "insertion"]));
  form.append("wait", "0");
  try {
    const job = await (await api("/v1/explanations", { method: "POST", body: form })).json();
    card.dataset.job = job.job_id;
    setStatus(card, job.status || "queued", job.progress || 0);
    follow(card, job.job_id);
  } catch (error) {
    setStatus(card, "failed", null);
    cardError(card, error.message);
  }
}

async function run() {
  showError("");
  if (!state.file) return showError("Choose an image first.");
  const chosen = state.methods.filter((m) => $(`#m-${m.name}`).checked);
  if (!chosen.length) return showError("Tick at least one method.");
  $("#results").replaceChildren();
  $("#prediction").hidden = true;
  let bad = null;
  for (const method of chosen) {
    try { chosenParams(method); } catch (_) { bad = method.name; }
  }
  if (bad) return showError(`A parameter of ${bad} is not valid JSON.`);
  await Promise.all(chosen.map(submit));
}

function wireKey() {
  $("#apikey").value = apiKey();
  $("#key-state").textContent = apiKey() ? "key set for this tab" : "";
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("#apikey").value.trim();
    if (key) sessionStorage.setItem(KEY_STORE, key); else sessionStorage.removeItem(KEY_STORE);
    $("#key-state").textContent = key ? "key set for this tab" : "";
    showError("");
    loadCatalogue();
  });
}

// Methods the chosen model cannot run (found by its worker at load) are greyed out, with the
// reason as their tooltip; a layer-based one can still run with a layer typed in.
function markSupport() {
  const model = state.models.find((m) => m.name === $("#model").value);
  const unsupported = (model && model.unsupported) || {};
  for (const method of state.methods) {
    const row = $(`#m-${method.name}`)?.closest(".method");
    if (!row) continue;
    const reason = unsupported[method.name];
    row.classList.toggle("unsupported", Boolean(reason));
    row.querySelector("label").title = reason
      ? `Not available for this model: ${reason}`
      : `${method.summary || ""} — ${method.paper || ""}`;
    const check = $(`#m-${method.name}`);
    if (reason && check.checked && !hasLayer(method)) {
      check.checked = false;
      row.classList.remove("on");
    }
  }
}

function hasLayer(method) {
  const input = document.querySelector(`#p-${method.name}-layer`);
  return Boolean(input && input.value.trim());
}

function loadCatalogue() {
  return Promise.all([loadModels(), loadMethods()])
    .then(markSupport)
    .catch((error) => showError(error.message));
}

function wireControls() {
  $("#run").addEventListener("click", () => run().catch((error) => showError(error.message)));
  $("#opacity").addEventListener("input", (event) => {
    for (const img of document.querySelectorAll(".heat")) img.style.opacity = event.target.value / 100;
  });
}

window.addEventListener("DOMContentLoaded", () => {
  wireKey();
  wireUpload();
  wireControls();
  $("#model").addEventListener("change", markSupport);
  loadCatalogue();
});

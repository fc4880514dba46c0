// The evidence page: classify an image (or a memory entry's), show the
// classes and the retrieved entries behind them; search the memory by text.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;

function setStatus(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(isError));
}

function percent(p) {
  return (100 * p).toFixed(p >= 0.1 ? 1 : 2) + "%";
}

async function loadInfo() {
  try {
    const response = await fetch("/v1/info");
    info = await response.json();
    const m = info.model;
    const memory = info.memory_entries == null ? "no memory"
      : `${info.memory_entries} memory entries (${m.retrieval})`;
    const text = m.text_search ? "; text search over " + m.text_search : "; no text search";
    $("model-info").textContent =
      `${m.method} (values ${m.values}, k ${m.k}) over ${memory}${text}.`;
    if (m.k > 0) {
      $("k-input").value = m.k;
      $("k-input").max = info.limits.max_k;
    } else {
      $("k-input").disabled = true;
    }
    if (!m.text_search) {
      $("search-input").disabled = true;
      $("search-input").placeholder = "this memory cannot be searched by text";
    }
  } catch (e) {
    $("model-info").textContent = "The model's description could not be loaded.";
  }
}

async function call(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const message = body && body.error ? body.error.message : response.statusText;
    throw new Error(`${response.status}: ${message}`);
  }
  return body;
}

function kQuery() {
  const k = $("k-input").value;
  return !$("k-input").disabled && k ? "?k=" + encodeURIComponent(k) : "";
}

async function classifyFile(file) {
  const preview = $("preview");
  preview.src = URL.createObjectURL(file);
  preview.alt = "The image classified: " + file.name;
  preview.hidden = false;
  const form = new FormData();
  form.append("image", file, file.name);
  await classify({ method: "POST", body: form }, file.name);
}

// An entry id from "42", "/v1/memory/42" or "http://host/v1/memory/42/image".
function entryId(text) {
  const match = text.trim().match(/(?:^|\/v1\/memory\/)(\d+)(?:\/image)?\/?$/);
  return match ? Number(match[1]) : null;
}

async function classifyEntry() {
  const id = entryId($("entry-input").value);
  if (id === null) {
    setStatus("Give a memory entry's id or its /v1/memory/ID URL.", true);
    $("entry-input").focus();
    return;
  }
  const preview = $("preview");
  preview.src = `/v1/memory/${id}/image?size=256`;
  preview.alt = `The image of memory entry ${id}`;
  preview.hidden = false;
  await classify({
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ memory_id: id }),
  }, `memory entry ${id}`);
}

async function classify(options, what) {
  setStatus(`Classifying ${what}…`);
  try {
    const decision = await call("/v1/classify" + kQuery(), options);
    showDecision(decision);
    setStatus(`${what}: ${decision.top[0].name} (${percent(decision.top[0].probability)}).`);
    $("results").focus();
  } catch (e) {
    setStatus(`${what} could not be classified: ${e.message}`, true);
  }
}

function showDecision(decision) {
  const classes = $("classes");
  classes.replaceChildren();
  for (const c of decision.top) {
    const item = document.createElement("li");
    item.className = "class";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = c.name;
    const bar = document.createElement("meter");
    bar.min = 0;
    bar.max = 1;
    bar.value = c.probability;
    bar.setAttribute("aria-label", `probability of ${c.name}`);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = percent(c.probability);
    item.append(name, bar, value);
    item.dataset.probability = String(c.probability);
    classes.append(item);
  }
  $("decision").hidden = false;
  const weighted = decision.neighbours.some((n) => n.attention !== null);
  let help = weighted
    ? "Sorted by the attention each entry got; faded entries got less than half of an even share."
    : "In retrieval order: this model gives the entries no weights.";
  if (decision.query_attention !== null && decision.query_attention !== undefined) {
    help += ` The image itself got ${percent(decision.query_attention)} of the attention.`;
  }
  showNeighbours(decision.neighbours, help, weighted);
  $("neighbours").dataset.queryAttention = String(decision.query_attention ?? 0);
}

function showNeighbours(neighbours, help, weighted) {
  const list = $("neighbours");
  list.replaceChildren();
  delete list.dataset.queryAttention;
  const sorted = weighted
    ? [...neighbours].sort((a, b) => (b.attention ?? 0) - (a.attention ?? 0))
    : neighbours;
  const even = neighbours.length ? 1 / neighbours.length : 0;
  for (const n of sorted) {
    const item = document.createElement("li");
    item.className = "neighbour";
    item.dataset.memoryId = String(n.memory_id);
    if (n.attention !== null) {
      item.dataset.attention = String(n.attention);
      if (n.attention < even / 2) item.classList.add("ignored");
    }
    const figure = document.createElement("figure");
    const image = document.createElement("img");
    image.src = `/v1/memory/${n.memory_id}/image`;
    image.loading = "lazy";
    const described = n.caption || n.label || n.source || `entry ${n.memory_id}`;
    image.alt = described;
    image.addEventListener("error", () => { image.classList.add("missing"); });
    const caption = document.createElement("figcaption");
    const title = document.createElement("span");
    title.className = "caption";
    title.textContent = n.caption || n.source || `entry ${n.memory_id}`;
    const details = document.createElement("span");
    details.className = "details";
    const label = n.label ? `${n.label} · ` : "";
    details.textContent = `${label}#${n.memory_id} · similarity ${n.similarity.toFixed(3)}`;
    // A module that votes: the entry's share of the probabilities through
    // its label (the kNN vote's attention is its vote already).
    if (n.vote !== null && n.vote !== undefined && n.vote !== n.attention) {
      details.textContent += ` · vote ${percent(n.vote)}`;
      item.dataset.vote = String(n.vote);
    }
    caption.append(title, details);
    if (n.attention !== null) {
      const bar = document.createElement("meter");
      bar.className = "attention";
      bar.min = 0;
      bar.max = 1;
      bar.value = n.attention;
      bar.setAttribute("aria-label", `attention ${percent(n.attention)}`);
      const weight = document.createElement("span");
      weight.className = "weight";
      weight.textContent = `attention ${percent(n.attention)}`;
      caption.append(bar, weight);
    }
    figure.append(image, caption);
    item.append(figure);
    list.append(item);
  }
  $("neighbours-help").textContent = help;
  $("evidence").hidden = false;
}

async function searchText(event) {
  event.preventDefault();
  const text = $("search-input").value.trim();
  if (!text) {
    setStatus("Type something to search for.", true);
    return;
  }
  setStatus(`Searching for “${text}”…`);
  try {
    const found = await call("/v1/search", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text }),
    });
    $("decision").hidden = true;
    showNeighbours(found.neighbours, `The entries nearest “${text}” (by their ${found.searched}).`, false);
    setStatus(`${found.neighbours.length} entries found for “${text}”.`);
    $("results").focus();
  } catch (e) {
    setStatus(`The search failed: ${e.message}`, true);
  }
}

function setUp() {
  const zone = $("drop-zone");
  const input = $("file-input");
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) classifyFile(file);
  });
  input.addEventListener("change", () => {
    if (input.files[0]) classifyFile(input.files[0]);
  });
  $("entry-button").addEventListener("click", classifyEntry);
  $("entry-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      classifyEntry();
    }
  });
  $("classify-form").addEventListener("submit", (event) => event.preventDefault());
  $("search-form").addEventListener("submit", searchText);
  loadInfo();
}

document.addEventListener("DOMContentLoaded", setUp);

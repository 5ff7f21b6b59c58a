// altclip's search page: plain JavaScript against the server's /api (see /docs). No build step, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  token: sessionStorage.getItem("altclip-token") || "",
  objectUrls: [], // blob: URLs made for images fetched with a token, released on the next search
  queryText: "", // the text of the current search, for the "why?" maps; empty for image searches
};

// -- talking to the server -------------------------------------------------------------------------

function authorized(headers = {}) {
  return state.token ? { ...headers, Authorization: `Bearer ${state.token}` } : headers;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: authorized(options.headers) });
  const isJson = (response.headers.get("content-type") || "").includes("json");
  const body = isJson ? await response.json() : null;
  if (response.status === 401) {
    $("token-box").hidden = false;
    throw new Error("This server needs a token: enter it above.");
  }
  if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  return body;
}

// Show an image of this server in an <img>: by its URL, or, with a token, as a blob fetched with the header.
async function showImage(img, url) {
  if (!state.token) {
    img.src = url;
    return;
  }
  try {
    const response = await fetch(url, { headers: authorized() });
    if (!response.ok) throw new Error(`could not load ${url}: ${response.status}`);
    const objectUrl = URL.createObjectURL(await response.blob());
    state.objectUrls.push(objectUrl);
    img.src = objectUrl;
  } catch (err) {
    showError(err.message);
  }
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setStatus(message) {
  $("status").textContent = message;
}

// -- search ----------------------------------------------------------------------------------------

function options() {
  const k = Number.parseInt($("k").value, 10) || 24;
  const index = $("index").value || undefined;
  return { k, index, dedup: $("dedup").checked };
}

async function search(request, label) {
  showError("");
  setStatus(`Searching ${label}…`);
  $("results").setAttribute("aria-busy", "true");
  const started = performance.now();
  try {
    const data = await request();
    render(data, label, performance.now() - started);
  } catch (err) {
    setStatus("");
    showError(err.message);
  } finally {
    $("results").removeAttribute("aria-busy");
  }
}

function searchText(text) {
  if (!text.trim()) {
    showError("Type something to search for.");
    return;
  }
  const body = JSON.stringify({ text, ...options() });
  const request = () => api("api/search", { method: "POST", headers: { "Content-Type": "application/json" }, body });
  state.queryText = text;
  search(request, `“${text}”`);
}

function searchImage(file) {
  const form = new FormData();
  const { k, index, dedup } = options();
  state.queryText = "";
  form.append("image", file);
  form.append("k", String(k));
  form.append("dedup", String(dedup));
  if (index) form.append("index", index);
  search(() => api("api/search", { method: "POST", body: form }), `by the image ${file.name}`);
}

function searchLike(result, index) {
  const body = JSON.stringify({ ...options(), id: result.id, index });
  const request = () => api("api/search", { method: "POST", headers: { "Content-Type": "application/json" }, body });
  state.queryText = "";
  search(request, `like ${basename(result.path)}`);
}

function basename(path) {
  return path.split(/[\\/]/).pop();
}

// An <img> of a result's thumbnail, loaded when it scrolls into view.
function thumbnailOf(result) {
  const img = document.createElement("img");
  img.alt = basename(result.path);
  img.loading = "lazy";
  showImage(img, result.thumbnail);
  return img;
}

function render(data, label, ms) {
  state.objectUrls.forEach((url) => URL.revokeObjectURL(url));
  state.objectUrls = [];
  const grid = $("results");
  grid.replaceChildren();
  for (const result of data.results) {
    const card = document.createElement("button");
    card.type = "button";
    card.className = "card";
    card.title = result.path;
    const img = thumbnailOf(result);
    const meta = document.createElement("span");
    meta.className = "meta";
    const name = document.createElement("span");
    name.className = "name";
    name.dir = "auto";
    name.textContent = basename(result.path);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = result.score.toFixed(3);
    meta.append(name, score);
    card.append(img, meta);
    card.addEventListener("click", () => openViewer(result, data.index));
    const item = document.createElement("li");
    item.append(card);
    if (state.queryText) item.append(whyToggle(img, result, data.index, state.queryText));
    grid.append(item);
  }
  const dropped = data.dedup ? `, ${data.dropped} near-duplicates hidden` : "";
  const count = data.results.length === 1 ? "1 result" : `${data.results.length} results`;
  setStatus(`${count} ${label} in ${data.index} (${Math.round(ms)} ms${dropped})`);
  $("drop-hint").hidden = data.results.length > 0;
}

// "why?": the thumbnail swapped for the relevance map of the query over it, and back.
function whyToggle(img, result, index, text) {
  const why = document.createElement("button");
  why.type = "button";
  why.className = "why";
  why.textContent = "why?";
  why.title = `where this image matches “${text}”`;
  why.setAttribute("aria-pressed", "false");
  why.addEventListener("click", async () => {
    const on = why.getAttribute("aria-pressed") !== "true";
    why.setAttribute("aria-pressed", String(on));
    if (!on) {
      showImage(img, result.thumbnail);
      return;
    }
    const url = `api/explain/${encodeURIComponent(index)}/${result.id}?text=${encodeURIComponent(text)}`;
    why.disabled = true;
    try {
      const response = await fetch(url, { headers: authorized() });
      if (!response.ok) throw new Error(`could not explain ${basename(result.path)}: ${response.status}`);
      const objectUrl = URL.createObjectURL(await response.blob());
      state.objectUrls.push(objectUrl);
      img.src = objectUrl;
    } catch (err) {
      why.setAttribute("aria-pressed", "false");
      showError(err.message);
    } finally {
      why.disabled = false;
    }
  });
  return why;
}

// -- the full image and "more like this" ---------------------------------------------------------

async function openViewer(result, index) {
  const viewer = $("viewer");
  $("viewer-image").removeAttribute("src");
  $("viewer-image").alt = basename(result.path);
  $("viewer-caption").textContent = `${result.path} · ${result.score.toFixed(3)}`;
  $("more-like-this").onclick = () => {
    viewer.close();
    searchLike(result, index);
  };
  viewer.showModal();
  await showImage($("viewer-image"), `api/image/${encodeURIComponent(index)}/${result.id}`);
}

// -- zero-shot classification ----------------------------------------------------------------------

const classifyState = { file: null };

function chooseClassifyImage(file) {
  classifyState.file = file;
  const preview = $("classify-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.alt = file.name;
  preview.hidden = false;
}

function parseLabels(text) {
  // one per line, or separated by commas (also the ideographic, Arabic and Japanese ones)
  return text.split(/[\n,，、،]+/).map((label) => label.trim()).filter(Boolean);
}

async function classify() {
  showError("");
  const labels = parseLabels($("labels").value);
  if (!classifyState.file) return showError("Choose or drop an image to classify.");
  if (labels.length === 0) return showError("Type at least one label.");
  const form = new FormData();
  form.append("image", classifyState.file);
  form.append("labels", JSON.stringify(labels));
  form.append("lang", $("lang").value || "en");
  const list = $("predictions");
  list.replaceChildren();
  try {
    const data = await api("api/classify", { method: "POST", body: form });
    for (const prediction of data.predictions) {
      const item = document.createElement("li");
      const label = document.createElement("span");
      label.dir = "auto";
      label.textContent = prediction.label;
      const percent = document.createElement("span");
      percent.className = "score";
      percent.textContent = ` ${(100 * prediction.probability).toFixed(1)}%`;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.inlineSize = `${Math.max(1, 100 * prediction.probability)}%`;
      item.append(label, percent, bar);
      list.append(item);
    }
  } catch (err) {
    showError(err.message);
  }
}

// -- near-duplicates --------------------------------------------------------------------------------

async function findDuplicates() {
  showError("");
  const params = new URLSearchParams({ threshold: $("threshold").value || "0.99" });
  if ($("index").value) params.set("index", $("index").value);
  $("duplicates-status").textContent = "Looking for near-duplicates…";
  try {
    const data = await api(`api/duplicates?${params}`);
    const list = $("groups");
    list.replaceChildren();
    for (const group of data.groups) {
      const item = document.createElement("li");
      item.className = "group";
      for (const [n, image] of group.images.entries()) {
        const figure = document.createElement("figure");
        const img = thumbnailOf(image);
        const caption = document.createElement("figcaption");
        caption.dir = "auto";
        caption.title = image.path;
        caption.textContent = basename(image.path);
        const score = document.createElement("span");
        score.className = "score";
        score.textContent = n === 0 ? "kept first" : `cosine ${image.score.toFixed(3)}`;
        figure.append(img, caption, score);
        item.append(figure);
      }
      list.append(item);
    }
    const shown = data.groups.length < data.group_count ? ` (the first ${data.groups.length} shown)` : "";
    $("duplicates-status").textContent =
      `${data.group_count} groups, ${data.duplicates} near-duplicates among ${data.images} images in ${data.index}${shown}.`;
  } catch (err) {
    $("duplicates-status").textContent = "";
    showError(err.message);
  }
}

// -- start-up: indexes, languages, events ------------------------------------------------------------

async function loadIndexes() {
  const indexes = await api("api/indexes");
  const select = $("index");
  select.replaceChildren(
    ...indexes.map((index) => new Option(`${index.name} (${index.count.toLocaleString()} images)`, index.name)),
  );
  $("index-label").hidden = indexes.length < 2;
  const total = indexes.reduce((sum, index) => sum + index.count, 0);
  const where = indexes.length > 1 ? ` in ${indexes.length} indexes` : "";
  setStatus(`${total.toLocaleString()} images ready to search${where}.`);
}

async function loadLanguages() {
  const names = new Intl.DisplayNames([navigator.language, "en"], { type: "language" });
  const codes = await api("api/languages");
  $("lang").replaceChildren(...codes.map((code) => new Option(`${names.of(code) || code} (${code})`, code)));
  $("lang").value = codes.includes("en") ? "en" : codes[0];
}

async function start() {
  try {
    await Promise.all([loadIndexes(), loadLanguages()]);
    $("token-box").hidden = true;
  } catch (err) {
    showError(err.message);
  }
}

function dropped(event) {
  const file = event.dataTransfer && [...event.dataTransfer.files].find((f) => f.type.startsWith("image/"));
  if (!file) showError("Drop an image file.");
  return file;
}

function acceptDrops(target, onFile, over) {
  target.addEventListener("dragover", (event) => {
    event.preventDefault();
    event.stopPropagation();
    over.classList.add("over");
  });
  target.addEventListener("dragleave", () => over.classList.remove("over"));
  target.addEventListener("drop", (event) => {
    event.preventDefault();
    event.stopPropagation();
    over.classList.remove("over");
    const file = dropped(event);
    if (file) onFile(file);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    searchText($("query").value);
  });
  $("image-input").addEventListener("change", (event) => {
    if (event.target.files[0]) searchImage(event.target.files[0]);
    event.target.value = "";
  });
  $("classify-image").addEventListener("change", (event) => {
    if (event.target.files[0]) chooseClassifyImage(event.target.files[0]);
  });
  $("classify-form").addEventListener("submit", (event) => {
    event.preventDefault();
    classify();
  });
  $("duplicates-form").addEventListener("submit", (event) => {
    event.preventDefault();
    findDuplicates();
  });
  $("token-box").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("altclip-token", state.token);
    showError("");
    start();
  });
  acceptDrops($("classify-drop"), chooseClassifyImage, $("classify-drop"));
  acceptDrops(document.body, searchImage, document.body);
  start();
});

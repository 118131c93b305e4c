// The openeva page: text search, search by image, classify an image against typed labels.
"use strict";

const $ = (id) => document.getElementById(id);

function setMessage(text, isError = false) {
  $("message").textContent = text;
  $("message").className = isError ? "message error" : "message";
}

async function callApi(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const err = body.error ? body.error.message : (body.detail ? JSON.stringify(body.detail) : response.statusText);
    throw new Error(`${response.status}: ${err}`);
  }
  return body;
}

function showResults(results) {
  const grid = $("grid");
  grid.replaceChildren();
  $("labels-result").replaceChildren();
  for (const hit of results) {
    const card = document.createElement("figure");
    card.className = "card result";
    card.dataset.id = hit.id;
    card.dataset.score = hit.score;
    const img = document.createElement("img");
    img.src = hit.thumb;
    img.alt = hit.caption || hit.id;
    img.loading = "lazy";
    const meta = document.createElement("figcaption");
    meta.className = "meta";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `#${hit.rank} · ${hit.score.toFixed(3)}`;
    const caption = document.createElement("span");
    caption.className = "caption";
    caption.textContent = hit.caption || hit.id;
    caption.title = hit.id;
    meta.append(score, caption);
    card.append(img, meta);
    grid.append(card);
  }
  setMessage(results.length ? `${results.length} results` : "no results");
}

function showLabels(prediction) {
  $("grid").replaceChildren();
  const list = $("labels-result");
  list.replaceChildren();
  for (const item of prediction.top_k) {
    const li = document.createElement("li");
    li.className = "label";
    li.textContent = `${item.label}: ${(100 * item.score).toFixed(1)}%`;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.round(200 * item.score)}px`;
    li.append(bar);
    list.append(li);
  }
  setMessage(`label: ${prediction.label}`);
}

async function withBusy(button, work) {
  button.disabled = true;
  setMessage("working…");
  try {
    await work();
  } catch (err) {
    setMessage(err.message, true);
  } finally {
    button.disabled = false;
  }
}

$("text-form").addEventListener("submit", (event) => {
  event.preventDefault();
  withBusy($("search-button"), async () => {
    const body = await callApi("/v1/search", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text: $("query").value, k: Number($("k").value) || 12 }),
    });
    showResults(body.results);
  });
});

$("image-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const file = $("image").files[0];
  if (!file) return;
  withBusy($("image-button"), async () => {
    const form = new FormData();
    if ($("mode").value === "classify") {
      form.append("files", file);
      form.append("labels", $("labels").value);
      form.append("k", "5");
      const body = await callApi("/v1/classify", { method: "POST", body: form });
      showLabels(body.predictions[0]);
    } else {
      form.append("file", file);
      form.append("k", String(Number($("k").value) || 12));
      const body = await callApi("/v1/search/image", { method: "POST", body: form });
      showResults(body.results);
    }
  });
});

async function pollReady() {
  try {
    const info = await callApi("/readyz");
    $("status").textContent = `${info.model} · ${info.index_size} images indexed`;
  } catch (err) {
    $("status").textContent = `not ready (${err.message})`;
    setTimeout(pollReady, 1000);
  }
}
pollReady();

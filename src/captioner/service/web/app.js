// captioner web page: pick or drop an image, preview it, POST it to /generate-caption/, show the captions.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const input = $("file"), drop = $("drop"), preview = $("preview"), statusEl = $("status");
  const captionEl = $("caption"), list = $("candidates"), tagsEl = $("tags"), confidenceEl = $("confidence");
  let previewUrl = null;

  function setStatus(text, isError) {
    statusEl.textContent = text;
    statusEl.className = isError ? "error" : "";
  }

  async function send(file) {
    if (!file) return;
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    preview.src = previewUrl;
    preview.hidden = false;
    $("drop-text").hidden = true;
    captionEl.textContent = "";
    confidenceEl.textContent = "";
    list.replaceChildren();
    tagsEl.replaceChildren();
    setStatus("Captioning…", false);

    const params = new URLSearchParams({ strategy: $("strategy").value });
    if (params.get("strategy") === "beam") {
      const beam = Math.max(1, parseInt($("beam_size").value, 10) || 3);
      params.set("beam_size", String(beam));
      params.set("n_best", String(Math.min(beam, Math.max(1, parseInt($("n_best").value, 10) || 1))));
    }
    if ($("gender_neutral").checked) params.set("gender_neutral", "true");
    const body = new FormData();
    body.append("file", file);
    const headers = {};
    if ($("api_key").value) headers["X-API-Key"] = $("api_key").value;
    try {
      const response = await fetch("/generate-caption/?" + params, { method: "POST", body, headers });
      const data = await response.json().catch(() => ({}));
      if (!response.ok) {
        setStatus((data.title || "Error " + response.status) + ": " + (data.detail || ""), true);
        return;
      }
      captionEl.textContent = data.caption || "(no caption)";
      if (typeof data.confidence === "number") {
        confidenceEl.textContent = "confidence " + Math.round(100 * data.confidence) + "%";
      }
      for (const t of data.tags || []) {  // textContent only: labels are data, never markup
        const li = document.createElement("li");
        li.textContent = t.label + " " + Math.round(100 * t.probability) + "%";
        tagsEl.appendChild(li);
      }
      for (const c of data.candidates || []) {
        const li = document.createElement("li");
        li.textContent = c.caption + "  (score " + Number(c.score).toFixed(2) + ")";
        list.appendChild(li);
      }
      setStatus((data.cached ? "From cache · " : "") + Math.round(data.timings_ms.total) + " ms · model " + data.model_version, false);
    } catch (err) {
      setStatus("Network error: " + err, true);
    }
  }

  input.addEventListener("change", () => send(input.files[0]));
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => send(e.dataTransfer.files[0]));
})();

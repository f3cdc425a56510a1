/* Try a photo: POST the chosen frame to /ui/predict, draw the answer, filter by score client-side. */
"use strict";
(function () {
  const form = document.getElementById("try-form");
  const input = document.getElementById("file");
  const dropZone = document.getElementById("drop-zone");
  const status = document.getElementById("try-status");
  const section = document.getElementById("try-result");
  const slider = document.getElementById("threshold");
  const sliderValue = document.getElementById("threshold-value");
  const svg = document.getElementById("try-frame");
  const tableBody = document.querySelector("#detections-table tbody");
  const jsonBlock = document.getElementById("predict-json");
  const shownCount = document.getElementById("shown-count");
  let current = null;  // {imageUrl, width_px, height_px, detections, fileName}

  function redraw() {
    if (!current) return;
    const threshold = Number(slider.value);
    sliderValue.textContent = threshold.toFixed(2);
    current.titleText = (n) => `Frame ${current.fileName} with ${n} of ${current.detections.length} detections at score ${threshold.toFixed(2)} or more`;
    const shown = SorterBot.drawFrame(svg, current, threshold);
    shownCount.textContent = `${shown} of ${current.detections.length} detections shown (score ${threshold.toFixed(2)} or more).`;
    tableBody.replaceChildren();
    current.detections.filter((d) => d.score >= threshold).forEach((d, i) => {
      const row = document.createElement("tr");
      for (const value of [i + 1, d.class, d.score.toFixed(4), d.box_xyxy.map((v) => v.toFixed(1)).join(", ")]) {
        const cell = document.createElement("td");
        cell.textContent = String(value);
        row.appendChild(cell);
      }
      tableBody.appendChild(row);
    });
  }

  async function detect(file) {
    status.textContent = `Detecting objects in ${file.name}…`;
    const body = new FormData();
    body.append("file", file);
    let response;
    try {
      response = await fetch(form.action, { method: "POST", body: body, credentials: "same-origin",
                                            headers: { "X-CSRFToken": SorterBot.csrfToken(), Accept: "application/json" } });
    } catch (error) {
      status.textContent = `The service could not be reached: ${error}`;
      return;
    }
    const answer = await response.json().catch(() => null);
    if (!response.ok || answer === null) {
      status.textContent = `Not accepted (${response.status}): ${answer && answer.detail ? answer.detail : response.statusText}`;
      return;
    }
    if (current && current.imageUrl) URL.revokeObjectURL(current.imageUrl);
    current = { imageUrl: URL.createObjectURL(file), width_px: answer.width_px, height_px: answer.height_px,
                detections: answer.detections, fileName: file.name };
    jsonBlock.textContent = JSON.stringify(answer, null, 2);
    section.hidden = false;
    redraw();
    status.textContent = `${answer.detections.length} detections in ${file.name} (${answer.width_px} × ${answer.height_px} px).`;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.files.length) detect(input.files[0]);
  });
  input.addEventListener("change", () => { if (input.files.length) detect(input.files[0]); });
  slider.addEventListener("input", redraw);
  for (const name of ["dragenter", "dragover"]) {
    dropZone.addEventListener(name, (event) => { event.preventDefault(); dropZone.classList.add("dragging"); });
  }
  for (const name of ["dragleave", "drop"]) {
    dropZone.addEventListener(name, () => dropZone.classList.remove("dragging"));
  }
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) detect(file);
  });
})();

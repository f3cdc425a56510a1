/* Session page: frame thumbnails with their boxes, refreshed by polling frames.json while the arm posts. */
"use strict";
(function () {
  const list = document.getElementById("frames");
  const summary = document.getElementById("frames-summary");
  const url = list.dataset.framesUrl;
  const pollMs = Number(list.dataset.pollMs) || 2000;
  let version = null;

  function render(payload) {
    if (payload.version === version) return;
    version = payload.version;
    list.replaceChildren();
    for (const frame of payload.frames) {
      const item = document.createElement("li");
      item.className = "thumbnail";
      item.dataset.imageName = frame.image_name;
      const figure = document.createElement("figure");
      const svg = SorterBot.svgElement("svg", { class: "frame", role: "img", "aria-labelledby": `frame-title-${frame.image_name}` });
      const title = SorterBot.svgElement("title", { id: `frame-title-${frame.image_name}` });
      svg.appendChild(title);
      frame.imageUrl = `${frame.image_url}?v=${encodeURIComponent(frame.updated_at)}`;
      const items = frame.detections.filter((d) => d.class === "item").length;
      frame.titleText = (n) => `Frame ${frame.image_name} at base pulse width ${frame.pw0} µs: ${items} items and ${n - items} containers detected`;
      SorterBot.drawFrame(svg, frame, 0);
      const caption = document.createElement("figcaption");
      const link = document.createElement("a");
      link.href = frame.image_url;
      link.textContent = frame.image_name;
      caption.append(link, ` · ${frame.detections.length} detections`);
      figure.append(svg, caption);
      item.appendChild(figure);
      list.appendChild(item);
    }
    summary.textContent = `${payload.n_frames} frames, ${payload.n_detections} detections.`;
  }

  async function poll() {
    if (document.visibilityState === "hidden") {  // a tab in the background asks again once shown
      document.addEventListener("visibilitychange", poll, { once: true });
      return;
    }
    try {
      const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (response.ok) render(await response.json());
    } catch (error) {
      /* the next poll tries again */
    }
    window.setTimeout(poll, pollMs);
  }

  render(JSON.parse(document.getElementById("frames-data").textContent));
  window.setTimeout(poll, pollMs);
})();

/* Drawing shared by the console's pages: a frame with its detections as inline SVG. */
"use strict";
(function () {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const CLASS_COLOURS = { item: "#0060b0", container: "#b85a00" };

  function svgElement(name, attributes) {
    const element = document.createElementNS(SVG_NS, name);
    for (const [key, value] of Object.entries(attributes || {})) element.setAttribute(key, String(value));
    return element;
  }

  /**
   * Draw a frame and the detections scoring at least `threshold` into `svg`.
   * frame: {imageUrl, width_px, height_px, detections: [{class, box_xyxy: [x0, y0, x1, y1] px, score}]}.
   * Keeps the svg's <title>; returns the number of boxes drawn.
   */
  function drawFrame(svg, frame, threshold) {
    const title = svg.querySelector("title");
    while (svg.lastChild && svg.lastChild !== title) svg.removeChild(svg.lastChild);
    if (title && svg.firstChild !== title) svg.insertBefore(title, svg.firstChild);
    const width = frame.width_px, height = frame.height_px;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.appendChild(svgElement("image", { href: frame.imageUrl, x: 0, y: 0, width: width, height: height }));
    const stroke = Math.max(2, width / 250), font = Math.max(12, width / 45);
    let shown = 0;
    for (const detection of frame.detections) {
      if (detection.score < threshold) continue;
      shown += 1;
      const [x0, y0, x1, y1] = detection.box_xyxy;
      const colour = CLASS_COLOURS[detection.class] || "#000000";
      const group = svgElement("g", { class: "box", "data-class": detection.class, "data-score": detection.score });
      const label = `${detection.class} ${detection.score.toFixed(2)}`;
      const tip = svgElement("title");
      tip.textContent = `${label}, box ${detection.box_xyxy.map((v) => Math.round(v)).join(", ")}`;
      group.appendChild(tip);
      group.appendChild(svgElement("rect", { x: x0, y: y0, width: x1 - x0, height: y1 - y0, fill: "none",
                                             stroke: colour, "stroke-width": stroke }));
      const labelY = y0 > font * 1.3 ? y0 - font * 1.3 : y1;
      group.appendChild(svgElement("rect", { x: x0, y: labelY, width: label.length * font * 0.62, height: font * 1.3,
                                             fill: colour }));
      const text = svgElement("text", { x: x0 + font * 0.2, y: labelY + font, "font-size": font, fill: "#ffffff" });
      text.textContent = label;
      group.appendChild(text);
      svg.appendChild(group);
    }
    if (title) title.textContent = frame.titleText ? frame.titleText(shown) : title.textContent;
    return shown;
  }

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  window.SorterBot = { drawFrame: drawFrame, csrfToken: csrfToken, svgElement: svgElement };
})();

// The slice viewer of a study's result: the previous and next buttons, the slider, the overlay checkboxes and the
// arrow keys change the slice picture in place (server-rendered pictures, listed in #slice-data). Without this
// file the same controls are links and a form that reload the page at the chosen slice.
(function () {
  "use strict";
  var viewer = document.getElementById("slice-viewer");
  var data = document.getElementById("slice-data");
  if (!viewer || !data) { return; }
  var info = JSON.parse(data.textContent);
  var n = info.urls.length;
  var current = parseInt(viewer.getAttribute("data-current"), 10) || 1;
  var picture = document.getElementById("slice-picture");
  var range = document.getElementById("slice-number");
  var label = document.getElementById("slice-label");
  var caption = document.getElementById("slice-caption");
  var region = document.getElementById("layer-region");
  var oedema = document.getElementById("layer-oedema");
  var gradcam = document.getElementById("layer-gradcam");     // absent when the segmenter has no Grad-CAM
  var show = document.getElementById("slice-show");
  if (show) { show.hidden = true; }     // the controls act at once

  function layer() {
    if (gradcam && gradcam.checked) { return "gradcam"; }
    return oedema.checked ? "oedema" : (region.checked ? "region" : "image");
  }

  function render() {
    var urls = info.urls[current - 1];
    picture.src = urls[layer()];
    var parts = ["Slice " + current + " of " + n];
    if (layer() === "gradcam") { parts.push("Grad-CAM of the region"); }
    else {
      if (region.checked) { parts.push("disease region"); }
      if (oedema.checked) { parts.push("oedema"); }
    }
    picture.alt = parts.join(", ");
    range.value = String(current);
    range.setAttribute("aria-valuetext", "slice " + current + " of " + n);
    label.textContent = "slice " + current + " of " + n;
    caption.textContent = "Slice " + current + (info.asas.indexOf(current) >= 0 ? ": meets the ASAS definition" : "");
    Array.prototype.forEach.call(viewer.querySelectorAll("tr[data-slice]"), function (row) {
      var on = parseInt(row.getAttribute("data-slice"), 10) === current;
      row.classList.toggle("is-current", on);
      if (on) { row.setAttribute("aria-current", "true"); } else { row.removeAttribute("aria-current"); }
    });
  }

  function go(k) {
    current = Math.max(1, Math.min(n, k));
    render();
  }

  Array.prototype.forEach.call(viewer.querySelectorAll("[data-step]"), function (button) {
    button.addEventListener("click", function (event) {
      event.preventDefault();
      go(current + parseInt(button.getAttribute("data-step"), 10));
    });
  });
  Array.prototype.forEach.call(viewer.querySelectorAll("tr[data-slice] a"), function (link) {
    link.addEventListener("click", function (event) {
      event.preventDefault();
      go(parseInt(link.closest("tr").getAttribute("data-slice"), 10));
    });
  });
  range.addEventListener("input", function () { go(parseInt(range.value, 10)); });
  region.addEventListener("change", render);
  oedema.addEventListener("change", render);
  if (gradcam) { gradcam.addEventListener("change", render); }
  viewer.addEventListener("keydown", function (event) {
    if (event.target === range) { return; }          // the slider handles its own arrow keys
    if (event.key === "ArrowLeft" || event.key === "ArrowUp") { event.preventDefault(); go(current - 1); }
    if (event.key === "ArrowRight" || event.key === "ArrowDown") { event.preventDefault(); go(current + 1); }
  });
  viewer.setAttribute("tabindex", "-1");
})();

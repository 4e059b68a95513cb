// Upload page helpers. The form works without this file: all tasks' models are listed
// and the server uses only the chosen task's ticked models.
(function () {
  "use strict";
  var form = document.getElementById("upload-form");
  if (!form) { return; }
  var select = document.getElementById("task-select");
  var button = document.getElementById("analyse-button");
  var progress = document.getElementById("upload-progress");

  // Show only the chosen task's models and description; hidden boxes are also disabled
  // so they are not sent.
  function filterByTask() {
    if (!select) { return; }
    var chosen = select.value;
    var blocks = document.querySelectorAll("[data-task]");
    Array.prototype.forEach.call(blocks, function (el) {
      var on = el.getAttribute("data-task") === chosen;
      el.hidden = !on;
      Array.prototype.forEach.call(el.querySelectorAll("input[type=checkbox]"), function (box) {
        if (!box.hasAttribute("data-unavailable")) { box.disabled = !on; }
      });
    });
  }
  Array.prototype.forEach.call(form.querySelectorAll("input[type=checkbox][disabled]"), function (box) {
    box.setAttribute("data-unavailable", "1");
  });
  if (select) {
    select.addEventListener("change", filterByTask);
    filterByTask();
  }

  form.addEventListener("submit", function () {
    if (button) {
      // Disable after the browser has captured the form data, so the click still submits.
      window.setTimeout(function () { button.disabled = true; }, 0);
      button.value = "Analysing…";
    }
    if (progress) { progress.hidden = false; }
  });

  // Coming back with the browser's back button: the page may be restored as it was left.
  window.addEventListener("pageshow", function () {
    if (button) { button.disabled = false; button.value = "Analyse"; }
    if (progress) { progress.hidden = true; }
  });
}());

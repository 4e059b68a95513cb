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

  // As soon as a file is chosen, ask the server what it looks like (nothing is stored) and suggest
  // the task that reads it. A task the user chose by hand is never changed, only warned about.
  var fileInput = form.querySelector("input[type=file]");
  var hint = document.getElementById("recognition-hint");
  var csrf = form.querySelector("input[name=csrf_token]");
  var chosenByHand = false;
  var lastAnswer = null;   // the recogniser's answer for the chosen file, re-read when the task changes
  if (select) {
    select.addEventListener("change", function () {
      chosenByHand = true;
      if (lastAnswer) { suggest(lastAnswer); }
    });
  }

  function showHint(text, mismatch) {
    if (!hint) { return; }
    hint.textContent = text;
    hint.hidden = !text;
    hint.classList.toggle("is-mismatch", !!mismatch);
  }

  function suggest(answer) {
    lastAnswer = answer;
    var seen = answer.recognised;
    var sure = Math.round(100 * seen.probability) + "%";
    var task = answer.suggested_task;
    if (task && select && !chosenByHand && select.value !== task) {
      select.value = task;
      filterByTask();
    }
    var refusal = select ? answer.refusals[select.value] : null;
    if (refusal) {
      showHint(refusal, true);
    } else {
      showHint("This looks like " + seen.label + " (" + sure + ")." +
               (task && select && select.value === task ? " The matching task is chosen." : ""), false);
    }
  }

  if (fileInput && form.getAttribute("data-recognise-url") && window.fetch && window.FormData) {
    fileInput.addEventListener("change", function () {
      showHint("", false);
      lastAnswer = null;
      if (!fileInput.files || !fileInput.files.length) { return; }
      var body = new FormData();
      body.append("file", fileInput.files[0]);
      fetch(form.getAttribute("data-recognise-url"), {
        method: "POST", body: body, credentials: "same-origin",
        headers: csrf ? {"X-CSRFToken": csrf.value} : {}
      }).then(function (response) {
        return response.json().then(function (data) { return {ok: response.ok, data: data}; });
      }).then(function (result) {
        if (result.ok) { suggest(result.data); }
        else if (result.data && result.data.error) { showHint(result.data.error.message, true); }
      }).catch(function () { showHint("", false); });
    });
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

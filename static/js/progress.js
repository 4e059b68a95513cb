// Progress of a queued or running run: polls the status endpoint, updates the list of stages, and reloads
// the page (which then shows the result or the failure) once the run has ended. The page works without this
// file: it refreshes itself every few seconds (the noscript refresh).
(function () {
  "use strict";
  var card = document.getElementById("run-progress");
  if (!card || !window.fetch) { return; }
  var url = card.getAttribute("data-status-url");
  var list = document.getElementById("progress-stages");
  var title = document.getElementById("progress-title");
  var words = { done: "done", current: "in progress", waiting: "waiting", failed: "failed" };
  var delay = 500;

  function render(body) {
    title.textContent = body.status === "queued" ? "Waiting in the queue" : "Analysing";
    body.stages.forEach(function (stage) {
      var item = list.querySelector('[data-key="' + stage.key + '"]');
      if (!item) { return; }
      item.className = "stage stage-" + stage.state;
      if (stage.state === "current") { item.setAttribute("aria-current", "step"); }
      else { item.removeAttribute("aria-current"); }
      var state = item.querySelector(".stage-state");
      if (state) { state.textContent = "(" + words[stage.state] + ")"; }
    });
  }

  function poll() {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("status " + response.status); }
        return response.json();
      })
      .then(function (body) {
        if (body.settled) { window.location.reload(); return; }
        render(body);
        delay = Math.min(delay * 1.3, 3000);
        window.setTimeout(poll, delay);
      })
      .catch(function () { window.setTimeout(poll, 5000); });
  }
  window.setTimeout(poll, delay);
})();

// A live run's page: ask for the run's status every poll-ms; when it or a node changed, fetch
// the page's changing part again. Stops once the run has ended (after showing its end).
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || live.dataset.terminal === "yes") { return; }
  var every = parseInt(live.dataset.pollMs, 10) || 1000;
  var last = null;

  function state(run) {
    return run.status + " " + JSON.stringify(run.nodes) + JSON.stringify(run.maps) + " " + run.events;
  }

  function refresh() {
    return fetch(live.dataset.liveUrl, { credentials: "same-origin" })
      .then(function (r) { return r.text(); })
      .then(function (html) { live.innerHTML = html; });
  }

  function poll() {
    fetch(live.dataset.statusUrl, { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (run) {
        var now = state(run);
        var ended = ["finished", "failed", "canceled"].indexOf(run.status) >= 0;
        var changed = last !== null && now !== last;
        last = now;
        if (changed || ended) {
          // A run that ended reloads whole: its buttons change too (cancel -> retry).
          if (ended) { window.location.reload(); return; }
          refresh().then(function () { setTimeout(poll, every); });
          return;
        }
        setTimeout(poll, every);
      })
      .catch(function () { setTimeout(poll, every * 3); });
  }
  setTimeout(poll, every);
})();

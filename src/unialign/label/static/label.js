// unialign labelling: keyboard shortcuts. 1/← left better, 2/→ right better, 3/= equally good,
// s skip (asks for a reason), u undo the last label. The server maps left/right to the stored
// candidates; this script only presses the buttons and measures the time to decide.
(function () {
  "use strict";
  var shown = performance.now();
  var busy = false;
  var labelForm = document.getElementById("label-form");
  var skipForm = document.getElementById("skip-form");
  var undoForm = document.getElementById("undo-form");

  function stampLatency(form) {
    var field = form.querySelector("input[name=latency_ms]");
    if (field) field.value = String(Math.round(performance.now() - shown));
  }

  function press(choice) {
    if (busy || !labelForm) return;
    var button = labelForm.querySelector("button[data-key=" + choice + "]");
    if (!button) return;
    busy = true;
    stampLatency(labelForm);
    labelForm.requestSubmit(button);
  }

  function openSkip() {
    if (!skipForm) return;
    skipForm.hidden = false;
    skipForm.querySelector("input[name=reason]").focus();
  }

  function closeSkip() {
    if (!skipForm) return;
    skipForm.hidden = true;
    skipForm.querySelector("input[name=reason]").value = "";
  }

  if (labelForm) {
    labelForm.addEventListener("submit", function () {
      busy = true;
      stampLatency(labelForm);
    });
  }
  if (skipForm) {
    skipForm.addEventListener("submit", function () {
      busy = true;
      stampLatency(skipForm);
    });
    document.getElementById("skip-open").addEventListener("click", openSkip);
    document.getElementById("skip-cancel").addEventListener("click", closeSkip);
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    var target = event.target;
    var typing = target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA");
    if (typing) {
      if (event.key === "Escape") closeSkip();
      return;
    }
    var key = event.key;
    if (key === "1" || key === "ArrowLeft") press("left");
    else if (key === "2" || key === "ArrowRight") press("right");
    else if (key === "3" || key === "=") press("tie");
    else if (key === "s" || key === "S") openSkip();
    else if (key === "u" || key === "U") {
      if (busy || !undoForm) return;
      busy = true;
      undoForm.requestSubmit();
    } else return;
    event.preventDefault();
  });
})();

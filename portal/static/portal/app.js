// Small progressive enhancements shared by every page.
(function () {
  "use strict";
  // Copy buttons: <button data-copy="#selector">; the text of the target goes to the clipboard.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button || !navigator.clipboard) { return; }
    var target = document.querySelector(button.dataset.copy);
    if (!target) { return; }
    navigator.clipboard.writeText(target.textContent.trim()).then(function () {
      var label = button.textContent;
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = label; }, 1500);
    });
  });
  // Search forms: <form data-results="#region">. What the region shows always answers the form
  // as it stands: a value the browser refuses (a start at 10:30 where only whole hours are
  // allowed) blocks the request, so the old results give way to the refusal; an edit not yet
  // sent marks them out of date until the new answer arrives.
  function resultsOf(form) {
    return form && form.dataset && form.dataset.results ? document.querySelector(form.dataset.results) : null;
  }
  function labelOf(field) {
    var label = field.labels && field.labels[0];
    return label ? label.firstChild.textContent.trim() : field.name;
  }
  function refusedFields(form) {
    return Array.prototype.filter.call(form.elements, function (field) {
      var refused = field.willValidate && !field.checkValidity();
      if (field.willValidate) { field.setAttribute("aria-invalid", refused ? "true" : "false"); }
      return refused;
    });
  }
  function showRefusal(form) {
    var region = resultsOf(form);
    var refused = region ? refusedFields(form) : [];
    if (!refused.length) { return false; }
    var card = document.createElement("div");
    card.className = "card";
    card.setAttribute("data-testid", "search-invalid");
    var box = document.createElement("div");
    box.className = "form-error";
    box.setAttribute("role", "alert");
    refused.forEach(function (field) {
      var line = document.createElement("div");
      line.textContent = labelOf(field) + ": " + field.validationMessage;
      box.appendChild(line);
    });
    card.appendChild(box);
    region.classList.remove("offerings-stale");
    region.replaceChildren(card);
    return true;
  }
  function markStale(form) {
    var region = resultsOf(form);
    if (!region || region.classList.contains("offerings-stale") || region.querySelector("[data-testid=search-invalid]")) { return; }
    region.classList.add("offerings-stale");
    var note = document.createElement("p");
    note.className = "alert alert-warning offerings-stale-note";
    note.setAttribute("data-testid", "search-stale");
    note.textContent = "The form has changed: these results are for the search before. Press Find capacity to update them.";
    region.prepend(note);
  }
  document.addEventListener("invalid", function (event) {
    if (event.target.form && resultsOf(event.target.form)) { showRefusal(event.target.form); }
  }, true);
  document.addEventListener("htmx:validation:halted", function (event) { showRefusal(event.target); });
  document.addEventListener("input", function (event) {
    var form = event.target.form;
    if (!resultsOf(form)) { return; }
    if (!showRefusal(form)) { markStale(form); }
  });
  document.addEventListener("htmx:afterSwap", function (event) {
    if (event.target.classList) { event.target.classList.remove("offerings-stale"); }
  });
  // On a narrow screen the section tabs scroll sideways: bring the current one into view.
  document.addEventListener("DOMContentLoaded", function () {
    var nav = document.querySelector(".sidenav");
    var current = nav && nav.querySelector('a[aria-current="page"]');
    if (current && nav.scrollWidth > nav.clientWidth) {
      nav.scrollLeft = current.offsetLeft - (nav.clientWidth - current.offsetWidth) / 2;
    }
  });
  // A region that scrolls sideways (a wide table, a long command on a phone) takes keyboard
  // focus, so it scrolls without a mouse; one that fits stays out of the tab order.
  function focusableWhenScrolling() {
    document.querySelectorAll(".table-wrap, code.wrap").forEach(function (region) {
      if (region.scrollWidth > region.clientWidth) {
        region.setAttribute("tabindex", "0");
      } else if (region.getAttribute("tabindex") === "0") {
        region.removeAttribute("tabindex");
      }
    });
  }
  document.addEventListener("DOMContentLoaded", focusableWhenScrolling);
  document.addEventListener("htmx:afterSettle", focusableWhenScrolling);
  window.addEventListener("resize", focusableWhenScrolling);
})();

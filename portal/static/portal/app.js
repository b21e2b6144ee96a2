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

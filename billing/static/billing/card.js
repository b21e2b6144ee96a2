// The card forms: Stripe.js card Element, confirmCardSetup to collect a card, the payment
// made by our server, confirmCardPayment for 3-D Secure, and the hold countdown.
(function () {
  "use strict";

  function startCountdowns() {
    document.querySelectorAll("[data-countdown]").forEach(function (el) {
      var until = new Date(el.dataset.countdown).getTime();
      function tick() {
        var left = Math.max(0, Math.round((until - Date.now()) / 1000));
        el.textContent = left > 0 ? Math.floor(left / 60) + ":" + String(left % 60).padStart(2, "0") : "no time";
        if (left > 0) { setTimeout(tick, 1000); } else { el.classList.add("expired"); }
      }
      tick();
    });
  }

  function csrfToken() {
    var field = document.querySelector("[name=csrfmiddlewaretoken]");
    return field ? field.value : "";
  }

  function poll(url) {
    // The answer is a partial that keeps polling itself until the payment settles, and tells
    // htmx to go to the reservation once it has.
    window.htmx.ajax("GET", url, { target: "#payment-status", swap: "outerHTML" });
  }

  function setupCardForm(form) {
    var errors = document.getElementById("card-errors");
    if (typeof window.Stripe !== "function") {
      errors.textContent = "The payment form could not load. Check your connection and reload the page.";
      return;
    }
    var stripe = window.Stripe(form.dataset.publishableKey);
    var mode = form.dataset.mode;
    var card = null;
    if (mode !== "action") {
      card = stripe.elements().create("card", { hidePostalCode: true });
      card.mount("#card-element");
    }
    var button = form.querySelector("button[type=submit]");
    var label = button.textContent;

    function fail(message) {
      errors.textContent = message || "The card was not accepted.";
      button.disabled = false;
      button.textContent = label;
    }

    function authenticate(secret, statusUrl) {
      button.textContent = "Waiting for your bank…";
      return stripe.confirmCardPayment(secret).then(function (result) {
        if (result.error) { return fail(result.error.message); }
        button.textContent = "Paid — confirming…";
        poll(statusUrl);
      });
    }

    function charge(paymentMethod) {
      var body = new FormData();
      body.append("payment_method", paymentMethod);
      body.append("attempt", form.dataset.attempt);
      var makeDefault = form.querySelector("[name=make_default]");
      if (makeDefault && makeDefault.checked) { body.append("make_default", "on"); }
      return fetch(form.dataset.payUrl, {
        method: "POST", body: body, credentials: "same-origin",
        headers: { "X-CSRFToken": csrfToken(), "Accept": "application/json" },
      }).then(function (response) {
        return response.json().then(function (answer) {
          if (answer.attempt) { form.dataset.attempt = answer.attempt; }
          if (answer.client_secret && answer.error) { form.dataset.clientSecret = answer.client_secret; }
          if (answer.error) { return fail(answer.error); }
          if (answer.status === "succeeded") { window.location.assign(answer.redirect); return null; }
          if (answer.status === "requires_action") { return authenticate(answer.client_secret, answer.status_url); }
          poll(answer.status_url);
          return null;
        });
      }).catch(function () { fail("We could not reach the server. Check your connection and try again."); });
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      button.disabled = true;
      button.textContent = "Working…";
      errors.textContent = "";
      var secret = form.dataset.clientSecret;
      if (mode === "action") { authenticate(secret, form.dataset.statusUrl); return; }
      stripe.confirmCardSetup(secret, { payment_method: { card: card } }).then(function (result) {
        if (result.error) { return fail(result.error.message); }
        var method = result.setupIntent.payment_method;
        method = typeof method === "string" ? method : method.id;
        if (mode === "setup") {
          form.querySelector("[name=setup_intent]").value = result.setupIntent.id;
          HTMLFormElement.prototype.submit.call(form);
          return null;
        }
        button.textContent = "Paying…";
        return charge(method);
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    startCountdowns();
    var form = document.getElementById("card-form");
    if (form) { setupCardForm(form); }
  });
})();

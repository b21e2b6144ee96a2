// The card forms and the hold countdown. Paying: Stripe.js turns the card Element into a
// PaymentMethod, our server confirms the PaymentIntent with it, and only when the bank asks
// for 3-D Secure does confirmCardPayment show its prompt: once per payment. Saving a card:
// confirmCardSetup. Every error is told to the customer in a sentence of ours; the raw text
// goes to the console.
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

  function newAttempt() {
    var bytes = new Uint8Array(18);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return b.toString(16).padStart(2, "0"); }).join("");
  }

  function poll(url) {
    // The answer is a partial that keeps polling itself until the payment settles, and tells
    // htmx to go to the reservation once it has.
    window.htmx.ajax("GET", url, { target: "#payment-status", swap: "outerHTML" });
  }

  var UNREACHABLE = "We could not reach the payment service, so nothing was charged. Check your internet connection and try again.";
  var SERVER_TROUBLE = "Something went wrong on our side. Reload the page to see whether the payment went through before you try again.";
  var DECLINED = "Your bank declined this card. Try another card, or ask your bank why.";
  var NOT_AUTHENTICATED = "Your bank did not confirm the payment, so nothing was charged. Try again, or use another card.";

  // Stripe's codes (Stripe.js validation, card errors, our server's codes) in our words.
  var SENTENCES = {
    incomplete_number: "The card number is too short. Type all the digits on the card.",
    invalid_number: "That card number is not valid. Check it for a typo.",
    incomplete_expiry: "Enter the card's expiry date: the month and the year.",
    invalid_expiry_month: "The expiry month is not valid. Enter it as two digits, 01 to 12.",
    invalid_expiry_year: "The expiry year is not valid. Enter its last two digits, as on the card.",
    invalid_expiry_month_past: "This card has expired. Use another card.",
    invalid_expiry_year_past: "This card has expired. Use another card.",
    expired_card: "This card has expired. Use another card.",
    incomplete_cvc: "Enter the 3-digit security code from the back of the card.",
    invalid_cvc: "Enter the 3-digit security code from the back of the card.",
    incorrect_cvc: "The security code does not match the card. Check it and try again.",
    incorrect_number: "That card number is not valid. Check it for a typo.",
    card_declined: DECLINED,
    insufficient_funds: "Your bank declined this card: there are not enough funds. Use another card.",
    lost_card: DECLINED,
    stolen_card: DECLINED,
    processing_error: "Your bank could not process the card just now. Try again in a moment.",
    payment_intent_authentication_failure: NOT_AUTHENTICATED,
    setup_intent_authentication_failure: "Your bank did not confirm the card, so it was not saved. Try again, or use another card.",
    payment_provider_unavailable: "The payment service is not reachable right now, so nothing was charged. Try again in a minute.",
    stripe_not_configured: "Card payments are not available right now. Try again later or contact support.",
    stripe_misconfigured: "Card payments are not available right now. Try again later or contact support.",
    invalid_payment_method: "The card form did not finish. Enter the card again and pay.",
    payment_intent_unexpected_state: "This payment has already moved on. Reload the page to see where it stands.",
  };

  // What to tell the customer about a failure: `error` is Stripe.js's error object or our
  // server's answer ({error, code}); `empty` says the card field was never filled in.
  function sentence(error, empty, saving) {
    var code = error.code || "";
    if (code === "incomplete_number" && empty) {
      return saving ? "Enter the card number to save." : "Enter your card number to pay.";
    }
    if (error.decline_code && SENTENCES[error.decline_code]) { return SENTENCES[error.decline_code]; }
    if (SENTENCES[code]) { return SENTENCES[code]; }
    if (error.type === "api_connection_error") { return UNREACHABLE; }
    if (error.type === "card_error") { return DECLINED; }
    if (error.type === "api_error") { return SERVER_TROUBLE; }
    if (error.ours) { return error.message; }  // our server's own words (a lapsed hold, say)
    return "The payment did not go through. Check the card details and try again, or use another card.";
  }

  function setupCardForm(form) {
    var errors = document.getElementById("card-errors");
    var button = form.querySelector("button[type=submit]");
    var label = button.textContent;
    var mode = form.dataset.mode;
    if (typeof window.Stripe !== "function") {
      console.error("payment form: Stripe.js did not load");
      errors.textContent = "The payment form could not load. Check your connection and reload the page.";
      button.disabled = true;
      return;
    }
    var stripe = window.Stripe(form.dataset.publishableKey);
    var card = null;
    var empty = true;
    if (mode !== "action") {
      card = stripe.elements().create("card", { hidePostalCode: true });
      card.mount("#card-element");
      card.on("change", function (event) {
        empty = Boolean(event && event.empty);
        if (event && event.error) {
          console.warn("card field:", event.error.code, event.error.message);
          errors.textContent = sentence(event.error, empty, mode === "setup");
        } else {
          errors.textContent = "";
        }
      });
    }

    function fail(error, context) {
      // An expected refusal (a declined card, a field left empty) is a warning; a bug an error.
      var log = context === "page" ? console.error : console.warn;
      log("payment error (" + context + "):", error && (error.raw || error.message), JSON.stringify(error));
      errors.textContent = sentence(error || {}, empty, mode === "setup");
      button.disabled = false;
      button.textContent = label;
      if (card && error && /number/.test(error.code || "")) { card.focus(); }
      return null;
    }

    function authenticate(secret, statusUrl) {
      button.textContent = "Waiting for your bank…";
      return stripe.confirmCardPayment(secret).then(function (result) {
        if (result.error) {
          form.dataset.attempt = newAttempt();  // the next click is a new payment
          return fail(result.error, "3-D Secure");
        }
        button.textContent = "Paid — confirming…";
        poll(statusUrl);
        return null;
      });
    }

    function answered(response) {
      return response.text().then(function (text) {
        var answer = null;
        try { answer = JSON.parse(text); } catch (notJson) { answer = null; }
        if (!answer || typeof answer !== "object") {
          return fail({ type: "api_error", message: "HTTP " + response.status, raw: text.slice(0, 500) }, "server");
        }
        if (answer.attempt) { form.dataset.attempt = answer.attempt; }
        if (answer.error) {
          var trouble = response.status >= 500 && !answer.code;
          return fail({
            type: trouble ? "api_error" : "", ours: true, code: answer.code,
            decline_code: answer.decline_code, message: answer.error,
          }, "server " + response.status);
        }
        if (answer.status === "succeeded") { window.location.assign(answer.redirect); return null; }
        if (answer.status === "requires_action") { return authenticate(answer.client_secret, answer.status_url); }
        poll(answer.status_url);
        return null;
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
      }).then(answered, function (failure) {
        return fail({
          type: "api_connection_error", code: "",
          message: "Check your connection, then reload the page to see whether the payment went through.",
          raw: String(failure),
        }, "network");
      }).then(null, function (bug) { return fail({ raw: String(bug) }, "page"); });
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      button.disabled = true;
      button.textContent = "Working…";
      errors.textContent = "";
      var step;
      if (mode === "action") {
        step = authenticate(form.dataset.clientSecret, form.dataset.statusUrl);
      } else if (mode === "setup") {
        step = stripe.confirmCardSetup(form.dataset.clientSecret, { payment_method: { card: card } }).then(function (result) {
          if (result.error) { return fail(result.error, "card setup"); }
          form.querySelector("[name=setup_intent]").value = result.setupIntent.id;
          HTMLFormElement.prototype.submit.call(form);
          return null;
        });
      } else {
        step = stripe.createPaymentMethod({ type: "card", card: card }).then(function (result) {
          if (result.error) { return fail(result.error, "card"); }
          button.textContent = "Paying…";
          return charge(result.paymentMethod.id);
        });
      }
      Promise.resolve(step).then(null, function (bug) { fail({ raw: String(bug && bug.stack || bug) }, "page"); });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    startCountdowns();
    var form = document.getElementById("card-form");
    if (form) { setupCardForm(form); }
  });
})();

// A stand-in for Stripe.js v3, served by the local Stripe emulator at /js.stripe.com/v3/.
// It covers what the portal uses: a card Element, createPaymentMethod, confirmCardSetup,
// confirmCardPayment / handleCardAction, and a bank's 3-D Secure prompt. Like Stripe.js it
// never throws: every call resolves to {error} or its result, and errors carry a `type`,
// a `code` and a `message` as Stripe's do.
(function () {
  "use strict";

  var script = document.currentScript;
  var BASE = script.src.replace(/\/js\.stripe\.com\/v3\/?(\?.*)?$/, "");

  function validation(code, message) {
    return { type: "validation_error", code: code, message: message };
  }

  function connectionError(raw) {
    return {
      type: "api_connection_error",
      code: "network_error",
      message: "Could not reach the payment provider: " + raw,
    };
  }

  function apiError(status, body) {
    var error = (body && body.error) || {};
    return {
      type: error.type || (status === 402 ? "card_error" : status >= 500 ? "api_error" : "invalid_request_error"),
      code: error.code || (status === 402 ? "card_declined" : ""),
      decline_code: error.decline_code || "",
      message: error.message || "HTTP " + status,
    };
  }

  function call(method, path, payload) {
    // A text/plain body keeps the request "simple": no CORS preflight, which localstripe lacks.
    var options = { method: method };
    if (payload) { options.body = JSON.stringify(payload); }
    return fetch(BASE + path, options).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        if (response.ok && !body.error) { return { body: body }; }
        return { error: apiError(response.status, body) };
      });
    }, function (failure) {
      return { error: connectionError(String(failure && failure.message || failure)) };
    });
  }

  // --- The card Element -----------------------------------------------------------------
  function digits(text) { return String(text || "").replace(/[\s-]/g, ""); }

  function luhn(number) {
    var sum = 0;
    for (var i = 0; i < number.length; i++) {
      var d = number.charCodeAt(number.length - 1 - i) - 48;
      if (i % 2 === 1) { d *= 2; if (d > 9) { d -= 9; } }
      sum += d;
    }
    return sum % 10 === 0;
  }

  var FIELDS = [
    { name: "number", label: "Card number", placeholder: "1234 1234 1234 1234", size: 19, autocomplete: "cc-number" },
    { name: "exp_month", label: "Expiry month (MM)", placeholder: "MM", size: 2, autocomplete: "cc-exp-month" },
    { name: "exp_year", label: "Expiry year (YY)", placeholder: "YY", size: 2, autocomplete: "cc-exp-year" },
    { name: "cvc", label: "Security code (CVC)", placeholder: "CVC", size: 4, autocomplete: "cc-csc" },
    { name: "postal_code", label: "Postal code", placeholder: "ZIP", size: 6, autocomplete: "postal-code" },
  ];

  function CardElement(group) {
    this._group = group;
    this._listeners = {};
    this._inputs = null;
    this._box = null;
  }

  CardElement.prototype.mount = function (target) {
    var host = typeof target === "string" ? document.querySelector(target) : target;
    if (!host) { throw new Error("The card Element has nowhere to mount: " + target); }
    if (this._box) { return; }
    var self = this;
    var box = document.createElement("div");
    box.className = "StripeElement";
    box.style.display = "flex";
    box.style.flexWrap = "wrap";
    box.style.gap = "6px";
    this._inputs = {};
    FIELDS.forEach(function (field) {
      var input = document.createElement("input");
      input.type = "text";
      input.name = "localstripe-" + field.name;
      input.setAttribute("aria-label", field.label);
      input.setAttribute("placeholder", field.placeholder);
      input.setAttribute("autocomplete", field.autocomplete);
      input.setAttribute("inputmode", field.name === "postal_code" ? "text" : "numeric");
      input.size = field.size;
      input.style.flex = field.name === "number" ? "1 1 10em" : "0 1 3.6em";
      input.style.minWidth = "0";
      input.addEventListener("input", function () { self._changed(field.name); });
      self._inputs[field.name] = input;
      box.appendChild(input);
    });
    host.appendChild(box);
    this._box = box;
  };

  CardElement.prototype._raw = function () {
    var inputs = this._inputs || {};
    var value = {};
    FIELDS.forEach(function (field) { value[field.name] = inputs[field.name] ? inputs[field.name].value.trim() : ""; });
    return value;
  };

  // The card as Stripe's API wants it, or the first thing wrong with it (Stripe's codes).
  CardElement.prototype._card = function () {
    if (!this._inputs) { return { error: validation("incomplete_number", "Your card number is incomplete.") }; }
    var raw = this._raw();
    var number = digits(raw.number);
    if (!number) { return { error: validation("incomplete_number", "Your card number is incomplete.") }; }
    if (/\D/.test(number)) { return { error: validation("invalid_number", "Your card number is invalid.") }; }
    if (number.length < 16) { return { error: validation("incomplete_number", "Your card number is incomplete.") }; }
    if (number.length > 16 || !luhn(number)) { return { error: validation("invalid_number", "Your card number is invalid.") }; }
    if (!raw.exp_month || !raw.exp_year) { return { error: validation("incomplete_expiry", "Your card's expiration date is incomplete.") }; }
    var month = /^\d{1,2}$/.test(raw.exp_month) ? parseInt(raw.exp_month, 10) : 0;
    if (month < 1 || month > 12) { return { error: validation("invalid_expiry_month", "Your card's expiration month is invalid.") }; }
    if (!/^\d{2}$|^\d{4}$/.test(raw.exp_year)) { return { error: validation("invalid_expiry_year", "Your card's expiration year is invalid.") }; }
    var year = parseInt(raw.exp_year, 10);
    if (year < 100) { year += 2000; }
    var today = new Date();
    var thisMonth = today.getFullYear() * 12 + today.getMonth() + 1;
    if (year * 12 + month < thisMonth) {
      var past = year < today.getFullYear() ? "invalid_expiry_year_past" : "invalid_expiry_month_past";
      return { error: validation(past, year < today.getFullYear() ? "Your card's expiration year is in the past." : "Your card's expiration date is in the past.") };
    }
    if (!/^\d{3}$/.test(raw.cvc)) { return { error: validation("incomplete_cvc", "Your card's security code is incomplete.") }; }
    return {
      card: { number: number, exp_month: month, exp_year: year, cvc: raw.cvc },
      postal_code: raw.postal_code,
    };
  };

  CardElement.prototype._changed = function (field) {
    var raw = this._raw();
    var empty = FIELDS.every(function (f) { return !raw[f.name]; });
    var checked = this._card();
    var error = checked.error || null;
    // Like Stripe, say nothing about a field the customer is still typing in.
    var typing = error && ((field === "number" && error.code === "incomplete_number") ||
      (field !== "number" && /^incomplete_/.test(error.code)));
    if (field === "number" && digits(raw.number).length === 16) { this._inputs.exp_month.focus(); }
    var event = { elementType: "card", empty: empty, complete: !error, error: typing ? undefined : error || undefined };
    (this._listeners.change || []).forEach(function (handler) { handler(event); });
  };

  CardElement.prototype.on = function (name, handler) {
    (this._listeners[name] = this._listeners[name] || []).push(handler);
    return this;
  };
  CardElement.prototype.off = function (name, handler) {
    this._listeners[name] = (this._listeners[name] || []).filter(function (h) { return h !== handler; });
    return this;
  };
  CardElement.prototype.focus = function () { if (this._inputs) { this._inputs.number.focus(); } };
  CardElement.prototype.blur = function () { if (document.activeElement) { document.activeElement.blur(); } };
  CardElement.prototype.clear = function () {
    var inputs = this._inputs || {};
    Object.keys(inputs).forEach(function (name) { inputs[name].value = ""; });
  };
  CardElement.prototype.update = function () {};
  CardElement.prototype.unmount = function () {
    if (this._box) { this._box.remove(); }
    this._box = null;
    this._inputs = null;
  };
  CardElement.prototype.destroy = function () {
    this.unmount();
    if (this._group._card === this) { this._group._card = null; }
  };

  // --- The bank's 3-D Secure prompt -------------------------------------------------------
  function askBank(what) {
    console.log("localstripe: 3-D Secure prompt (" + what + ")");
    return new Promise(function (resolve) {
      var back = document.createElement("div");
      var box = document.createElement("div");
      var title = document.createElement("h2");
      var text = document.createElement("p");
      var yes = document.createElement("button");
      var no = document.createElement("button");
      back.setAttribute("data-localstripe", "three-d-secure");
      Object.assign(back.style, { position: "fixed", inset: "0", background: "rgba(15,23,42,.45)", zIndex: "10000",
        display: "flex", alignItems: "center", justifyContent: "center", padding: "16px" });
      box.setAttribute("role", "dialog");
      box.setAttribute("aria-modal", "true");
      box.setAttribute("aria-labelledby", "localstripe-3ds-title");
      Object.assign(box.style, { background: "#fff", color: "#111827", borderRadius: "8px", padding: "20px",
        maxWidth: "360px", width: "100%", boxShadow: "0 10px 30px rgba(0,0,0,.25)", fontFamily: "system-ui, sans-serif" });
      title.id = "localstripe-3ds-title";
      title.textContent = "Test bank: 3-D Secure";
      title.style.margin = "0 0 8px";
      title.style.fontSize = "18px";
      text.textContent = "Confirm this " + what + " as your bank would ask you to.";
      [yes, no].forEach(function (button) {
        button.type = "button";
        Object.assign(button.style, { margin: "8px 8px 0 0", padding: "8px 12px", borderRadius: "6px",
          border: "1px solid #9ca3af", font: "inherit", cursor: "pointer" });
      });
      yes.textContent = "Complete authentication";
      Object.assign(yes.style, { background: "#1d4ed8", color: "#fff", borderColor: "#1d4ed8" });
      no.textContent = "Fail authentication";
      no.style.background = "#fff";
      box.append(title, text, yes, no);
      back.appendChild(box);
      document.body.appendChild(back);
      function answer(ok) { back.remove(); resolve(ok); }
      yes.addEventListener("click", function () { answer(true); });
      no.addEventListener("click", function () { answer(false); });
      back.addEventListener("keydown", function (event) { if (event.key === "Escape") { answer(false); } });
      yes.focus();
    });
  }

  function intentId(secret, prefix) {
    var match = new RegExp("^(" + prefix + "_\\w+?)_secret_").exec(String(secret || ""));
    return match ? match[1] : null;
  }

  function badSecret() {
    return { error: { type: "invalid_request_error", code: "resource_missing", message: "Invalid client secret." } };
  }

  // --- Stripe() ---------------------------------------------------------------------------
  function cardFrom(data, element) {
    var checked = element._card();
    if (checked.error) { return checked; }
    var details = Object.assign({}, data && data.billing_details);
    details.address = Object.assign({}, details.address);
    if (!details.address.postal_code && checked.postal_code) { details.address.postal_code = checked.postal_code; }
    return { type: "card", card: checked.card, billing_details: details };
  }

  window.Stripe = function (publishableKey) {
    if (!/^pk_/.test(String(publishableKey || ""))) {
      throw new Error("Stripe(): a publishable key (pk_...) is needed, got " + JSON.stringify(publishableKey));
    }
    var key = encodeURIComponent(publishableKey);

    function createPaymentMethod(data) {
      if (!data || !(data.card instanceof CardElement)) {
        return Promise.resolve({ error: validation("incomplete_number", "Your card number is incomplete.") });
      }
      var method = cardFrom(data, data.card);
      if (method.error) { return Promise.resolve(method); }
      return call("POST", "/v1/payment_methods?key=" + key, method).then(function (result) {
        return result.error ? { error: result.error } : { paymentMethod: result.body };
      });
    }

    function confirmCardSetup(secret, data) {
      var seti = intentId(secret, "seti");
      if (!seti) { return Promise.resolve(badSecret()); }
      var payload = { key: publishableKey, client_secret: secret, use_stripe_sdk: true };
      var given = data && data.payment_method;
      if (given && given.card instanceof CardElement) {
        var method = cardFrom(given, given.card);
        if (method.error) { return Promise.resolve(method); }
        payload.payment_method_data = method;
      } else if (typeof given === "string") {
        payload.payment_method = given;
      } else {
        return Promise.resolve({ error: validation("incomplete_number", "Your card number is incomplete.") });
      }
      var path = "/v1/setup_intents/" + seti;
      return call("POST", path + "/confirm", payload).then(function (result) {
        if (result.error) { return { error: result.error }; }
        if (result.body.status !== "requires_action") { return { setupIntent: result.body }; }
        return askBank("card").then(function (ok) {
          var next = { key: publishableKey, client_secret: secret, use_stripe_sdk: true };
          return call("POST", path + (ok ? "/confirm" : "/cancel"), next).then(function (done) {
            if (done.error) { return { error: done.error }; }
            if (done.body.status === "succeeded") { return { setupIntent: done.body }; }
            return { error: { type: "invalid_request_error", code: "setup_intent_authentication_failure",
              message: "The card was not authenticated.", setup_intent: done.body } };
          });
        });
      });
    }

    // The PaymentIntent was confirmed on the server and waits for the customer's bank: ask it
    // once. (Stripe.js would also confirm an unconfirmed intent with a card; the portal never
    // asks that of it.)
    function authenticatePayment(secret) {
      var pi = intentId(secret, "pi");
      if (!pi) { return Promise.resolve(badSecret()); }
      return askBank("payment").then(function (ok) {
        var path = "/v1/payment_intents/" + pi + "/_authenticate?success=" + (ok ? "true" : "false");
        return call("POST", path, { key: publishableKey, client_secret: secret }).then(function (result) {
          if (result.error) {
            if (result.error.message === "Bad request") {
              result.error.code = "payment_intent_unexpected_state";
            }
            return { error: result.error };
          }
          if (!ok || result.body.status === "requires_payment_method") {
            return { error: { type: "card_error", code: "payment_intent_authentication_failure",
              message: "The payment was not authenticated.", payment_intent: result.body } };
          }
          return { paymentIntent: result.body };
        });
      });
    }

    return {
      elements: function () {
        return {
          _card: null,
          create: function (type) {
            if (type !== "card") { throw new Error("Only the card Element is emulated, not " + type); }
            if (this._card) { throw new Error("Can only create one Element of type card"); }
            this._card = new CardElement(this);
            return this._card;
          },
          getElement: function (type) { return type === "card" ? this._card : null; },
        };
      },
      createPaymentMethod: function (data, element, extra) {
        if (typeof data === "string") {  // the older form: ("card", element, {billing_details})
          return createPaymentMethod(Object.assign({ type: data, card: element }, extra));
        }
        return createPaymentMethod(data);
      },
      confirmCardSetup: confirmCardSetup,
      confirmCardPayment: function (secret, data) {
        if (data && data.payment_method) {
          return Promise.resolve({ error: { type: "invalid_request_error", code: "parameter_unknown",
            message: "This emulator confirms PaymentIntents on the server; pass no payment_method." } });
        }
        return authenticatePayment(secret);
      },
      handleCardAction: authenticatePayment,
      handleNextAction: function (options) { return authenticatePayment(options && options.clientSecret); },
    };
  };

  console.log("localstripe: Stripe.js stand-in loaded, talking to " + BASE);
})();

// Checks an approval policy as it is typed, with the service's own rules
// (POST api/hitl/policy-check), so a mistake shows, field named, before the form
// is sent. The form works without this: the service checks it again on save.
(function () {
  "use strict";
  var area = document.querySelector("textarea.sac-policy[data-check]");
  if (!area) return;
  var out = document.getElementById("d-policy-check");
  var xsrf = area.form.querySelector("input[name=_xsrf]");
  var timer = null;
  var latest = 0;

  function show(ok, text) {
    out.textContent = text;
    out.className =
      "form-text sac-policy-check " + (ok ? "text-success" : "text-danger");
    area.setAttribute("aria-invalid", ok ? "false" : "true");
  }

  function check() {
    var mine = ++latest;
    var policy;
    try {
      policy = JSON.parse(area.value);
    } catch (e) {
      show(false, "Not valid JSON: " + e.message);
      return;
    }
    fetch(area.getAttribute("data-check"), {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        "X-XSRFToken": xsrf ? xsrf.value : "",
      },
      body: JSON.stringify({ policy: policy }),
    })
      .then(function (resp) {
        return resp
          .json()
          .catch(function () {
            return {};
          })
          .then(function (body) {
            if (mine !== latest) return; // a newer check is under way
            if (resp.ok) {
              show(true, "Valid policy.");
            } else {
              // The service's message names the field (policy.deny[2]: …).
              show(false, body.message || "HTTP " + resp.status);
            }
          });
      })
      .catch(function () {
        if (mine === latest) out.textContent = "";
      });
  }

  area.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(check, 300);
  });
})();

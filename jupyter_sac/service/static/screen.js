// The agent page's "Terminal screen": what the agent's Claude terminal shows now,
// read on request from GET api/users/<user>/agents/<slug>/terminal/screen (each
// read is audited, so it is read when asked for, not on a timer). Read-only: the
// terminal itself is in JupyterLab (Open).
(function () {
  "use strict";
  var box = document.getElementById("terminal-screen");
  if (!box) return;
  var button = document.getElementById("screen-refresh");
  var rows = document.getElementById("screen-rows");
  var state = document.getElementById("screen-state");
  var prompt = document.getElementById("screen-prompt");

  function say(text) {
    state.textContent = text;
  }

  function show(screen) {
    if (!screen.running) {
      rows.hidden = true;
      prompt.textContent = "";
      say(
        screen.released
          ? "The Claude terminal was released while idle; it resumes when opened."
          : "The Claude terminal is not running."
      );
      return;
    }
    rows.textContent = screen.rows.join("\n");
    rows.hidden = false;
    say(
      screen.size.rows + "×" + screen.size.cols + ", cursor at row " +
        (screen.cursor.row + 1) + ", column " + (screen.cursor.col + 1) +
        " · read " + new Date().toLocaleTimeString()
    );
    if (screen.prompt) {
      var options = screen.prompt.options.map(function (o) {
        return o.key + ". " + o.label;
      });
      prompt.textContent =
        "Waiting for an answer: " + screen.prompt.question +
        (options.length ? " (" + options.join(" / ") + ")" : "");
    } else {
      prompt.textContent = "No prompt is waiting for an answer.";
    }
  }

  function refresh() {
    button.disabled = true;
    say("Reading…");
    // The login cookie counts for a script's request only with the page's XSRF
    // token (JupyterHub's rule for cookie-authenticated API calls).
    var xsrf = box.querySelector("input[name=_xsrf]");
    fetch(box.getAttribute("data-url"), {
      credentials: "same-origin",
      headers: { "X-XSRFToken": xsrf ? xsrf.value : "" },
    })
      .then(function (resp) {
        return resp.json().then(function (body) {
          if (!resp.ok) throw new Error(body.message || resp.statusText);
          show(body);
        });
      })
      .catch(function (e) {
        rows.hidden = true;
        prompt.textContent = "";
        say("Could not read the screen: " + e.message);
      })
      .then(function () {
        button.disabled = false;
        button.textContent = "Refresh";
      });
  }

  button.addEventListener("click", refresh);
})();

// davproxy sharing page: small progressive enhancements. Every action works without it.
"use strict";
(function () {
  // Colour swatches (set through the CSSOM: the page allows no inline styles).
  document.querySelectorAll(".swatch[data-color]").forEach(function (el) {
    var color = el.getAttribute("data-color");
    if (/^#[0-9a-fA-F]{6}([0-9a-fA-F]{2})?$/.test(color)) { el.style.backgroundColor = color.slice(0, 7); }
  });
  // Times in the reader's own time zone.
  document.querySelectorAll("time[datetime]").forEach(function (el) {
    var when = new Date(el.getAttribute("datetime"));
    if (!isNaN(when)) { el.textContent = when.toLocaleString([], { dateStyle: "medium", timeStyle: "short" }); }
  });
  // Copy buttons next to addresses.
  document.querySelectorAll("button.copy[data-copy]").forEach(function (button) {
    var field = document.getElementById(button.getAttribute("data-copy"));
    if (!field || !navigator.clipboard) { return; }
    button.hidden = false;
    button.addEventListener("click", function () {
      navigator.clipboard.writeText(field.value).then(function () {
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = "Copy"; }, 2000);
      });
    });
  });
  // Ask before removing something.
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
    });
  });
  // Suggestions from the directory while typing a person's name or address.
  document.querySelectorAll("input[data-suggest]").forEach(function (input) {
    var list = document.getElementById(input.getAttribute("list"));
    var timer = null, last = "";
    if (!list) { return; }
    input.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        var q = input.value.trim();
        if (q === last || q.length < 1) { return; }
        last = q;
        fetch(input.getAttribute("data-suggest") + "?q=" + encodeURIComponent(q), {
          credentials: "same-origin", headers: { "Accept": "application/json" }
        }).then(function (r) { return r.ok ? r.json() : []; }).then(function (people) {
          list.textContent = "";
          people.forEach(function (person) {
            var option = document.createElement("option");
            option.value = person.label;
            list.appendChild(option);
          });
        }).catch(function () {});
      }, 150);
    });
  });
})();

/* cnnlens report: class and method choosers, overlay opacity, enlarged view. No network, no libraries.
   Names (classes, files) are only ever set with textContent, never parsed as HTML. */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var root = document.documentElement;
  var classSelect = document.getElementById("class-select");
  var methodSelect = document.getElementById("method-select");
  var opacity = document.getElementById("opacity");
  var opacityValue = document.getElementById("opacity-value");
  var status = document.getElementById("filter-status");
  var methodLabels = {};
  data.methods.forEach(function (m) { methodLabels[m.id] = m.label; });

  function applyFilters() {
    var cls = classSelect.value;
    var method = methodSelect.value;
    document.querySelectorAll("[data-class]").forEach(function (el) {
      el.classList.toggle("is-hidden", cls !== "all" && el.getAttribute("data-class") !== cls);
    });
    document.querySelectorAll("[data-method]").forEach(function (el) {
      el.classList.toggle("is-hidden-m", method !== "all" && el.getAttribute("data-method") !== method);
    });
    var parts = [];
    if (cls !== "all") { parts.push(data.classes[Number(cls)]); }
    if (method !== "all") { parts.push(methodLabels[method] || method); }
    status.textContent = parts.length ? "Showing: " + parts.join(" · ") : "";
  }

  function applyOpacity() {
    var v = Number(opacity.value);
    root.style.setProperty("--overlay-opacity", String(v));
    opacityValue.textContent = Math.round(v * 100) + "%";
  }

  classSelect.addEventListener("change", applyFilters);
  methodSelect.addEventListener("change", applyFilters);
  opacity.addEventListener("input", applyOpacity);
  applyFilters();
  applyOpacity();

  /* enlarged view: a copy of the clicked figure's image stack, so the overlay keeps the slider's opacity */
  var box = document.getElementById("lightbox");
  var stage = box.querySelector(".lightbox-stage");
  var caption = box.querySelector(".lightbox-caption");
  var closeButton = box.querySelector(".lightbox-close");
  var current = null;
  var opener = null;

  function visibleZooms() {
    return Array.prototype.filter.call(document.querySelectorAll("main button.zoom"), function (b) {
      return b.offsetParent !== null;
    });
  }

  function show(button) {
    current = button;
    stage.replaceChildren(button.querySelector(".stack").cloneNode(true));
    caption.textContent = button.getAttribute("data-title") || "";
  }

  function open(button) {
    opener = button;
    show(button);
    box.hidden = false;
    closeButton.focus();
  }

  function close() {
    box.hidden = true;
    stage.replaceChildren();
    if (opener) { opener.focus(); }
    current = null;
  }

  function step(delta) {
    var list = visibleZooms();
    var i = list.indexOf(current);
    if (i < 0 || !list.length) { return; }
    show(list[(i + delta + list.length) % list.length]);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("main button.zoom");
    if (button) { open(button); return; }
    if (!box.hidden && (event.target === box || event.target.closest(".lightbox-close"))) { close(); }
  });
  document.addEventListener("keydown", function (event) {
    if (box.hidden) { return; }
    if (event.key === "Escape") { close(); }
    else if (event.key === "ArrowRight") { step(1); }
    else if (event.key === "ArrowLeft") { step(-1); }
  });

  /* print everything that is folded away on screen */
  window.addEventListener("beforeprint", function () {
    document.querySelectorAll("details").forEach(function (d) { d.setAttribute("open", ""); });
  });
}());

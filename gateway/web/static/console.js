// warmfleet's web console: the little a server-rendered page cannot do alone. Sliders beside number
// boxes, file previews, "add one" rows of arrays of objects, code tabs, and a prediction's page live
// (Server-Sent Events from /predictions/{id}/events). Every page works without it, less live.
"use strict";

(function () {
  function onReady(fn) {
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", fn);
    else fn();
  }

  // A slider and its number box show one value; the box (which has the name) is what is sent.
  function syncRanges(root) {
    root.querySelectorAll("input[type=range][data-sync]").forEach(function (range) {
      var box = document.getElementById(range.dataset.sync);
      if (!box) return;
      range.addEventListener("input", function () { box.value = range.value; });
      box.addEventListener("input", function () { if (box.value !== "") range.value = box.value; });
    });
  }

  function previewFiles(root) {
    root.querySelectorAll("input[type=file][data-preview]").forEach(function (input) {
      input.addEventListener("change", function () {
        var img = document.getElementById(input.dataset.preview);
        var file = input.files && input.files[0];
        if (!img) return;
        if (!file || !file.type.startsWith("image/")) { img.hidden = true; img.removeAttribute("src"); return; }
        var reader = new FileReader();
        reader.onload = function () { img.src = reader.result; img.alt = "preview of " + file.name; img.hidden = false; };
        reader.readAsDataURL(file);
      });
    });
  }

  // Arrays of objects: "Add one" clones the row template with the next index; "Remove" drops a row.
  function rows(root) {
    root.addEventListener("click", function (event) {
      var add = event.target.closest(".add-row");
      if (add) {
        var set = add.closest("fieldset.field-objects");
        var list = set.querySelector(".rows");
        var max = parseInt(set.dataset.max || "0", 10);
        if (max && list.children.length >= max) return;
        var index = parseInt(add.dataset.next || "0", 10);
        add.dataset.next = String(index + 1);
        var html = set.querySelector("template").innerHTML.split("__i__").join(String(index));
        var holder = document.createElement("div");
        holder.innerHTML = html;
        var row = holder.firstElementChild;
        var legend = row.querySelector("legend");
        if (legend) legend.textContent = legend.textContent.replace(/\d+$/, String(list.children.length + 1));
        list.appendChild(row);
        syncRanges(row);
        previewFiles(row);
        var first = row.querySelector("input:not([type=hidden]), select, textarea");
        if (first) first.focus();
        return;
      }
      var remove = event.target.closest(".remove-row");
      if (remove) {
        var fieldset = remove.closest("fieldset.row");
        var parent = fieldset.closest("fieldset.field-objects");
        fieldset.remove();
        var button = parent && parent.querySelector(".add-row");
        if (button) button.focus();
      }
    });
  }

  function tabs(root) {
    root.querySelectorAll("[role=tablist]").forEach(function (list) {
      var all = Array.prototype.slice.call(list.querySelectorAll("[role=tab]"));
      function select(tab) {
        all.forEach(function (t) {
          var on = t === tab;
          t.setAttribute("aria-selected", on ? "true" : "false");
          t.tabIndex = on ? 0 : -1;
          document.getElementById(t.getAttribute("aria-controls")).hidden = !on;
        });
        tab.focus();
      }
      all.forEach(function (tab, i) {
        tab.addEventListener("click", function () { select(tab); });
        tab.addEventListener("keydown", function (event) {
          var next = event.key === "ArrowRight" ? 1 : event.key === "ArrowLeft" ? -1 : 0;
          if (next) { event.preventDefault(); select(all[(i + next + all.length) % all.length]); }
        });
      });
    });
  }

  // A prediction's page, live: status, streamed text and images, progress, logs; the result at the end.
  function live() {
    var box = document.getElementById("live");
    if (!box || !box.dataset.events || !window.EventSource) return;
    var source = new EventSource(box.dataset.events);
    function data(event) { return JSON.parse(event.data); }
    function setStatus(status) {
      var badge = document.getElementById("status");
      badge.textContent = status;
      badge.className = "badge status-" + status;
    }
    source.addEventListener("status", function (event) { setStatus(data(event).status); });
    source.addEventListener("logs", function (event) {
      var logs = document.getElementById("logs");
      logs.textContent += (logs.textContent ? "\n" : "") + data(event).text;
    });
    source.addEventListener("progress", function (event) {
      var d = data(event);
      document.getElementById("progress-box").hidden = false;
      var bar = document.getElementById("progress");
      bar.max = d.total; bar.value = d.step;
      document.getElementById("eta").textContent =
        d.step + " of " + d.total + (d.eta_s > 0 ? ", about " + d.eta_s.toFixed(1) + " s left" : "");
    });
    source.addEventListener("output", function (event) {
      var d = data(event);
      if (d.image) {
        var img = document.createElement("img");
        img.src = d.image;
        img.alt = "output " + (document.querySelectorAll("#output-images img").length + 1);
        document.getElementById("output-images").appendChild(img);
      } else if (d.text !== undefined) {
        document.getElementById("output-text").textContent += d.text;
      }
    });
    source.addEventListener("done", function (event) {
      var d = data(event);
      source.close();
      setStatus(d.status);
      var result = document.getElementById("result");
      var holder = document.createElement("div");
      holder.innerHTML = d.html;
      result.replaceWith(holder.firstElementChild);
      document.getElementById("logs").textContent = d.logs.join("\n");
      var cancel = document.getElementById("cancel-form");
      if (cancel) cancel.remove();
      if (d.status === "succeeded") {
        var bar = document.getElementById("progress");
        if (bar && !document.getElementById("progress-box").hidden) bar.value = bar.max;
      }
      box.dataset.done = d.status;
    });
  }

  // A part of a page that its server renders again: fetched every data-every-s seconds, put in place.
  function refresh() {
    document.querySelectorAll("[data-refresh]").forEach(function (part) {
      var every = parseFloat(part.dataset.everyS || "2") * 1000;
      function again() {
        fetch(part.dataset.refresh, {credentials: "same-origin"}).then(function (response) {
          if (response.ok) return response.text().then(function (html) { part.innerHTML = html; });
        }).catch(function () { /* the gateway is away: try again next time */ })
          .then(function () { setTimeout(again, every); });
      }
      setTimeout(again, every);
    });
  }

  onReady(function () {
    syncRanges(document);
    previewFiles(document);
    rows(document);
    tabs(document);
    live();
    refresh();
  });
})();

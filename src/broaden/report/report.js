/* broaden report: filter and sort the bad-case explorer. No dependencies, no network. */
(function () {
  "use strict";
  var table = document.getElementById("explorer-table");
  if (!table) { return; }
  var byClass = document.getElementById("ex-class");
  var byStrategy = document.getElementById("ex-strategy");
  var count = document.getElementById("ex-count");
  var cases = Array.prototype.slice.call(table.tBodies);
  var total = cases.length;

  function hasToken(list, token) {
    return (" " + (list || "") + " ").indexOf(" " + token + " ") >= 0;
  }

  function applyFilters() {
    var c = byClass ? byClass.value : "";
    var s = byStrategy ? byStrategy.value : "";
    var shown = 0;
    cases.forEach(function (tb) {
      var ok = (c === "" || tb.getAttribute("data-class") === c) &&
               (s === "" || hasToken(tb.getAttribute("data-strategies"), s));
      tb.hidden = !ok;
      if (ok) { shown += 1; }
    });
    count.textContent = shown + " of " + total + " seeds shown";
    table.setAttribute("data-shown", String(shown));
  }

  // Missing values sort last in both directions; ids compare as text with numbers in numeric order.
  function compare(a, b, key, sign) {
    var x = a.getAttribute("data-" + key) || "";
    var y = b.getAttribute("data-" + key) || "";
    if (x === "" || y === "") { return (x === "") - (y === ""); }
    if (key === "id") { return sign * x.localeCompare(y, undefined, { numeric: true }); }
    return sign * (parseFloat(x) - parseFloat(y));
  }

  function sortBy(button) {
    var key = button.getAttribute("data-key");
    var th = button.parentNode;
    var dir = th.getAttribute("aria-sort") === "descending" ? "ascending" : "descending";
    table.querySelectorAll("th[aria-sort]").forEach(function (t) { t.setAttribute("aria-sort", "none"); });
    th.setAttribute("aria-sort", dir);
    var sign = dir === "ascending" ? 1 : -1;
    cases.sort(function (a, b) { return compare(a, b, key, sign); });
    cases.forEach(function (tb) { table.appendChild(tb); });
  }

  if (byClass) { byClass.addEventListener("change", applyFilters); }
  if (byStrategy) { byStrategy.addEventListener("change", applyFilters); }
  table.querySelectorAll("button.sort").forEach(function (b) {
    b.addEventListener("click", function () { sortBy(b); });
  });
  applyFilters();
}());

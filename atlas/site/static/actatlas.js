// Activation atlas page: switch grid sizes and show a selected cell's icon, channels and images.
(function () {
  "use strict";
  function showGrid(size) {
    document.querySelectorAll(".atlas-grid").forEach(function (grid) {
      grid.hidden = grid.dataset.grid !== size;
    });
    document.querySelectorAll(".atlas-zoom button").forEach(function (button) {
      button.setAttribute("aria-pressed", String(button.dataset.grid === size));
    });
  }
  function fill(list, items, make) {
    list.textContent = "";
    items.forEach(function (item) { list.appendChild(make(item)); });
  }
  function showCell(cell) {
    var detail = document.getElementById("atlas-detail");
    var icon = document.getElementById("atlas-detail-icon");
    icon.hidden = !cell.dataset.icon;
    if (cell.dataset.icon) { icon.src = cell.dataset.icon; }
    document.getElementById("atlas-detail-title").textContent =
      "Cell " + cell.dataset.cell + " · " + cell.dataset.count + " samples" +
      (cell.dataset.class !== "-1" ? " · raises class " + cell.dataset.class + " most" : "");
    fill(document.getElementById("atlas-detail-channels"), JSON.parse(cell.dataset.channels), function (pair) {
      var item = document.createElement("li");
      var link = document.createElement("a");
      link.href = detail.dataset.layerPage + "#channel-" + pair[0];
      link.textContent = "channel " + pair[0];
      item.appendChild(link);
      item.appendChild(document.createTextNode(" · " + pair[1].toFixed(3)));
      return item;
    });
    fill(document.getElementById("atlas-detail-images"), JSON.parse(cell.dataset.images), function (name) {
      var item = document.createElement("li");
      item.textContent = name;
      return item;
    });
    document.querySelectorAll(".atlas-cell[aria-pressed]").forEach(function (other) { other.removeAttribute("aria-pressed"); });
    cell.setAttribute("aria-pressed", "true");
    detail.hidden = false;
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll(".atlas-zoom button").forEach(function (button) {
      button.addEventListener("click", function () { showGrid(button.dataset.grid); });
    });
    document.querySelectorAll(".atlas-class").forEach(function (select) {
      select.addEventListener("change", function () {
        select.closest(".atlas-grid").querySelectorAll(".atlas-cell").forEach(function (cell) {
          cell.classList.toggle("dimmed", select.value !== "" && cell.dataset.class !== select.value);
        });
      });
    });
    document.querySelectorAll(".atlas-cell").forEach(function (cell) {
      cell.addEventListener("click", function () { showCell(cell); });
      cell.addEventListener("mouseenter", function () { showCell(cell); });
    });
  });
})();

// Activation atlas page: switch grid sizes and show a selected cell's icon, channels, dictionary
// directions and images (thumbnails load only when their cell is shown). #g<size>-c<cell> opens a cell.
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
    var directions = JSON.parse(cell.dataset.directions || "[]");
    document.getElementById("atlas-detail-dictionary").hidden = !directions.length;
    fill(document.getElementById("atlas-detail-directions"), directions, function (entry) {
      var item = document.createElement("li");
      var link = document.createElement("a");
      link.href = entry[0] + "#channel-" + entry[1];
      link.textContent = entry[2];
      item.appendChild(link);
      item.appendChild(document.createTextNode(" · " + entry[3].toFixed(3)));
      return item;
    });
    fill(document.getElementById("atlas-detail-images"), JSON.parse(cell.dataset.images), function (pair) {
      var item = document.createElement("li");
      var figure = document.createElement("figure");
      if (pair[1]) {
        var thumb = document.createElement("img");
        thumb.loading = "lazy";
        thumb.alt = pair[0];
        thumb.src = pair[1];
        figure.appendChild(thumb);
      }
      var caption = document.createElement("figcaption");
      caption.textContent = pair[0];
      caption.title = pair[0];
      figure.appendChild(caption);
      item.appendChild(figure);
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
    function fromHash() {
      var target = /^#g\d+-c\d+$/.test(window.location.hash) && document.getElementById(window.location.hash.slice(1));
      if (!target || !target.classList.contains("atlas-cell")) return;
      showGrid(target.closest(".atlas-grid").dataset.grid);
      showCell(target);
      target.scrollIntoView({ block: "center" });
    }
    window.addEventListener("hashchange", fromHash);
    fromHash();
  });
})();

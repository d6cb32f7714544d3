// neuron-atlas site behaviour: channel view from the URL fragment, keyboard navigation,
// jump and filter, the appendix / spectrum views and the index search. Plain DOM, no network.
(function () {
  "use strict";

  const CHANNEL_HASH = /^#channel-(\d+)$/;
  const BIG_CELL = 88; // px per example in the channel view
  const BIG_DIVERSITY = 112; // px per diversity image in the channel view
  const QUANTILE_CELL = 56; // px per image of a quantile group in the channel view
  const SVG = "http://www.w3.org/2000/svg"; // a namespace name, never fetched

  function storageGet(key) {
    try { return window.localStorage.getItem(key); } catch (err) { return null; }
  }
  function storageSet(key, value) {
    try { window.localStorage.setItem(key, value); } catch (err) { /* file:// may forbid storage */ }
  }
  function isTyping(target) {
    return target instanceof HTMLElement && target.matches("input, textarea, select, [contenteditable]");
  }
  function make(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function followRel(rel) {
    const link = document.querySelector('a[rel="' + rel + '"]');
    if (link) window.location.href = link.href;
  }

  // ---- Layer page -----------------------------------------------------------------------
  function setupLayerPage(list) {
    let rows = Array.from(list.querySelectorAll("article.ch"));
    // An SAE layer's feature page holds no rows: it loads one feature's file at a time
    // (<featureFiles><number>.js, which calls window.atlasFeature with the row and its details).
    const featureFiles = list.dataset.featureFiles || "";
    const unit = list.dataset.unit || "Channel";
    const view = document.getElementById("channel-view");
    const body = view.querySelector(".channel-view-body");
    const title = document.getElementById("channel-view-title");
    const prevLink = view.querySelector("a.prev");
    const nextLink = view.querySelector("a.next");
    const status = document.getElementById("filter-status");
    const filter = document.getElementById("filter");
    const jump = document.getElementById("jump");
    const sort = document.getElementById("sort");
    const show = document.getElementById("show");
    const thresholds = JSON.parse(list.dataset.thresholds || "{}"); // measure -> [min or max, limit]
    const measures = JSON.parse(list.dataset.measures || "{}"); // measure -> label
    const explained = JSON.parse(list.dataset.explained || "{}"); // measure -> [what it is, what to do]
    let current = null;
    const grids = JSON.parse(list.dataset.grids || "{}"); // column -> [columns, rows] of its grid
    // column class -> "optimized" (one image), "diverse" (a set) or "examples" (from job.json)
    const kinds = JSON.parse(list.dataset.kinds || "{}");
    let detailsState = "none"; // "loading", "ready" or "failed": details.js is loaded on first open
    // [[first, last, href], ...]: every page of this layer (large layers come in pages)
    const pages = JSON.parse(list.dataset.pages || "[]");
    const here = decodeURIComponent(window.location.pathname.split("/").pop());
    const pageIndex = pages.findIndex(function (p) { return p[2] === here; });

    function pageOf(channel) {
      const number = Number(channel);
      return pages.find(function (p) { return number >= p[0] && number <= p[1]; });
    }
    function goElsewhere(channel) {
      // true when the channel lives on another page of this layer, which is then opened
      if (featureFiles) { loadFeature(Number(channel)); return true; }
      const page = pageOf(channel);
      if (!page || page[2] === here) return false;
      window.location.href = page[2] + "#channel-" + channel;
      return true;
    }

    function loadFeature(number) {
      if (!pageOf(number)) {
        status.textContent = unit + " " + number + " is not in this layer.";
        view.hidden = true;
        return;
      }
      window.atlasFeature = function (feature, html, extra) {
        if (feature !== number) return; // a file that arrived after another feature was asked for
        const holder = document.createElement("template");
        holder.innerHTML = html;
        const row = holder.content.firstElementChild;
        rows.forEach(function (old) { old.remove(); });
        list.appendChild(row);
        rows = [row];
        const all = window.atlasDetails = window.atlasDetails || {};
        (all[list.dataset.slug] = all[list.dataset.slug] || {})[feature] = extra;
        status.textContent = "";
        open(row);
      };
      const script = document.createElement("script");
      script.src = featureFiles + number + ".js";
      script.onerror = function () {
        status.textContent = unit + " " + number + " has no file in this build of the atlas.";
        view.hidden = true;
      };
      document.head.appendChild(script);
      script.onload = function () { script.remove(); };
    }

    function details(channel) {
      const layer = (window.atlasDetails || {})[list.dataset.slug];
      return (layer && layer[channel]) || { loss: {}, sources: {} };
    }
    function ensureDetails() {
      if (detailsState !== "none" || !list.dataset.details) return;
      detailsState = "loading";
      const script = document.createElement("script");
      script.src = list.dataset.details;
      script.onload = function () {
        detailsState = "ready";
        if (current && !view.hidden) fill(current);
      };
      script.onerror = function () { detailsState = "failed"; };
      document.head.appendChild(script);
    }

    function visibleRows() { return rows.filter(function (row) { return !row.hidden; }); }
    function rowFor(channel) { return document.getElementById("channel-" + channel); }
    function columnLabel(kind) {
      const head = list.querySelector(".colheads .k-" + kind + " " +
        (list.classList.contains("view-spectrum") ? ".in-spectrum" : ".in-appendix"));
      return head ? head.textContent : kind;
    }

    function sparkline(values) {
      const points = values.map(function (v, i) { return [i, v]; })
        .filter(function (p) { return typeof p[1] === "number" && isFinite(p[1]); });
      if (points.length < 2) return null;
      const ys = points.map(function (p) { return p[1]; });
      const low = Math.min.apply(null, ys);
      const span = (Math.max.apply(null, ys) - low) || 1;
      const last = values.length - 1 || 1;
      const svg = document.createElementNS(SVG, "svg");
      svg.setAttribute("class", "loss");
      svg.setAttribute("viewBox", "0 0 100 24");
      svg.setAttribute("preserveAspectRatio", "none");
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", points.map(function (p) {
        return (100 * p[0] / last).toFixed(1) + "," + (22 - 20 * (p[1] - low) / span).toFixed(1);
      }).join(" "));
      svg.appendChild(line);
      return svg;
    }

    function sourceList(sources, values) {
      const box = make("details", "sources");
      box.appendChild(make("summary", "", "Sources"));
      const items = make("ol");
      sources.forEach(function (source, index) {
        const text = source[0] + " at (" + source[1] + ", " + source[2] + ")" +
          (values[index] !== undefined ? " · " + values[index] : "");
        items.appendChild(make("li", "", text));
      });
      box.appendChild(items);
      return box;
    }

    function bigFigure(cell, kind, extra) {
      const source = cell.querySelector("img");
      const grid = grids[kind.replace(/-/g, "_")] || [1, 1];
      const figure = make("figure", "big");
      const frame = make("div", "frame crop k-" + kind);
      const caption = make("figcaption");
      const image = document.createElement("img");
      image.src = source.getAttribute("src");
      image.alt = source.alt;
      image.setAttribute("width", source.getAttribute("width"));
      image.setAttribute("height", source.getAttribute("height"));
      frame.appendChild(image);
      figure.appendChild(frame);
      figure.appendChild(caption);
      caption.appendChild(make("b", "", columnLabel(kind)));
      const values = (source.dataset.v || "").split(" ").filter(Boolean);
      if (kinds[kind] === "optimized") {
        figure.classList.add("single");
        if (values.length) {
          caption.appendChild(document.createTextNode(
            (source.dataset.objective ? " · objective " : " · peak ") + values[0]));
        }
        const curve = sparkline(extra.loss[kind] || []);
        if (curve) {
          caption.appendChild(curve);
          caption.appendChild(make("span", "loss-label", "loss during optimization"));
        }
        return figure;
      }
      if (cell.dataset.tie !== undefined) {
        // every example has the same activation: which images the ranking kept is arbitrary
        figure.classList.add("tied");
        frame.replaceChildren(make("p", "tie-note", "All " + values.length + " examples tie at " +
          cell.dataset.tie + ". More images of the dataset than are kept share this activation " +
          "(on a ReLU layer, every image that leaves the channel at 0 everywhere), so these would " +
          "be an arbitrary pick: none is shown."));
        return figure;
      }
      const cols = grid[0];
      const rowsCount = grid[1];
      frame.style.width = Math.min(cols * (kinds[kind] === "diverse" ? BIG_DIVERSITY : BIG_CELL), 840) + "px";
      const overlay = make("div", "values");
      overlay.style.gridTemplateColumns = "repeat(" + cols + ", 1fr)";
      overlay.style.gridTemplateRows = "repeat(" + rowsCount + ", 1fr)";
      const sources = extra.sources[kind.replace(/-/g, "_")] || [];
      values.forEach(function (value, index) {
        const badge = make("span", "", value);
        if (sources[index]) badge.title = sources[index][0] + " at (" + sources[index][1] + ", " + sources[index][2] + ")";
        overlay.appendChild(badge);
      });
      frame.appendChild(overlay);
      if (sources.length) figure.appendChild(sourceList(sources, values));
      return figure;
    }

    function histogramFigure(svg) {
      const figure = make("figure", "big histogram");
      const copy = svg.cloneNode(true);
      copy.removeAttribute("class");
      figure.appendChild(copy);
      const axis = make("div", "axis");
      axis.appendChild(make("span", "", svg.dataset.lo));
      axis.appendChild(make("span", "", "activation histogram over the dataset (√ scale, red line at 0)"));
      axis.appendChild(make("span", "", svg.dataset.hi));
      figure.appendChild(axis);
      return figure;
    }

    // A dictionary direction's place in the activation atlas: its best cells per grid size.
    function placesFigure(row) {
      const figure = make("section", "places");
      figure.appendChild(make("h3", "group-title", "Place in the activation atlas"));
      const list = make("ol", "");
      JSON.parse(row.dataset.places).forEach(function (place) {
        const item = make("li", "");
        const link = make("a", "", place[0] + "×" + place[0] + " grid, cell " + place[1]);
        link.href = row.dataset.atlas + "#g" + place[0] + "-c" + place[1];
        item.appendChild(link);
        item.appendChild(document.createTextNode(" · cosine " + place[2]));
        list.appendChild(item);
      });
      figure.appendChild(list);
      return figure;
    }

    // An SAE feature: the features its decoder direction is closest to, the classes it moves.
    function featuresFigure(row) {
      const found = JSON.parse(row.dataset.features);
      const figure = make("section", "features");
      figure.appendChild(make("h3", "group-title", "What the feature writes back"));
      const near = make("p", "");
      near.appendChild(document.createTextNode("Nearest features by decoder cosine: "));
      found.near.forEach(function (pair, index) {
        const link = make("a", "", "#" + pair[0]);
        link.href = "#channel-" + pair[0];
        if (index) near.appendChild(document.createTextNode(", "));
        near.appendChild(link);
        near.appendChild(document.createTextNode(" " + pair[1]));
      });
      figure.appendChild(near);
      // a class is [number, change] or, where the model names its classes, [number, change, name]
      [["up", "Raises the logits of classes "], ["down", "Lowers the logits of classes "]].forEach(function (part) {
        figure.appendChild(make("p", "", part[1] + found[part[0]].map(function (pair) {
          return pair[0] + (pair[2] ? " " + pair[2] : "") + " (" + (pair[1] > 0 ? "+" : "") + pair[1] + ")";
        }).join(", ")));
      });
      figure.appendChild(make("p", "defs", "Logit changes when the decoder direction, scaled to the " +
        "layer's typical activation length, is added at every position of a mid-grey image."));
      return figure;
    }

    // An SAE feature's quantile groups: equal intervals of its activation range, highest first,
    // each with the examples drawn from it, cut out of the channel's sprite.
    function quantileFigure(row, found) {
      const cells = JSON.parse(list.dataset.quantile); // x, y, cell w, cell h, per row, sprite w, h, groups
      const image = row.querySelector(".cell img");
      if (!image || !found.examples.length) return null;
      const scale = QUANTILE_CELL / cells[2];
      const figure = make("section", "quantiles");
      figure.appendChild(make("h3", "group-title", "Quantile groups"));
      figure.appendChild(make("p", "defs", "The activation range (0, " + found.top.toPrecision(3) + "] cut into " +
        cells[7] + " intervals of equal width, with up to " + cells[4] + " dataset images of each, drawn " +
        "from a uniform sample of the dataset (topped up from the top examples where it holds too few)."));
      for (let group = cells[7] - 1; group >= 0; group--) {
        const first = (cells[7] - 1 - group) * cells[4];
        const members = found.examples.filter(function (e) { return e[0] >= first && e[0] < first + cells[4]; });
        const line = make("div", "quantile-group");
        line.appendChild(make("span", "range", (found.top * group / cells[7]).toPrecision(3) + " – " +
          (found.top * (group + 1) / cells[7]).toPrecision(3)));
        if (!members.length) line.appendChild(make("span", "empty", "no image of the sample or the top examples"));
        members.forEach(function (example) {
          const slot = example[0];
          const tile = make("span", "tile");
          tile.style.width = tile.style.height = QUANTILE_CELL + "px";
          tile.style.backgroundImage = "url(" + JSON.stringify(image.getAttribute("src")) + ")";
          tile.style.backgroundSize = (cells[5] * scale) + "px " + (cells[6] * scale) + "px";
          const x = cells[0] + (slot % cells[4]) * cells[2];
          const y = cells[1] + Math.floor(slot / cells[4]) * cells[3];
          tile.style.backgroundPosition = (-x * scale) + "px " + (-y * scale) + "px";
          tile.title = example[2] + " at (" + example[3] + ", " + example[4] + ") · " + example[1];
          line.appendChild(tile);
        });
        figure.appendChild(line);
      }
      return figure;
    }

    function fill(row) {
      const channel = row.id.slice("channel-".length);
      title.textContent = unit + " " + channel + (row.dataset.name ? " · " + row.dataset.name : "");
      body.replaceChildren();
      const groups = { optimized: [], examples: [] };
      const extra = details(channel);
      ensureDetails();
      row.querySelectorAll(".cell").forEach(function (cell) {
        if (cell.classList.contains("k-num") || cell.classList.contains("none")) return;
        const kind = Array.from(cell.classList).find(function (name) { return name.startsWith("k-"); }).slice(2);
        const isExample = kinds[kind] === "examples";
        groups[isExample ? "examples" : "optimized"].push(bigFigure(cell, kind, extra));
      });
      // single images first, then the diversity set on its own line
      groups.optimized.sort(function (a, b) {
        return Number(!a.classList.contains("single")) - Number(!b.classList.contains("single"));
      });
      if (groups.optimized.length || groups.examples.length) {
        body.appendChild(make("p", "defs", "Activation, everywhere in this view: the channel's " +
          "strongest position in an image, its largest value for the top examples and the " +
          "optimized pictures, its smallest for the bottom examples and the negative picture. " +
          "The histogram counts every position of every dataset image."));
      }
      if (groups.optimized.length) body.appendChild(make("h3", "group-title", "Optimized images"));
      groups.optimized.forEach(function (figure) { body.appendChild(figure); });
      if (groups.examples.length) body.appendChild(make("h3", "group-title", "Dataset examples"));
      groups.examples.forEach(function (figure) { body.appendChild(figure); });
      if (row.dataset.label) {
        const found = JSON.parse(row.dataset.label); // [label, hits, top images, share, chance]
        body.appendChild(make("p", "defs", "Label: " + found[1] + " of the " + found[2] + " top images are " +
          "“" + found[0] + "” (" + (100 * found[3]).toPrecision(3) + "% of the dataset); the chance of " +
          "that many or more by luck is " + found[4] + " (hypergeometric)" +
          (found[4] < 0.01 ? "." : ": not enriched beyond chance.")));
      }
      const svg = row.querySelector("svg.hist");
      if (svg) body.appendChild(histogramFigure(svg));
      if (row.dataset.active) {
        const images = row.dataset.imagesActive;
        body.appendChild(make("p", "defs", "Fires (at least 0.001) at " +
          (100 * Number(row.dataset.active)).toPrecision(3) + "% of all positions of the dataset's images" +
          (images ? ", and somewhere in " + (100 * Number(images)).toPrecision(3) + "% of the images." : ".")));
      }
      if (extra.quantiles && list.dataset.quantile) {
        const groups = quantileFigure(row, extra.quantiles);
        if (groups) body.appendChild(groups);
      }
      if (row.dataset.places) body.appendChild(placesFigure(row));
      if (row.dataset.features) body.appendChild(featuresFigure(row));
      if (row.dataset.match) {
        const match = JSON.parse(row.dataset.match); // [partner or -1, cosine, best cosine, best partner]
        body.appendChild(make("p", "defs", match[0] >= 0
          ? "In the compared SAE: matched one to one to feature " + match[0] + " (decoder cosine " + match[1] +
            "); its best cosine there is " + match[2] + " (feature " + match[3] + ")."
          : "In the compared SAE: left unmatched; its best decoder cosine there is " + match[2] +
            " (feature " + match[3] + ")."));
      }
      if (list.dataset.featurePage && !featureFiles) {
        const own = make("p", "defs", "");
        const link = make("a", "", "This feature on its own page");
        link.href = list.dataset.featurePage + "#channel-" + channel;
        own.appendChild(link);
        own.appendChild(document.createTextNode(" (a link to share; it loads this feature only)."));
        body.appendChild(own);
      }
      const quality = qualityFigure(row);
      if (quality) {
        body.appendChild(make("h3", "group-title", "flags" in row.dataset
          ? "Quality: do not trust these pictures" : "Quality of these pictures"));
        body.appendChild(quality);
      }
      if (!body.childElementCount) body.appendChild(make("p", "empty", "Nothing has been computed for this channel yet."));
      const order = visibleRows();
      const index = order.indexOf(row);
      [[prevLink, order[index - 1], -1], [nextLink, order[index + 1], 1]].forEach(function (pair) {
        const number = Number(channel) + pair[2]; // a feature page steps by number
        const target = featureFiles ? (pageOf(number) ? "channel-" + number : "") : (index >= 0 && pair[1] ? pair[1].id : "");
        pair[0].setAttribute("href", "#" + target);
        pair[0].setAttribute("aria-disabled", target ? "false" : "true");
      });
    }

    function open(row) {
      if (current) current.classList.remove("current");
      current = row;
      row.classList.add("current");
      fill(row);
      view.hidden = false;
      row.scrollIntoView({ block: "center" });
      view.querySelector(".close").focus({ preventScroll: true });
    }

    function close() {
      if (view.hidden) return;
      view.hidden = true;
      if (current) current.querySelector(".k-num a").focus({ preventScroll: true });
      try {
        window.history.replaceState(null, "", window.location.pathname + window.location.search);
      } catch (err) { /* keep the fragment when history is not available */ }
    }

    function fromHash() {
      const match = CHANNEL_HASH.exec(window.location.hash);
      if (!match && featureFiles && pages.length && !current) { loadFeature(pages[0][0]); return; }
      if (!match) { view.hidden = true; return; }
      const row = rowFor(match[1]);
      if (row && row === current && !view.hidden) return;
      if (row) { open(row); return; }
      if (goElsewhere(match[1])) return;
      status.textContent = "Channel " + match[1] + " is not on this page.";
      view.hidden = true;
    }

    function keepFocusInView(event) {
      // the channel view is modal: Tab cycles through its own links and buttons
      const focusable = Array.from(view.querySelectorAll("a[href], button, summary"))
        .filter(function (node) { return node.getAttribute("aria-disabled") !== "true"; });
      if (!focusable.length) return;
      const first = focusable[0];
      const last = focusable[focusable.length - 1];
      const inside = view.contains(document.activeElement);
      if (event.shiftKey && (!inside || document.activeElement === first)) {
        last.focus();
        event.preventDefault();
      } else if (!event.shiftKey && (!inside || document.activeElement === last)) {
        first.focus();
        event.preventDefault();
      }
    }

    function step(delta) {
      if (featureFiles) {
        const number = current ? channelOf(current) + delta : pages.length ? pages[0][0] : -1;
        if (pageOf(number)) window.location.hash = "channel-" + number;
        return;
      }
      const order = visibleRows();
      if (!order.length) return;
      const index = current ? order.indexOf(current) : -1;
      const next = index < 0 ? order[delta > 0 ? 0 : order.length - 1] : order[index + delta];
      if (!next) {
        const neighbour = pageIndex >= 0 ? pages[pageIndex + delta] : undefined;
        if (neighbour && !filter.value.trim()) {
          window.location.href = neighbour[2] + "#channel-" + neighbour[delta > 0 ? 0 : 1];
        }
        return;
      }
      open(next); // at once, so quick repeated keys step from the channel just shown
      window.location.hash = next.id;
    }

    function applyFilter() {
      const text = filter.value.trim();
      const mode = show ? show.value : "all";
      const ranges = [];
      const valid = text.split(/[\s,]+/).filter(Boolean).every(function (token) {
        const match = /^(\d+)(?:\s*[-–]\s*(\d+))?$/.exec(token);
        if (!match) return false;
        const low = Number(match[1]);
        const high = match[2] === undefined ? low : Number(match[2]);
        ranges.push([Math.min(low, high), Math.max(low, high)]);
        return true;
      });
      if (!valid) {
        status.textContent = "Filter by channel numbers and ranges, e.g. 3, 10-20.";
        return;
      }
      let shown = 0;
      rows.forEach(function (row) {
        const channel = Number(row.id.slice("channel-".length));
        const inRange = !ranges.length || ranges.some(function (range) { return channel >= range[0] && channel <= range[1]; });
        const byFlag = mode === "all" || (mode === "flagged") === ("flags" in row.dataset);
        row.hidden = !(inRange && byFlag);
        if (!row.hidden) shown += 1;
      });
      status.textContent = text || mode !== "all" ? "Showing " + shown + " of " + rows.length + " channels." : "";
    }

    // ---- Quality record: the channel view's table, sorting and the flag filter ----------
    function channelOf(row) { return Number(row.id.slice("channel-".length)); }
    function qualityOf(row) {
      try { return JSON.parse(row.dataset.q || "{}"); } catch (err) { return {}; }
    }
    function formatMeasure(value) {
      return typeof value === "number" && isFinite(value) ? String(Number(value.toPrecision(3))) : "–";
    }
    function qualityFigure(row) {
      const record = qualityOf(row);
      function failing(name) {
        const rule = thresholds[name];
        return Boolean(rule) && (rule[0] === "min" ? record[name] < rule[1] : record[name] > rule[1]);
      }
      // the figures that fail first, then the page's own order
      const names = Object.keys(measures).filter(function (name) { return name in record; })
        .sort(function (a, b) { return Number(failing(b)) - Number(failing(a)); });
      if (!names.length) return null;
      const table = make("table", "quality");
      names.forEach(function (name) {
        const line = make("tr");
        const rule = thresholds[name];
        const value = record[name];
        const fails = failing(name);
        line.appendChild(make("th", "", measures[name]));
        const interval = record[name + "_interval"];
        const parts = record[name + "_parts"];
        line.appendChild(make("td", "value", formatMeasure(value) +
          (interval ? " (95% " + formatMeasure(interval[0]) + "–" + formatMeasure(interval[1]) + ")" : "") +
          (parts ? " (" + parts.map(formatMeasure).join(", ") + ")" : "")));
        line.appendChild(make("td", fails ? "rule bad" : "rule",
          rule ? (fails ? "fails " : "passes ") + (rule[0] === "min" ? "≥ " : "≤ ") + rule[1] : "no threshold"));
        const text = explained[name] || ["", ""];
        const meaning = make("td", "meaning", text[0]);
        // the advice matters where the figure fails, or where no threshold decides for the reader
        if (text[1] && (fails || !rule)) meaning.appendChild(make("span", "advice", " " + text[1]));
        line.appendChild(meaning);
        table.appendChild(line);
      });
      return table;
    }
    function applySort() {
      const parts = sort.value.split(":");
      const key = parts[0];
      const sign = parts[1] === "desc" ? -1 : 1;
      function valueOf(row) {
        if (key === "channel") return channelOf(row);
        const value = qualityOf(row)[key];
        return typeof value === "number" ? value : null;
      }
      rows.sort(function (a, b) {
        const va = valueOf(a);
        const vb = valueOf(b);
        if (va === null || vb === null) return (va === null) - (vb === null); // missing last
        return sign * (va - vb) || channelOf(a) - channelOf(b);
      });
      rows.forEach(function (row) { list.appendChild(row); });
    }

    function setView(name) {
      list.classList.remove("view-appendix", "view-spectrum");
      list.classList.add("view-" + name);
      document.querySelectorAll(".views button").forEach(function (button) {
        button.setAttribute("aria-pressed", String(button.dataset.view === name));
      });
      storageSet("atlas-view", name);
      if (!view.hidden && current) fill(current);
    }

    document.querySelectorAll(".views button").forEach(function (button) {
      button.addEventListener("click", function () { setView(button.dataset.view); });
    });
    const saved = storageGet("atlas-view");
    if (saved === "spectrum" || saved === "appendix") setView(saved);

    if (filter) filter.addEventListener("input", applyFilter);
    if (show) show.addEventListener("change", applyFilter);
    if (sort) sort.addEventListener("change", applySort);
    jump.addEventListener("change", function () {
      if (jump.value === "") return;
      if (rowFor(jump.value) || featureFiles) {
        window.location.hash = "channel-" + jump.value;
        status.textContent = "";
      } else if (!goElsewhere(jump.value)) {
        status.textContent = "Channel " + jump.value + " is not on this page.";
      }
    });
    view.querySelector(".close").addEventListener("click", close);
    view.addEventListener("click", function (event) { if (event.target === view) close(); });
    window.addEventListener("hashchange", fromHash);

    document.addEventListener("keydown", function (event) {
      if (event.metaKey || event.ctrlKey || event.altKey) return;
      if (isTyping(event.target)) {
        if (event.key === "Escape") event.target.blur();
        return;
      }
      if (event.key === "Tab" && !view.hidden) {
        keepFocusInView(event);
        return;
      }
      switch (event.key) {
        case "j": case "ArrowRight": step(1); break;
        case "k": case "ArrowLeft": step(-1); break;
        case "Escape": close(); break;
        case "/": close(); if (filter) filter.focus(); break;
        case "[": followRel("prev"); break;
        case "]": followRel("next"); break;
        default: return;
      }
      event.preventDefault();
    });
    fromHash();
  }

  // ---- Index page -----------------------------------------------------------------------
  function setupIndex(search) {
    const cards = Array.from(document.querySelectorAll(".layer-card"));
    const status = document.getElementById("search-status");
    const results = document.getElementById("search-results");
    const MAX_RESULTS = 50;

    function parse() {
      const text = search.value.trim();
      const bare = /^(\d+)$/.exec(text);
      if (bare) return { name: "", channel: bare[1] };
      const match = /^(.*?)[\s:#]+(\d+)$/.exec(text);
      return match ? { name: match[1].toLowerCase(), channel: match[2] } : { name: text.toLowerCase(), channel: null };
    }
    function matching(query) {
      return cards.filter(function (card) { return card.dataset.name.toLowerCase().indexOf(query.name) >= 0; });
    }
    function units(query) {
      // every layer of the atlas (search.js: name, slug, count, page ranges) holding the unit
      if (query.channel === null) return [];
      const number = Number(query.channel);
      const found = [];
      (window.atlasSearch || []).forEach(function (layer) {
        if (layer[0].toLowerCase().indexOf(query.name) < 0) return;
        const page = layer[3].find(function (p) { return number >= p[0] && number <= p[1]; });
        if (page) found.push({ name: layer[0], exact: layer[0].toLowerCase() === query.name, href: page[2] + "#channel-" + number });
      });
      return found;
    }
    function showUnits(found, channel) {
      results.replaceChildren();
      found.slice(0, MAX_RESULTS).forEach(function (unit) {
        const item = make("li");
        const link = make("a", "", unit.name + " · unit " + channel);
        link.href = unit.href;
        item.appendChild(link);
        results.appendChild(item);
      });
      results.hidden = !found.length;
    }
    search.addEventListener("input", function () {
      const query = parse();
      const found = matching(query);
      const hits = units(query);
      cards.forEach(function (card) { card.hidden = found.indexOf(card) < 0 && !hits.some(function (h) { return h.name === card.dataset.name; }); });
      showUnits(hits, query.channel);
      if (!search.value.trim()) status.textContent = "";
      else if (query.channel !== null) {
        status.textContent = hits.length + " unit" + (hits.length === 1 ? "" : "s") + " " + query.channel +
          (hits.length > MAX_RESULTS ? " (first " + MAX_RESULTS + " shown)" : "") + (hits.length === 1 ? " · press Enter to open it" : "");
      } else status.textContent = found.length + " of " + cards.length + " layers";
    });
    search.addEventListener("keydown", function (event) {
      if (event.key !== "Enter") return;
      const query = parse();
      const hits = units(query);
      const exactHits = hits.filter(function (hit) { return hit.exact; });
      const hit = exactHits.length === 1 ? exactHits[0] : hits.length === 1 ? hits[0] : null;
      if (hit) { window.location.href = hit.href; return; }
      const found = matching(query);
      const exact = found.filter(function (card) { return card.dataset.name.toLowerCase() === query.name; });
      const target = exact.length === 1 ? exact[0] : found.length === 1 ? found[0] : null;
      if (target && query.channel === null) window.location.href = target.dataset.slug + ".html";
    });
    document.addEventListener("keydown", function (event) {
      if (event.key === "/" && !isTyping(event.target)) {
        search.focus();
        event.preventDefault();
      }
    });
  }

  function setupPageKeys() {
    document.addEventListener("keydown", function (event) {
      if (event.metaKey || event.ctrlKey || event.altKey || isTyping(event.target)) return;
      if (event.key === "[") followRel("prev");
      if (event.key === "]") followRel("next");
    });
  }

  // ---- Feature index page (SAE layers) ------------------------------------------------------
  // rows of window.atlasFeatureIndex: [feature, label, class raised most, positions, images], and
  // where the model names its classes, the name of the class raised most
  function setupFeatureIndex(search) {
    const status = document.getElementById("feature-status");
    const results = document.getElementById("feature-results");
    const MAX_ROWS = 200;

    function test(token) {
      const bound = /^(images)?([<>])(\d*\.?\d+(?:e-?\d+)?)$/.exec(token);
      if (bound) {
        const column = bound[1] ? 4 : 3;
        const limit = Number(bound[3]);
        return function (row) { return row[column] !== null && (bound[2] === ">" ? row[column] > limit : row[column] < limit); };
      }
      if (/^\d+$/.test(token)) return function (row) { return row[0] === Number(token); };
      const word = token.toLowerCase();
      return function (row) {
        return String(row[1]).toLowerCase().indexOf(word) >= 0 || String(row[5] || "").toLowerCase().indexOf(word) >= 0;
      };
    }
    function tests(text) {
      // "class 207" (or class:207) is one test: the class the feature raises most
      const found = [];
      text.trim().replace(/class[\s:]+(\d+)/gi, function (_, number) {
        found.push(function (row) { return row[2] === Number(number); });
        return " ";
      }).split(/\s+/).filter(Boolean).forEach(function (token) { found.push(test(token)); });
      return found;
    }
    function percent(value) { return value === null ? "–" : (100 * value).toPrecision(3) + "%"; }
    function render() {
      const rows = window.atlasFeatureIndex || [];
      const checks = tests(search.value);
      const hits = rows.filter(function (row) { return checks.every(function (check) { return check(row); }); });
      results.replaceChildren();
      hits.slice(0, MAX_ROWS).forEach(function (row) {
        const line = make("tr");
        const cell = make("td");
        const link = make("a", "", "#" + row[0]);
        link.href = search.dataset.layerPage + "#channel-" + row[0];
        cell.appendChild(link);
        line.appendChild(cell);
        const raised = row[2] === null ? "–" : row[5] ? row[2] + " " + row[5] : "class " + row[2];
        [row[1], raised, percent(row[3]), percent(row[4])].forEach(function (text) {
          line.appendChild(make("td", "", String(text)));
        });
        results.appendChild(line);
      });
      status.textContent = hits.length + " of " + rows.length + " features" +
        (hits.length > MAX_ROWS ? " (first " + MAX_ROWS + " shown)" : "");
    }
    search.addEventListener("input", render);
    window.addEventListener("load", render);
  }

  // Keep the current layer visible in a long layer bar (horizontal scroll only, never the page).
  const bar = document.querySelector(".layerbar");
  const here = bar && bar.querySelector('[aria-current="page"]');
  if (here) bar.scrollLeft = here.offsetLeft - (bar.clientWidth - here.offsetWidth) / 2;

  const list = document.getElementById("channels");
  const search = document.getElementById("layer-search");
  const featureSearch = document.getElementById("feature-search");
  if (list) setupLayerPage(list);
  else if (search) setupIndex(search);
  else if (featureSearch) setupFeatureIndex(featureSearch);
  else setupPageKeys();
})();

// datacure serve: the one script of the app. No framework, no build step, nothing fetched from
// elsewhere. User data only ever reaches the page through textContent (never innerHTML).
(function () {
  "use strict";
  var meta = document.querySelector('meta[name="dc-token"]');
  var TOKEN = meta ? meta.getAttribute("content") : "";
  var statusBox = document.getElementById("dc-status");

  function say(msg, kind) {
    if (!statusBox) return;
    statusBox.textContent = msg || "";
    statusBox.className = kind || "";
  }

  function sleep(ms) {
    return new Promise(function (r) { setTimeout(r, ms); });
  }

  // POST JSON; a 503 (the store is busy: another process writes it) is retried until it
  // succeeds, so a decision is never dropped. Other errors reject with the server's message.
  async function post(url, body, asText) {
    var headers = { "Content-Type": "application/json" };
    if (TOKEN) headers["X-Datacure-Token"] = TOKEN;
    for (var attempt = 0; ; attempt++) {
      var resp = await fetch(url, {
        method: "POST", headers: headers, body: JSON.stringify(body),
        credentials: "same-origin",
      });
      if (resp.status === 503) {
        var wait = parseFloat(resp.headers.get("Retry-After") || "2");
        say("the store is busy (another command is writing it): retrying…", "busy");
        await sleep(Math.min(wait, 5) * 1000);
        continue;
      }
      if (!resp.ok) {
        var err = {};
        try { err = await resp.json(); } catch (e) { err = { error: resp.statusText }; }
        throw new Error((err.error || "error") + (err.fix ? " (" + err.fix + ")" : ""));
      }
      return asText ? resp.text() : resp.json();
    }
  }
  window.datacure = { post: post };

  // --- review ------------------------------------------------------------------------------
  function markDecided(rowEl, decision, newLabel) {
    if (!rowEl) return;
    var cell = rowEl.querySelector(".decision");
    if (!cell) return;
    cell.textContent = "";
    var b = document.createElement("span");
    b.className = "badge " + decision;
    b.textContent = decision + (newLabel ? " → " + newLabel : "");
    cell.appendChild(b);
    rowEl.setAttribute("data-decision", decision);
  }

  async function decide(holder, decision, newLabel) {
    var rowId = parseInt(holder.getAttribute("data-row-id"), 10);
    var auditor = holder.getAttribute("data-auditor");
    var body = { row_id: rowId, auditor: auditor, decision: decision };
    if (newLabel) body.new_label = newLabel;
    say("saving " + decision + " of row " + rowId + " (" + auditor + ")…");
    try {
      var res = await post("/api/reviews", body);
      say("saved: " + decision + " of row " + rowId + " (" + auditor + "); " +
          res.edits_changed + " edits updated", "ok");
      markDecided(holder.closest("tr.flag") || holder.closest(".flagcard"), decision, newLabel);
      if (document.body.getAttribute("data-page") === "row") location.reload();
    } catch (e) {
      say(String(e.message || e), "err");
    }
  }

  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest("button[data-decision]");
    if (btn) {
      decide(btn.closest(".decide"), btn.getAttribute("data-decision"));
    }
  });
  document.addEventListener("change", function (ev) {
    var sel = ev.target;
    if (sel.classList && sel.classList.contains("relabel") && sel.value) {
      decide(sel.closest(".decide"), "relabel", sel.value);
    }
  });

  // bulk: the whole filtered selection, decided on the server in one transaction
  var bulk = document.getElementById("bulk");
  if (bulk) {
    var filter = JSON.parse(bulk.getAttribute("data-filter") || "{}");
    var total = bulk.parentNode.querySelector("#count");
    var n = total ? total.getAttribute("data-total") : "?";
    async function runBulk(decision, label) {
      var what = decision + (label ? " to " + label : "") + " all " + n + " matching flags";
      if (!window.confirm(what + "?")) return;
      var body = { filter: filter, decision: decision };
      if (label) body.new_label = label;
      say("saving: " + what + "…");
      try {
        var res = await post("/api/reviews", body);
        say("saved: " + res.flags + " flags " + decision + "; " + res.edits_changed +
            " edits updated", "ok");
        setTimeout(function () { location.reload(); }, 300);
      } catch (e) { say(String(e.message || e), "err"); }
    }
    bulk.addEventListener("click", function (ev) {
      var b = ev.target.closest("button[data-bulk]");
      if (b) runBulk(b.getAttribute("data-bulk"));
    });
    var bl = document.getElementById("bulk-label");
    if (bl) bl.addEventListener("change", function () { if (bl.value) runBulk("relabel", bl.value); });
  }

  // keyboard: j/k move, a accept, r reject, l relabel, o/Enter open, / search
  var rows = Array.prototype.slice.call(document.querySelectorAll("tr.flag"));
  var cur = -1;
  function focusRow(i) {
    if (!rows.length) return;
    cur = Math.max(0, Math.min(rows.length - 1, i));
    rows.forEach(function (r, j) { r.classList.toggle("cur", j === cur); });
    rows[cur].focus();
  }
  document.addEventListener("keydown", function (ev) {
    var t = ev.target;
    var typing = t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT");
    if (typing || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    var q = document.getElementById("q");
    if (ev.key === "/" && q) { ev.preventDefault(); q.focus(); return; }
    if (!rows.length) return;
    if (ev.key === "j") { focusRow(cur + 1); ev.preventDefault(); return; }
    if (ev.key === "k") { focusRow(cur - 1); ev.preventDefault(); return; }
    if (cur < 0) {
      var active = rows.indexOf(document.activeElement);
      if (active < 0) return;
      cur = active;
    }
    var row = rows[cur];
    var holder = row.querySelector(".decide");
    if (ev.key === "a") { decide(holder, "accept"); focusRow(cur + 1); }
    else if (ev.key === "r") { decide(holder, "reject"); focusRow(cur + 1); }
    else if (ev.key === "l") {
      var sel = holder.querySelector("select.relabel");
      var sug = sel.querySelector("option[data-suggested]");
      if (sug) sel.value = sug.value;
      sel.focus();
      ev.preventDefault();
    } else if (ev.key === "o" || ev.key === "Enter") {
      var a = row.querySelector("a.open");
      if (a) location.href = a.getAttribute("href");
    }
  });

  // --- SQL console -----------------------------------------------------------------------------
  var form = document.getElementById("sql-form");
  if (form) {
    var box = document.getElementById("sql-query");
    var info = document.getElementById("sql-info");
    var errBox = document.getElementById("sql-error");
    var table = document.getElementById("sql-result");
    var prev = document.getElementById("sql-prev");
    var next = document.getElementById("sql-next");
    var PAGE = 100;
    var offset = 0;
    async function runQuery(off) {
      offset = Math.max(0, off);
      errBox.hidden = true;
      info.textContent = "running…";
      var t0 = performance.now();
      try {
        var res = await post("/api/sql", { query: box.value, limit: PAGE, offset: offset });
        var head = table.tHead, body = table.tBodies[0];
        head.textContent = ""; body.textContent = "";
        var tr = document.createElement("tr");
        res.columns.forEach(function (c) {
          var th = document.createElement("th"); th.textContent = c; tr.appendChild(th);
        });
        head.appendChild(tr);
        res.rows.forEach(function (r) {
          var row = document.createElement("tr");
          r.forEach(function (v) {
            var td = document.createElement("td");
            td.textContent = v === null ? "NULL" : (typeof v === "object" ? JSON.stringify(v) : String(v));
            if (typeof v === "number") td.className = "num";
            row.appendChild(td);
          });
          body.appendChild(row);
        });
        info.textContent = "rows " + (res.rows.length ? offset + 1 : 0) + "–" +
          (offset + res.rows.length) + (res.more ? " (more follow)" : "") + " · " +
          Math.round(performance.now() - t0) + " ms";
        table.setAttribute("data-rows", String(res.rows.length));
        prev.hidden = offset === 0;
        next.hidden = !res.more;
        say("");
      } catch (e) {
        info.textContent = "";
        errBox.textContent = String(e.message || e);
        errBox.hidden = false;
      }
    }
    form.addEventListener("submit", function (ev) { ev.preventDefault(); runQuery(0); });
    box.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); runQuery(0); }
    });
    prev.addEventListener("click", function () { runQuery(offset - PAGE); });
    next.addEventListener("click", function () { runQuery(offset + PAGE); });
    document.getElementById("sql-csv").addEventListener("click", async function () {
      errBox.hidden = true;
      try {
        var text = await post("/api/sql", { query: box.value, format: "csv" }, true);
        var url = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
        var a = document.createElement("a");
        a.href = url; a.download = "query.csv";
        document.body.appendChild(a); a.click(); a.remove();
        setTimeout(function () { URL.revokeObjectURL(url); }, 1000);
      } catch (e) { errBox.textContent = String(e.message || e); errBox.hidden = false; }
    });
  }

  // --- embedding map ---------------------------------------------------------------------------
  var canvas = document.getElementById("map");
  if (canvas) {
    var PALETTE = ["#c8ccd2", "#d55e00", "#0072b2", "#009e73", "#cc79a7", "#e69f00", "#56b4e9",
                   "#8c564b", "#7f7f7f", "#bcbd22", "#17becf", "#9467bd", "#f0e442"];
    fetch("/api/map", { credentials: "same-origin" }).then(function (r) { return r.json(); })
      .then(function (m) {
        var infoEl = document.getElementById("map-info");
        if (!m || !m.x) { infoEl.textContent = "No embedding to map: run datacure embed."; return; }
        var ctx = canvas.getContext("2d");
        var W = canvas.width, H = canvas.height, pad = 10;
        var px = m.x.map(function (x) { return pad + x * (W - 2 * pad); });
        var py = m.y.map(function (y) { return pad + (1 - y) * (H - 2 * pad); });
        var colour = function (g) {
          return m.legend[g].group === "not flagged" ? PALETTE[0] : PALETTE[1 + (g % (PALETTE.length - 1))];
        };
        ctx.fillStyle = "#fbfbfc"; ctx.fillRect(0, 0, W, H);
        [false, true].forEach(function (flagged) {   // flags drawn on top
          for (var i = 0; i < px.length; i++) {
            var isFlag = m.legend[m.group[i]].group !== "not flagged";
            if (isFlag !== flagged) continue;
            ctx.fillStyle = colour(m.group[i]);
            ctx.beginPath(); ctx.arc(px[i], py[i], flagged ? 3 : 2, 0, 6.283); ctx.fill();
          }
        });
        var legend = document.getElementById("map-legend");
        m.legend.forEach(function (l, g) {
          var s = document.createElement("span");
          var dot = document.createElement("i"); dot.style.background = colour(g);
          s.appendChild(dot); s.appendChild(document.createTextNode(l.group + " (" + l.count + ")"));
          legend.appendChild(s);
        });
        infoEl.textContent = m.sampled + " of " + m.total + " rows of " + m.embedding +
          " · click a point to open its row";
        canvas.setAttribute("data-points", String(px.length));
        canvas.addEventListener("click", function (ev) {
          var rect = canvas.getBoundingClientRect();
          var x = (ev.clientX - rect.left) * W / rect.width, y = (ev.clientY - rect.top) * H / rect.height;
          var best = -1, bd = 64;
          for (var i = 0; i < px.length; i++) {
            var d = (px[i] - x) * (px[i] - x) + (py[i] - y) * (py[i] - y);
            if (d < bd) { bd = d; best = i; }
          }
          if (best >= 0) location.href = "/rows/" + m.row_id[best];
        });
      }).catch(function (e) { say(String(e), "err"); });
  }

  // --- busy pages: try again until the store is free ---------------------------------------
  var busy = document.getElementById("dc-busy") || document.getElementById("dc-stale");
  if (busy) {
    (async function poll() {
      for (;;) {
        await sleep(2000);
        try {
          var r = await fetch("/api/health", { credentials: "same-origin" });
          if (r.ok) { location.reload(); return; }
        } catch (e) { /* server restarting: keep trying */ }
      }
    })();
  }
  document.body.setAttribute("data-ready", "1");
})();

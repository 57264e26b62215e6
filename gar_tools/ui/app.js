/* GAR region picker: draw regions on an image, run a GAR tool, watch the answer stream in.
 * Plain browser JavaScript, no dependencies. window.GAR_CONFIG (inlined by the server) says how to reach the tools:
 *   mode "http":    POST {api}/{tool}/stream (server-sent events), GET /ui/config, /ui/examples/{file}, POST /ui/segment
 *   mode "mcp-app": JSON-RPC over postMessage with the MCP host (ui/initialize, tools/call, resources/read)
 */
(function () {
  "use strict";
  const CFG = window.GAR_CONFIG;
  const $ = (id) => document.getElementById(id);
  const PALETTE = CFG.palette || [[230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25]];
  const ID_RE = /^[A-Za-z_][A-Za-z0-9_.\-]{0,31}$/;
  const TOKEN_KEY = "gar-tools-token";

  const state = {
    image: null, // {dataUrl, name, width, height, el}
    regions: [], // see newRegion()
    selected: null,
    mode: "box",
    drag: null,
    polygon: null, // the polygon being drawn: [[x, y], ...]
    tools: CFG.tools,
    model: null,
    segmenter: false,
    running: false,
    lastRequest: null,
  };

  // --- transports ------------------------------------------------------------------------------------------------

  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }

  function askToken() {
    return new Promise((resolve) => {
      const dialog = $("token-dialog");
      const form = $("token-form");
      const done = (ev) => {
        ev.preventDefault();
        const value = $("token-input").value.trim();
        if (!value) return;
        try { sessionStorage.setItem(TOKEN_KEY, value); } catch (e) { /* private mode: keep it for this page */ }
        state.memToken = value;
        form.removeEventListener("submit", done);
        dialog.close();
        resolve(value);
      };
      form.addEventListener("submit", done);
      if (!dialog.open) dialog.showModal();
      $("token-input").focus();
    });
  }

  async function http(path, options = {}, retry = true) {
    const headers = Object.assign({}, options.headers || {});
    if (CFG.token_required && !(token() || state.memToken)) await askToken();
    const tok = token() || state.memToken;
    if (tok) headers.Authorization = "Bearer " + tok;
    const response = await fetch(path, Object.assign({}, options, { headers }));
    if (response.status === 401 && retry) {
      await askToken();
      return http(path, options, false);
    }
    return response;
  }

  async function errorOf(response) {
    try {
      const body = await response.json();
      const e = body.error || {};
      return (e.field ? e.field + ": " : "") + (e.message || JSON.stringify(body));
    } catch (e) {
      return "HTTP " + response.status;
    }
  }

  const bridge = {
    next: 1,
    pending: new Map(),
    request(method, params) {
      const id = this.next++;
      return new Promise((resolve, reject) => {
        this.pending.set(id, { resolve, reject });
        window.parent.postMessage({ jsonrpc: "2.0", id, method, params }, "*");
      });
    },
    notify(method, params) {
      window.parent.postMessage({ jsonrpc: "2.0", method, params }, "*");
    },
  };

  function onHostMessage(event) {
    if (event.source !== window.parent) return;
    const msg = event.data;
    if (!msg || msg.jsonrpc !== "2.0") return;
    if (msg.id !== undefined && (msg.result !== undefined || msg.error !== undefined) && !msg.method) {
      const waiter = bridge.pending.get(msg.id);
      if (!waiter) return;
      bridge.pending.delete(msg.id);
      if (msg.error) waiter.reject(new Error(msg.error.message || "host error"));
      else waiter.resolve(msg.result);
      return;
    }
    if (msg.method === "ui/notifications/tool-input") {
      showToolInput((msg.params || {}).arguments || {});
    } else if (msg.method === "ui/notifications/tool-result") {
      // the result of the call the agent made (the one this view was opened for)
      resetOutput();
      try { showResult(callToolResultToResult(msg.params || {})); } catch (e) { showError(e.message); }
    } else if (msg.id !== undefined) {
      // host requests we have nothing to do for (ping, ui/resource-teardown): answer so the host is not kept waiting
      window.parent.postMessage({ jsonrpc: "2.0", id: msg.id, result: {} }, "*");
    }
  }

  function callToolResultToResult(callResult) {
    const content = callResult.content || [];
    const result = Object.assign({}, callResult.structuredContent || {});
    if (result.text === undefined) {
      const text = content.find((c) => c.type === "text");
      if (text) {
        try { Object.assign(result, JSON.parse(text.text)); } catch (e) { result.text = text.text; }
      }
    }
    const image = content.find((c) => c.type === "image");
    if (image) result.overlay_png = image.data;
    if (callResult.isError) {
      const text = content.find((c) => c.type === "text");
      throw new Error(text ? text.text : "the tool failed");
    }
    return result;
  }

  async function exampleFile(file) {
    if (CFG.mode === "mcp-app") {
      const read = await bridge.request("resources/read", { uri: CFG.examples_uri + file });
      const item = (read.contents || [])[0] || {};
      return "data:image/png;base64," + item.blob;
    }
    const response = await http("/ui/examples/" + encodeURIComponent(file));
    if (!response.ok) throw new Error(await errorOf(response));
    return blobToDataUrl(await response.blob());
  }

  function blobToDataUrl(blob) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(blob);
    });
  }

  // --- image and regions -----------------------------------------------------------------------------------------

  function loadImage(dataUrl, name) {
    return new Promise((resolve, reject) => {
      const el = new Image();
      el.onload = () => {
        state.image = { dataUrl, name, width: el.naturalWidth, height: el.naturalHeight, el };
        state.regions = [];
        state.selected = null;
        state.polygon = null;
        for (const id of ["image-canvas", "draw-canvas"]) {
          $(id).width = el.naturalWidth;
          $(id).height = el.naturalHeight;
        }
        $("image-canvas").getContext("2d").drawImage(el, 0, 0);
        $("drop-hint").hidden = true;
        layout();
        render();
        resolve();
      };
      el.onerror = () => reject(new Error("the browser cannot read this file as an image"));
      el.src = dataUrl;
    });
  }

  function layout() {
    // the drawing canvas lies exactly on the image canvas
    const image = $("image-canvas");
    const draw = $("draw-canvas");
    draw.style.width = image.clientWidth + "px";
    draw.style.height = image.clientHeight + "px";
    draw.style.left = image.offsetLeft + "px";
    draw.style.top = image.offsetTop + "px";
  }

  function colour(index, alpha) {
    const c = PALETTE[index % PALETTE.length];
    return alpha === undefined ? `rgb(${c[0]},${c[1]},${c[2]})` : `rgba(${c[0]},${c[1]},${c[2]},${alpha})`;
  }

  function freshId() {
    const used = new Set(state.regions.map((r) => r.id));
    for (let k = 0; ; k++) if (!used.has("r" + k)) return "r" + k;
  }

  function newRegion(kind, extra) {
    const region = Object.assign({ id: freshId(), kind, mask: null, maskUrl: null, segment: null }, extra || {});
    state.regions.push(region);
    state.selected = region;
    return region;
  }

  function maskCanvas() {
    const c = document.createElement("canvas");
    c.width = state.image.width;
    c.height = state.image.height;
    return c;
  }

  function toAlpha(canvas) {
    // a white-on-black mask (as PNG masks and the wire format have it) -> white on transparent, for drawing
    const ctx = canvas.getContext("2d");
    const image = ctx.getImageData(0, 0, canvas.width, canvas.height);
    const d = image.data;
    for (let o = 0; o < d.length; o += 4) {
      const inside = d[o] || d[o + 1] || d[o + 2];
      d[o] = d[o + 1] = d[o + 2] = 255;
      d[o + 3] = inside ? 255 : 0;
    }
    ctx.putImageData(image, 0, 0);
    return canvas;
  }

  function maskDataUrl(canvas) {
    // white-on-transparent drawing -> the wire's PNG mask: white inside, black outside, the image's size
    const out = maskCanvas();
    const ctx = out.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, out.width, out.height);
    ctx.drawImage(canvas, 0, 0);
    return out.toDataURL("image/png");
  }

  function tinted(region, index) {
    // the region's mask filled with its colour (cached until the mask or the colour changes)
    const key = index + ":" + region.maskVersion;
    if (region.tint && region.tintKey === key) return region.tint;
    const c = maskCanvas();
    const ctx = c.getContext("2d");
    ctx.drawImage(region.mask, 0, 0);
    ctx.globalCompositeOperation = "source-in";
    ctx.fillStyle = colour(index, 0.45);
    ctx.fillRect(0, 0, c.width, c.height);
    region.tint = c;
    region.tintKey = key;
    return c;
  }

  function regionBounds(region) {
    if (region.box) return region.box;
    const pts = region.polygon || region.points || [];
    if (pts.length) {
      const xs = pts.map((p) => p[0]);
      const ys = pts.map((p) => p[1]);
      return [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)];
    }
    return region.bounds || [0, 0, 0, 0];
  }

  function render() {
    const canvas = $("draw-canvas");
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!state.image) return;
    const px = state.image.width / Math.max(1, canvas.clientWidth || state.image.width); // image pixels per CSS px
    ctx.lineWidth = 2 * px;
    state.regions.forEach((region, i) => {
      ctx.strokeStyle = colour(i);
      ctx.fillStyle = colour(i, 0.3);
      const preview = region.segment && region.segment.mask;
      if (region.mask) ctx.drawImage(tinted(region, i), 0, 0);
      if (preview) {
        ctx.globalAlpha = region.segment.accepted ? 1 : 0.75;
        ctx.drawImage(tinted(region.segment, i), 0, 0);
        ctx.globalAlpha = 1;
      }
      if (region.box) {
        const [x1, y1, x2, y2] = region.box;
        if (!preview) ctx.fillRect(x1, y1, x2 - x1, y2 - y1);
        ctx.setLineDash(preview ? [6 * px, 4 * px] : []);
        ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
        ctx.setLineDash([]);
      }
      if (region.polygon) {
        ctx.beginPath();
        region.polygon.forEach(([x, y], k) => (k ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
        ctx.closePath();
        ctx.fill();
        ctx.stroke();
      }
      if (region.points) {
        region.points.forEach(([x, y], k) => {
          ctx.beginPath();
          ctx.arc(x, y, 6 * px, 0, 2 * Math.PI);
          ctx.fillStyle = region.labels[k] ? colour(i) : "#000";
          ctx.fill();
          ctx.strokeStyle = "#fff";
          ctx.stroke();
        });
      }
      const [bx, by] = regionBounds(region);
      ctx.font = `bold ${Math.round(14 * px)}px system-ui, sans-serif`;
      const label = region.id;
      const w = ctx.measureText(label).width + 8 * px;
      ctx.fillStyle = colour(i);
      ctx.fillRect(bx, Math.max(0, by - 18 * px), w, 18 * px);
      ctx.fillStyle = "#fff";
      ctx.fillText(label, bx + 4 * px, Math.max(0, by - 18 * px) + 14 * px);
    });
    if (state.polygon && state.polygon.length) {
      ctx.strokeStyle = colour(state.regions.length);
      ctx.setLineDash([6 * px, 4 * px]);
      ctx.beginPath();
      state.polygon.forEach(([x, y], k) => (k ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      if (state.hover) ctx.lineTo(state.hover[0], state.hover[1]);
      ctx.stroke();
      ctx.setLineDash([]);
      for (const [x, y] of state.polygon) ctx.fillRect(x - 3 * px, y - 3 * px, 6 * px, 6 * px);
    }
    if (state.drag && state.drag.kind === "box") {
      const { x0, y0, x1, y1 } = state.drag;
      ctx.strokeStyle = colour(state.regions.length);
      ctx.setLineDash([6 * px, 4 * px]);
      ctx.strokeRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
      ctx.setLineDash([]);
    }
    renderRegionList();
  }

  function renderRegionList() {
    const list = $("region-list");
    list.textContent = "";
    if (!state.regions.length) {
      const li = document.createElement("li");
      li.className = "muted small";
      li.textContent = "No regions yet: draw one on the image.";
      list.appendChild(li);
    }
    state.regions.forEach((region, i) => {
      const li = document.createElement("li");
      li.className = region === state.selected ? "selected" : "";
      li.dataset.regionId = region.id;
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = colour(i);
      const id = document.createElement("input");
      id.type = "text";
      id.value = region.id;
      id.title = "region id (questions name it as <id>)";
      id.addEventListener("change", () => {
        const value = id.value.trim();
        if (!ID_RE.test(value) || state.regions.some((r) => r !== region && r.id === value)) {
          id.value = region.id;
          showError("a region id is a letter or _, then letters, digits, _ . - (at most 32), unique per request");
          return;
        }
        region.id = value;
        render();
      });
      const kind = document.createElement("span");
      kind.className = "kind";
      kind.textContent = describeKind(region);
      const select = document.createElement("button");
      select.textContent = "select";
      select.title = "brush strokes and points go to the selected region";
      select.addEventListener("click", () => { state.selected = region; render(); });
      const remove = document.createElement("button");
      remove.textContent = "×";
      remove.title = "remove this region";
      remove.addEventListener("click", () => {
        state.regions = state.regions.filter((r) => r !== region);
        if (state.selected === region) state.selected = null;
        render();
      });
      li.append(swatch, id, kind, select, remove);
      if (region.segment) li.appendChild(segmentRow(region));
      list.appendChild(li);
    });
  }

  function describeKind(region) {
    if (region.kind === "points") return `${region.points.length} point${region.points.length === 1 ? "" : "s"}`;
    if (region.kind === "mask") return "mask";
    if (region.kind === "brush") return "painted mask";
    if (region.kind === "polygon") return `polygon, ${region.polygon.length} corners`;
    return "box " + region.box.map(Math.round).join(", ");
  }

  function segmentRow(region) {
    const row = document.createElement("div");
    row.className = "seg";
    const seg = region.segment;
    if (seg.pending) {
      row.textContent = "segmenting…";
    } else if (seg.error) {
      row.textContent = seg.error;
    } else if (seg.accepted) {
      row.textContent = `mask accepted (score ${seg.score.toFixed(2)})`;
    } else {
      const text = document.createElement("span");
      text.textContent = `mask preview, score ${seg.score.toFixed(2)}`;
      const accept = document.createElement("button");
      accept.textContent = "Accept";
      accept.className = "accept";
      accept.addEventListener("click", () => { seg.accepted = true; render(); });
      const redraw = document.createElement("button");
      redraw.textContent = "Redraw";
      redraw.addEventListener("click", () => {
        region.segment = null;
        if (region.kind === "points") { region.points = []; region.labels = []; }
        state.selected = region;
        if (region.kind === "box") state.regions = state.regions.filter((r) => r !== region);
        render();
      });
      row.append(text, accept, redraw);
    }
    return row;
  }

  // --- drawing ---------------------------------------------------------------------------------------------------

  function imagePoint(event) {
    const canvas = $("draw-canvas");
    const rect = canvas.getBoundingClientRect();
    const x = ((event.clientX - rect.left) / rect.width) * state.image.width;
    const y = ((event.clientY - rect.top) / rect.height) * state.image.height;
    return [Math.max(0, Math.min(state.image.width, x)), Math.max(0, Math.min(state.image.height, y))];
  }

  function brushSize() {
    const canvas = $("draw-canvas");
    return Number($("brush-size").value) * (state.image.width / Math.max(1, canvas.clientWidth));
  }

  function paint(region, from, to) {
    const ctx = region.mask.getContext("2d");
    ctx.strokeStyle = "#fff";
    ctx.fillStyle = "#fff";
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.lineWidth = brushSize();
    ctx.beginPath();
    ctx.moveTo(from[0], from[1]);
    ctx.lineTo(to[0] + 0.01, to[1]);
    ctx.stroke();
    region.maskVersion = (region.maskVersion || 0) + 1;
    const r = ctx.lineWidth / 2;
    const b = region.bounds || [Infinity, Infinity, -Infinity, -Infinity];
    region.bounds = [
      Math.min(b[0], to[0] - r, from[0] - r), Math.min(b[1], to[1] - r, from[1] - r),
      Math.max(b[2], to[0] + r, from[0] + r), Math.max(b[3], to[1] + r, from[1] + r),
    ];
  }

  function onPointerDown(event) {
    if (!state.image || event.button !== 0) return;
    const p = imagePoint(event);
    const canvas = $("draw-canvas");
    canvas.setPointerCapture(event.pointerId);
    if (state.mode === "box") {
      state.drag = { kind: "box", x0: p[0], y0: p[1], x1: p[0], y1: p[1] };
    } else if (state.mode === "brush") {
      let region = state.selected;
      if (!region || region.kind !== "brush") {
        region = newRegion("brush", { mask: maskCanvas(), maskVersion: 0 }); // transparent = outside
      }
      state.drag = { kind: "brush", region, last: p };
      paint(region, p, p);
    } else if (state.mode === "points") {
      let region = state.selected;
      if (!region || region.kind !== "points" || (region.segment && region.segment.accepted)) {
        region = newRegion("points", { points: [], labels: [] });
      }
      region.points.push([Math.round(p[0]), Math.round(p[1])]);
      region.labels.push(event.shiftKey || event.altKey || event.ctrlKey ? 0 : 1);
      requestSegment(region);
    } else if (state.mode === "polygon") {
      const poly = state.polygon || (state.polygon = []);
      const px = state.image.width / Math.max(1, canvas.clientWidth);
      if (poly.length >= 3 && Math.hypot(p[0] - poly[0][0], p[1] - poly[0][1]) < 10 * px) {
        closePolygon();
        return;
      }
      poly.push([Math.round(p[0] * 10) / 10, Math.round(p[1] * 10) / 10]);
    }
    render();
  }

  function onPointerMove(event) {
    if (!state.image) return;
    const p = imagePoint(event);
    if (state.drag && state.drag.kind === "box") {
      state.drag.x1 = p[0];
      state.drag.y1 = p[1];
      render();
    } else if (state.drag && state.drag.kind === "brush") {
      paint(state.drag.region, state.drag.last, p);
      state.drag.last = p;
      render();
    } else if (state.polygon) {
      state.hover = p;
      render();
    }
  }

  function onPointerUp() {
    const drag = state.drag;
    state.drag = null;
    if (drag && drag.kind === "box") {
      const box = [Math.min(drag.x0, drag.x1), Math.min(drag.y0, drag.y1), Math.max(drag.x0, drag.x1), Math.max(drag.y0, drag.y1)]
        .map(Math.round);
      if (box[2] - box[0] >= 2 && box[3] - box[1] >= 2) {
        const region = newRegion("box", { box });
        requestSegment(region);
      }
    }
    render();
  }

  function closePolygon() {
    // a double-click also clicked twice: drop corners that repeat the one before
    const poly = (state.polygon || []).filter((p, k, all) => !k || Math.hypot(p[0] - all[k - 1][0], p[1] - all[k - 1][1]) > 1);
    state.polygon = null;
    state.hover = null;
    if (poly && poly.length >= 3) newRegion("polygon", { polygon: poly });
    render();
  }

  // --- segmenter -------------------------------------------------------------------------------------------------

  function rleToCanvas(rle) {
    // COCO RLE (compressed string or list of counts, column-major, starting outside) -> white-on-black canvas
    const [h, w] = rle.size;
    let counts = rle.counts;
    if (typeof counts === "string") {
      const s = counts;
      counts = [];
      let p = 0;
      while (p < s.length) {
        let x = 0, k = 0, more = 1;
        while (more) {
          const c = s.charCodeAt(p) - 48;
          x |= (c & 0x1f) << (5 * k);
          more = c & 0x20;
          p++;
          k++;
          if (!more && (c & 0x10)) x |= -1 << (5 * k);
        }
        if (counts.length > 2) x += counts[counts.length - 2];
        counts.push(x);
      }
    }
    const c = document.createElement("canvas");
    c.width = w;
    c.height = h;
    const ctx = c.getContext("2d");
    const data = ctx.createImageData(w, h);
    let i = 0;
    counts.forEach((n, k) => {
      if (k % 2 === 1) {
        for (let j = i; j < i + n; j++) {
          const o = ((j % h) * w + Math.floor(j / h)) * 4;
          data.data[o] = data.data[o + 1] = data.data[o + 2] = 255;
        }
      }
      i += n;
    });
    for (let o = 3; o < data.data.length; o += 4) data.data[o] = data.data[o - 1]; // outside stays transparent
    ctx.putImageData(data, 0, 0);
    return c;
  }

  async function requestSegment(region) {
    if (!state.segmenter || CFG.mode === "mcp-app") return;
    const body = { image: state.image.dataUrl };
    if (region.kind === "box") body.box = region.box;
    else { body.points = region.points; body.labels = region.labels; }
    region.segment = { pending: true };
    render();
    try {
      const response = await http("/ui/segment", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      if (!response.ok) throw new Error(await errorOf(response));
      const answer = await response.json();
      region.segment = { rle: answer.rle, score: Number(answer.score || 0), mask: null, accepted: false, maskVersion: 1 };
      region.segment.mask = rleToCanvas(answer.rle);
    } catch (e) {
      region.segment = { error: "segmenter: " + e.message };
    }
    render();
  }

  // --- requests --------------------------------------------------------------------------------------------------

  function currentTool() {
    return state.tools.find((t) => t.name === $("tool-select").value) || state.tools[0];
  }

  function wireRegion(region) {
    const out = { id: region.id };
    const seg = region.segment;
    const accepts = (field) => (state.regionFields || []).includes(field);
    if (seg && seg.accepted && region.kind === "points" && accepts("points")) {
      out.points = region.points; // the server segments them again (the same segmenter gave the preview)
      out.labels = region.labels;
    } else if (seg && seg.accepted && region.kind === "box" && accepts("segment")) {
      out.box = region.box;
      out.segment = true;
    } else if (seg && seg.accepted && seg.rle) out.rle = seg.rle; // a server whose regions take masks only
    else if (region.kind === "mask") out.mask = region.maskUrl;
    else if (region.kind === "brush") out.mask = maskDataUrl(region.mask);
    else if (region.kind === "polygon") out.polygon = [region.polygon.flat()];
    else if (region.kind === "box") out.box = region.box;
    else if (region.kind === "points") { out.points = region.points; out.labels = region.labels; }
    return out;
  }

  function buildRequest() {
    const spec = currentTool();
    const regions = state.regions.map(wireRegion);
    const request = { image: state.image ? state.image.dataUrl : "" };
    request[spec.regions_field] = spec.single_region ? regions[0] : regions;
    for (const field of spec.fields) {
      const el = $("field-" + field.name);
      if (!el) continue;
      if (field.kind === "list") {
        const items = el.value.split("\n").map((s) => s.trim()).filter(Boolean);
        if (items.length) request[field.name] = items;
      } else if (field.kind === "boolean") {
        if (el.checked || field.required) request[field.name] = el.checked;
      } else if (field.kind === "number") {
        if (el.value.trim()) request[field.name] = Number(el.value);
      } else if (el.value.trim()) {
        request[field.name] = el.value.trim();
      }
    }
    request.max_new_tokens = Number($("max-tokens").value) || 256;
    request.overlay = $("overlay-check").checked;
    return request;
  }

  function checkRegions(spec) {
    const n = state.regions.length;
    if (!state.image) return "open an image first";
    if (n < spec.min_regions || n > spec.max_regions) {
      const want = spec.min_regions === spec.max_regions ? `exactly ${spec.min_regions}` : `${spec.min_regions} to ${spec.max_regions}`;
      return `${spec.name} takes ${want} region${spec.max_regions === 1 ? "" : "s"}; ${n} drawn`;
    }
    const pending = state.regions.find((r) => r.kind === "points" && !(r.segment && r.segment.accepted));
    if (pending) return `region ${pending.id}: accept its mask preview (or redraw it) before running`;
    return null;
  }

  async function run() {
    const spec = currentTool();
    const problem = checkRegions(spec);
    if (problem) { showError(problem); return; }
    const request = buildRequest();
    state.lastRequest = { tool: spec.name, request };
    resetOutput();
    state.running = true;
    updateRunButton();
    $("status").textContent = "running " + spec.name + "…";
    const started = performance.now();
    try {
      let result;
      if (CFG.mode === "mcp-app") {
        const answer = await bridge.request("tools/call", { name: spec.name, arguments: request });
        result = callToolResultToResult(answer);
      } else {
        result = await streamTool(spec.name, request);
      }
      showResult(result, performance.now() - started);
    } catch (e) {
      showError(e.message);
      $("status").textContent = "failed";
    } finally {
      state.running = false;
      $("progress").hidden = true;
      updateRunButton();
    }
  }

  async function streamTool(tool, request) {
    const response = await http(`${CFG.api}/${tool}/stream`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify(request),
    });
    if (!response.ok) throw new Error(await errorOf(response));
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let streamed = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (!data.length) continue;
        const payload = JSON.parse(data.join("\n"));
        if (event === "text") {
          // text deltas while generating (engines that stream text); {"delta": "..."} or {"text": "so far"}
          if (typeof payload.delta === "string") streamed += payload.delta;
          else if (typeof payload.text === "string") streamed = payload.text.startsWith(streamed) ? payload.text : streamed + payload.text;
          $("output").textContent = streamed;
        } else if (event === "progress") {
          const bar = $("progress");
          if (payload.total) { bar.hidden = false; bar.max = payload.total; bar.value = payload.progress; }
          $("status").textContent = payload.message || `generated ${payload.progress} tokens`;
        } else if (event === "result") {
          return payload;
        } else if (event === "error") {
          const e = payload.error || {};
          throw new Error((e.field ? e.field + ": " : "") + (e.message || "the tool failed"));
        }
      }
    }
    throw new Error("the stream ended without a result");
  }

  // --- output ----------------------------------------------------------------------------------------------------

  function resetOutput() {
    $("error").hidden = true;
    $("output").textContent = "";
    delete $("output").dataset.done;
    $("choice").hidden = true;
    $("overlay-img").hidden = true;
    $("timings").hidden = true;
    $("result-tiny").hidden = true;
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = false;
  }

  function showTiny() {
    $("tiny-note").textContent = CFG.tiny_model_note;
    $("tiny-banner").hidden = false;
  }

  function showResult(result, elapsed) {
    $("output").textContent = result.text || "";
    $("output").dataset.done = "1";
    if (result.tiny_model) {
      showTiny();
      $("result-tiny").textContent = "Tiny test model: this text is meaningless. " + CFG.tiny_model_note;
      $("result-tiny").hidden = false;
    }
    if (result.choice) {
      $("choice").textContent = "choice: " + result.choice;
      $("choice").hidden = false;
    }
    if (result.overlay_png) {
      $("overlay-img").src = "data:image/png;base64," + result.overlay_png;
      $("overlay-img").hidden = false;
    }
    const table = $("timings");
    table.textContent = "";
    const t = result.timings || {};
    const rows = [
      ["model", result.model],
      ["load", t.load_ms !== undefined ? t.load_ms.toFixed(0) + " ms" : null],
      ["encode", t.encode_ms !== undefined ? t.encode_ms.toFixed(0) + " ms" : null],
      ["generate", t.generate_ms !== undefined ? t.generate_ms.toFixed(0) + " ms" : null],
      ["tokens", t.tokens_generated],
      ["round trip", elapsed !== undefined ? elapsed.toFixed(0) + " ms" : null],
    ];
    for (const region of result.regions || []) rows.push([region.id, `box ${region.box.join(", ")} · ${region.area} px`]);
    for (const [name, value] of rows) {
      if (value === null || value === undefined) continue;
      const tr = table.insertRow();
      tr.insertCell().textContent = name;
      tr.insertCell().textContent = String(value);
    }
    table.hidden = false;
    $("status").textContent = "done";
  }

  function showToolInput(args) {
    // what the agent sent (MCP App mode): show its image and regions when they are inline
    if (typeof args.image === "string" && args.image.startsWith("data:")) {
      loadImage(args.image, "image").then(() => {
        const regions = args.regions || (args.region ? [args.region] : []);
        for (const r of regions) {
          if (r.box) newRegion("box", { box: r.box, id: r.id || freshId() });
          else if (r.polygon) newRegion("polygon", { polygon: pairs(r.polygon[0]), id: r.id || freshId() });
        }
        render();
      });
    } else {
      $("status").textContent = "the agent called the tool on an image this view cannot show; its result follows";
    }
  }

  function pairs(flat) {
    const out = [];
    for (let i = 0; i + 1 < flat.length; i += 2) out.push([flat[i], flat[i + 1]]);
    return out;
  }

  // --- copy as JSON / Python / CLI -------------------------------------------------------------------------------

  function requestForCopy() {
    const spec = currentTool();
    const request = buildRequest();
    // files by name rather than inline: the opened image, the bundled examples' masks (in gar_tools/assets)
    request.image = state.image ? state.image.name : "IMAGE";
    const regions = spec.single_region ? [request[spec.regions_field]] : request[spec.regions_field] || [];
    regions.forEach((wire, k) => {
      const region = state.regions[k];
      if (wire && wire.mask && region && region.maskName) wire.mask = region.maskName;
    });
    return { spec, request };
  }

  function py(value, indent) {
    const pad = "    ".repeat(indent + 1);
    const end = "    ".repeat(indent);
    if (value === null || value === undefined) return "None";
    if (value === true) return "True";
    if (value === false) return "False";
    if (typeof value === "number" || typeof value === "string") return JSON.stringify(value);
    if (Array.isArray(value)) {
      if (value.every((v) => typeof v === "number")) return "[" + value.join(", ") + "]";
      return "[\n" + value.map((v) => pad + py(v, indent + 1)).join(",\n") + ",\n" + end + "]";
    }
    const keys = Object.keys(value);
    return "{\n" + keys.map((k) => pad + JSON.stringify(k) + ": " + py(value[k], indent + 1)).join(",\n") + ",\n" + end + "}";
  }

  function shellQuote(s) {
    s = String(s);
    return /^[A-Za-z0-9_.,\/:=@+-]+$/.test(s) ? s : "'" + s.replace(/'/g, "'\\''") + "'";
  }

  function cliCommand(spec, request) {
    const model = state.model ? state.model.model : "tiny";
    const parts = ["gar-tools", spec.cli_command, shellQuote(request.image)];
    for (const name of spec.cli_positionals) if (request[name] !== undefined) parts.push(shellQuote(request[name]));
    const regions = spec.single_region ? [request[spec.regions_field]] : request[spec.regions_field] || [];
    const notes = [];
    for (const r of regions) {
      if (!r) continue;
      if (r.box) parts.push("--box", r.box.join(","));
      else if (r.mask) parts.push("--mask", shellQuote(r.mask));
      else notes.push(`# region ${r.id} is a ${r.polygon ? "polygon" : r.rle ? "COCO RLE mask" : "point set"}: the CLI takes --mask or --box; use the JSON or Python form`);
    }
    for (const r of regions) if (r && (r.box || r.mask)) parts.push("--id", r.id);
    for (const field of spec.fields) {
      if (spec.cli_positionals.includes(field.name) || request[field.name] === undefined) continue;
      const flag = spec.cli_flags[field.name] || "--" + field.name.replace(/_/g, "-");
      const values = Array.isArray(request[field.name]) ? request[field.name] : [request[field.name]];
      for (const v of values) parts.push(flag, shellQuote(v));
    }
    parts.push("--max-new-tokens", String(request.max_new_tokens));
    if (request.overlay) parts.push("--overlay", "overlay.png");
    parts.push("--model", shellQuote(model));
    return notes.concat([parts.join(" ")]).join("\n");
  }

  function copyText(kind) {
    if (!state.image) { showError("open an image and draw regions first"); return; }
    const { spec, request } = requestForCopy();
    let text;
    if (kind === "json") {
      text = JSON.stringify({ tool: spec.name, arguments: request }, null, 2);
    } else if (kind === "python") {
      const model = state.model ? state.model.model : "tiny";
      text = [
        "from gar_tools import GarToolkit",
        "",
        "# image (and example masks): give the files' paths",
        `request = ${py(request, 0)}`,
        `with GarToolkit(${JSON.stringify(model)}) as toolkit:`,
        `    result = toolkit.run(${JSON.stringify(spec.name)}, request)`,
        "print(result.text)",
      ].join("\n");
    } else {
      text = cliCommand(spec, request);
    }
    const area = $("copy-text");
    area.value = text;
    area.hidden = false;
    area.dataset.kind = kind;
    if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text).catch(() => {});
    area.select();
  }

  // --- tools form ------------------------------------------------------------------------------------------------

  function renderTools() {
    const select = $("tool-select");
    const previous = select.value;
    select.textContent = "";
    for (const spec of state.tools) {
      const option = document.createElement("option");
      option.value = spec.name;
      option.textContent = spec.title + " (" + spec.name + ")";
      select.appendChild(option);
    }
    if (state.tools.some((t) => t.name === previous)) select.value = previous;
    renderFields();
  }

  function renderFields() {
    const spec = currentTool();
    const box = $("tool-fields");
    box.textContent = "";
    if (!spec) return;
    $("tool-regions").textContent =
      spec.min_regions === spec.max_regions
        ? `takes exactly ${spec.min_regions} region${spec.min_regions === 1 ? "" : "s"}`
        : `takes ${spec.min_regions} to ${spec.max_regions} regions`;
    for (const field of spec.fields) {
      const label = document.createElement("label");
      label.htmlFor = "field-" + field.name;
      label.textContent = field.name + (field.required ? "" : " (optional)") + (field.kind === "list" ? ", one per line" : "");
      label.title = field.description;
      const input = document.createElement(field.kind === "list" || field.name === "question" ? "textarea" : "input");
      if (input.tagName === "INPUT") input.type = { boolean: "checkbox", number: "number" }[field.kind] || "text";
      else input.rows = field.kind === "list" ? 3 : 2;
      input.id = "field-" + field.name;
      input.placeholder = field.name === "question" ? "What is <r0> doing?" : field.description.split(". ")[0];
      box.append(label, input);
    }
    updateRunButton();
  }

  function updateRunButton() {
    $("run").disabled = state.running || !state.image || !state.tools.length;
  }

  // --- examples --------------------------------------------------------------------------------------------------

  async function loadExample(name) {
    const example = CFG.examples.find((e) => e.name === name);
    if (!example) return;
    $("status").textContent = "loading example " + name + "…";
    try {
      await loadImage(await exampleFile(example.image), example.image);
      for (const r of example.regions) {
        const url = await exampleFile(r.mask);
        const el = await new Promise((resolve, reject) => {
          const img = new Image();
          img.onload = () => resolve(img);
          img.onerror = () => reject(new Error("cannot read mask " + r.mask));
          img.src = url;
        });
        const region = newRegion("mask", { id: r.id, mask: maskCanvas(), maskUrl: url, maskName: r.mask, maskVersion: 1 });
        region.mask.getContext("2d").drawImage(el, 0, 0);
        toAlpha(region.mask);
        region.bounds = maskBounds(region.mask);
      }
      state.selected = null;
      const call = example.calls.find((c) => state.tools.some((t) => t.name === c.tool));
      if (call) {
        $("tool-select").value = call.tool;
        renderFields();
        state.regions = state.regions.filter((r) => call.regions.includes(r.id));
        for (const [key, value] of Object.entries(call.arguments)) {
          const el = $("field-" + key);
          if (el && el.type === "checkbox") el.checked = Boolean(value);
          else if (el) el.value = Array.isArray(value) ? value.join("\n") : String(value);
        }
      }
      $("status").textContent = "example " + name + " loaded";
      render();
      updateRunButton();
    } catch (e) {
      showError(e.message);
    }
  }

  function maskBounds(canvas) {
    const { data, width, height } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
    let x1 = width, y1 = height, x2 = 0, y2 = 0;
    for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) {
      if (data[(y * width + x) * 4 + 3] > 0) { if (x < x1) x1 = x; if (x > x2) x2 = x; if (y < y1) y1 = y; if (y > y2) y2 = y; }
    }
    return x2 >= x1 ? [x1, y1, x2, y2] : [0, 0, 0, 0];
  }

  // --- start -----------------------------------------------------------------------------------------------------

  function setMode(mode) {
    if (mode === "points" && !state.segmenter) return;
    if (state.polygon && mode !== "polygon") closePolygon();
    state.mode = mode;
    for (const b of document.querySelectorAll("#modes button")) b.classList.toggle("active", b.dataset.mode === mode);
    $("brush-size-label").hidden = mode !== "brush";
    const hints = {
      box: "Drag a box." + (state.segmenter ? " The segmenter turns it into a mask preview." : " Sent as a filled rectangle (an approximation)."),
      points: "Click points on the object; Shift-click (or Alt-click) for a point outside it. The segmenter previews the mask.",
      brush: "Paint the region; strokes add to the selected brush region (New region starts another).",
      polygon: "Click the corners; click the first corner, double-click or press Enter to close.",
    };
    $("hint").textContent = hints[mode];
  }

  function applyServerConfig(config) {
    state.model = config.model || null;
    state.segmenter = Boolean(config.segmenter);
    state.regionFields = config.region_fields || CFG.region_fields || [];
    if (config.tools && config.tools.length) state.tools = config.tools;
    if (state.model) {
      $("model-name").textContent = "model: " + state.model.model + (state.model.device ? " on " + state.model.device : "");
    }
    if (state.model && state.model.tiny_model) showTiny();
    const points = document.querySelector('#modes button[data-mode="points"]');
    points.disabled = !state.segmenter;
    if (!state.segmenter) points.title = "Points need a segmenter; this server has none configured";
    renderTools();
    setMode(state.mode);
  }

  async function connect() {
    if (CFG.mode === "mcp-app") {
      window.addEventListener("message", onHostMessage);
      try {
        await bridge.request("ui/initialize", {
          protocolVersion: "2026-01-26",
          appInfo: { name: "gar-tools region picker", version: "1" },
          appCapabilities: {},
        });
        bridge.notify("ui/notifications/initialized", {});
      } catch (e) {
        showError("the MCP host did not answer ui/initialize: " + e.message);
      }
      applyServerConfig({ tools: CFG.tools, segmenter: false });
      $("model-name").textContent = "tools called through the MCP host";
      if (window.ResizeObserver) {
        // tell the host how tall the view is, so it can size its frame
        let last = 0;
        new ResizeObserver(() => {
          const height = document.documentElement.scrollHeight;
          if (height !== last) {
            last = height;
            bridge.notify("ui/notifications/size-changed", { width: document.documentElement.scrollWidth, height });
          }
        }).observe(document.body);
      }
      return;
    }
    const response = await http("/ui/config");
    if (!response.ok) {
      showError("cannot read /ui/config: " + (await errorOf(response)));
      applyServerConfig({ tools: CFG.tools });
      return;
    }
    applyServerConfig(await response.json());
  }

  function wire() {
    const canvas = $("draw-canvas");
    canvas.addEventListener("pointerdown", onPointerDown);
    canvas.addEventListener("pointermove", onPointerMove);
    canvas.addEventListener("pointerup", onPointerUp);
    canvas.addEventListener("dblclick", (e) => { e.preventDefault(); if (state.polygon) closePolygon(); });
    canvas.addEventListener("contextmenu", (e) => e.preventDefault());
    document.addEventListener("keydown", (e) => {
      if (e.target.tagName === "INPUT" || e.target.tagName === "TEXTAREA") return;
      if (e.key === "Enter" && state.polygon) closePolygon();
      if (e.key === "Escape") { state.polygon = null; state.drag = null; render(); }
    });
    for (const b of document.querySelectorAll("#modes button")) b.addEventListener("click", () => setMode(b.dataset.mode));
    $("new-region").addEventListener("click", () => { state.selected = null; if (state.polygon) closePolygon(); render(); });
    $("clear-regions").addEventListener("click", () => { state.regions = []; state.selected = null; state.polygon = null; render(); });
    $("tool-select").addEventListener("change", renderFields);
    $("run").addEventListener("click", run);
    for (const b of document.querySelectorAll("[data-copy]")) b.addEventListener("click", () => copyText(b.dataset.copy));
    const select = $("example-select");
    for (const example of CFG.examples) {
      const option = document.createElement("option");
      option.value = example.name;
      option.textContent = example.name + " (" + example.regions.map((r) => r.id).join(", ") + ")";
      select.appendChild(option);
    }
    select.addEventListener("change", () => { if (select.value) loadExample(select.value); select.value = ""; });
    const openFile = (file) => {
      if (!file) return;
      blobToDataUrl(file).then((url) => loadImage(url, file.name)).then(updateRunButton).catch((e) => showError(e.message));
    };
    $("file-input").addEventListener("change", (e) => openFile(e.target.files[0]));
    const stage = $("stage");
    stage.addEventListener("dragover", (e) => { e.preventDefault(); stage.classList.add("dragover"); });
    stage.addEventListener("dragleave", () => stage.classList.remove("dragover"));
    stage.addEventListener("drop", (e) => {
      e.preventDefault();
      stage.classList.remove("dragover");
      openFile(e.dataTransfer.files[0]);
    });
    window.addEventListener("resize", () => { layout(); render(); });
    if (window.ResizeObserver) new ResizeObserver(() => { layout(); render(); }).observe($("image-canvas"));
  }

  wire();
  renderTools();
  setMode("box");
  connect().catch((e) => showError(e.message));
  window.garPicker = { state, render, loadImage }; // for debugging in the browser console
})();

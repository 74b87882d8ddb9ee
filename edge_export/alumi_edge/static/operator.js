// alumi-edge operator page: the latest detections, the frame with its boxes, and three corrections
// (false positive, missed defect, changed class) posted to /v1/feedback with the detection's id.
// Plain JavaScript, no build step and no external resources; every API call carries the operator's token.
"use strict";

(() => {
  const TOKEN_KEY = "alumi-edge.token";
  const AUTHOR_KEY = "alumi-edge.author";
  const POLL_MS = 3000;
  const RECENT_LIMIT = 30;
  const CLICK_SLOP_PX = 6; // a pointer that moves less than this (CSS px) is a tap, not a drag
  const MIN_BOX_PX = 2; // drawn boxes smaller than this (image px) are dropped
  const PALETTE = ["#ff4d4f", "#52c41a", "#40a9ff", "#fa8c16", "#eb2f96", "#13c2c2", "#fadb14", "#a0d911"];

  const $ = (id) => document.getElementById(id);
  const saved = {
    get(key) {
      try {
        return window.localStorage.getItem(key) || "";
      } catch (err) {
        return "";
      }
    },
    set(key, value) {
      try {
        window.localStorage.setItem(key, value);
      } catch (err) {
        // private mode: the value lasts for this page only
      }
    },
  };

  const state = {
    token: saved.get(TOKEN_KEY),
    classes: [],
    detections: [],
    listSignature: "",
    current: null, // the detection shown
    image: null, // its decoded frame
    selected: -1, // index of the selected model box
    drawn: null, // a box drawn by the operator, image pixels
    drag: null,
    keys: new Map(), // request body → Idempotency-Key: a repeated tap sends the same key
    sent: new Map(), // detection id → corrections saved from this page (drawn on the frame)
    busy: false,
    pollTimer: null,
  };

  const canvas = $("frame");
  const ctx = canvas.getContext("2d");

  // ---- API -----------------------------------------------------------------------------------
  class ApiFailure extends Error {
    constructor(status, code, detail) {
      super(status ? `${status} ${code}: ${detail}` : detail);
      this.status = status;
      this.code = code;
    }
  }

  function describe(detail) {
    if (Array.isArray(detail)) {
      return detail.map((d) => (d && d.field ? `${d.field}: ${d.message}` : JSON.stringify(d))).join("; ");
    }
    return typeof detail === "string" ? detail : JSON.stringify(detail);
  }

  async function api(path, options = {}) {
    const headers = Object.assign({}, options.headers || {});
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    let response;
    try {
      response = await fetch(path, Object.assign({}, options, { headers }));
    } catch (err) {
      throw new ApiFailure(0, "network_error", `the edge server did not answer (${err.message})`);
    }
    if (!response.ok) {
      let code = `http_${response.status}`;
      let detail = response.statusText;
      try {
        const body = await response.json();
        code = body.error || code;
        detail = describe(body.detail);
      } catch (err) {
        // not JSON: keep the status text
      }
      throw new ApiFailure(response.status, code, detail);
    }
    return response;
  }

  function newKey() {
    const bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes); // works on plain http too, unlike crypto.randomUUID
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function keyFor(body) {
    const signature = JSON.stringify(body);
    if (!state.keys.has(signature)) state.keys.set(signature, newKey());
    return state.keys.get(signature);
  }

  // ---- status line ---------------------------------------------------------------------------
  function status(text, kind = "info") {
    const el = $("status");
    el.textContent = text;
    el.dataset.kind = kind;
  }

  function authHint(err) {
    if (err.status === 401) return `${err.message} — paste a valid token above and press "Use token".`;
    return err.message;
  }

  // ---- model and list ------------------------------------------------------------------------
  async function loadModel() {
    try {
      const model = await (await api("v1/model", { cache: "no-store" })).json();
      state.classes = Array.isArray(model.classes) ? model.classes.map(String) : [];
      $("model-info").textContent = `model ${model.model_version} · ${model.runtime} · ${state.classes.length} classes`;
      const select = $("class");
      const previous = select.value;
      select.replaceChildren(
        ...state.classes.map((name) => {
          const option = document.createElement("option");
          option.value = name;
          option.textContent = name;
          return option;
        }),
      );
      if (state.classes.includes(previous)) select.value = previous;
      updateControls();
      return true;
    } catch (err) {
      status(`Could not read the model's classes: ${authHint(err)}`, "error");
      return false;
    }
  }

  function timeText(iso) {
    const when = new Date(iso);
    return Number.isNaN(when.getTime()) ? String(iso) : when.toLocaleTimeString();
  }

  function boxSummary(boxes) {
    if (!boxes.length) return "no boxes";
    const counts = {};
    for (const b of boxes) counts[b.class_name] = (counts[b.class_name] || 0) + 1;
    const parts = Object.entries(counts).map(([name, n]) => (n > 1 ? `${n}× ${name}` : name));
    return `${boxes.length} box${boxes.length > 1 ? "es" : ""}: ${parts.join(", ")}`;
  }

  function renderList() {
    const list = $("detections");
    list.replaceChildren(
      ...state.detections.map((d) => {
        const li = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.dataset.testid = "detection-item";
        button.dataset.id = d.id;
        button.setAttribute("aria-pressed", String(state.current !== null && state.current.id === d.id));
        const when = document.createElement("div");
        when.className = "when";
        when.textContent = timeText(d.time);
        if (d.flagged || d.kept) {
          const badge = document.createElement("span");
          badge.className = "badge";
          badge.dataset.testid = d.flagged ? "flagged-badge" : "kept-badge";
          badge.textContent = d.flagged ? "flagged" : "kept";
          when.append(badge);
        }
        const what = document.createElement("div");
        what.className = "what";
        what.textContent = boxSummary(d.boxes || []);
        button.append(when, what);
        button.addEventListener("click", () => selectDetection(d.id));
        li.append(button);
        return li;
      }),
    );
    $("list-empty").hidden = state.detections.length > 0;
  }

  async function refresh() {
    try {
      const body = await (await api(`v1/recent?limit=${RECENT_LIMIT}`, { cache: "no-store" })).json();
      state.detections = body.detections || [];
      const signature = JSON.stringify(state.detections.map((d) => [d.id, d.flagged, d.kept]));
      if (signature !== state.listSignature) {
        state.listSignature = signature;
        renderList(); // rebuilt only when something changed, so a tap never lands on a replaced button
      }
      if (state.current) {
        // updated in place: a frame still loading checks that `state.current` is the detection it was asked for
        const fresh = state.detections.find((d) => d.id === state.current.id);
        if (fresh) Object.assign(state.current, { flagged: fresh.flagged, kept: fresh.kept });
      }
      return true;
    } catch (err) {
      status(`Could not list the latest detections: ${authHint(err)}`, "error");
      return false;
    }
  }

  function schedulePoll() {
    window.clearTimeout(state.pollTimer);
    state.pollTimer = window.setTimeout(async () => {
      if (!document.hidden) await refresh();
      schedulePoll();
    }, POLL_MS);
  }

  // ---- the frame -----------------------------------------------------------------------------
  function imageSize() {
    const d = state.current;
    const w = (d && d.image && d.image.width) || (state.image && state.image.width) || 1;
    const h = (d && d.image && d.image.height) || (state.image && state.image.height) || 1;
    return { w, h };
  }

  async function decode(blob) {
    if (window.createImageBitmap) return window.createImageBitmap(blob);
    const url = URL.createObjectURL(blob);
    try {
      const img = new Image();
      img.src = url;
      await img.decode();
      return img;
    } finally {
      URL.revokeObjectURL(url);
    }
  }

  async function selectDetection(id) {
    const d = state.detections.find((x) => x.id === id);
    if (!d) return;
    state.current = d;
    if (state.image && state.image.close) state.image.close(); // an ImageBitmap holds the decoded pixels
    state.image = null;
    state.selected = -1;
    state.drawn = null;
    for (const button of $("detections").querySelectorAll("button")) {
      button.setAttribute("aria-pressed", String(button.dataset.id === id));
    }
    canvas.dataset.loaded = "false";
    renderBoxes();
    updateControls();
    $("frame-info").textContent = `Loading frame ${id}…`;
    try {
      const image = await decode(await (await api(`v1/frames/${id}`)).blob());
      if (state.current !== d) {
        if (image.close) image.close();
        return; // another detection was chosen meanwhile
      }
      state.image = image;
      const { w, h } = imageSize();
      $("frame-info").textContent =
        `${timeText(d.time)} · model ${d.model_version || "?"} · ${w}×${h} px · ${boxSummary(d.boxes || [])}`;
      layout();
      canvas.dataset.loaded = "true";
    } catch (err) {
      if (state.current !== d) return;
      layout();
      $("frame-info").textContent = `Frame ${id} is not available.`;
      status(
        err.status === 404 ? "This frame is no longer stored on the device (evicted)." : authHint(err),
        "error",
      );
    }
  }

  function layout() {
    const stage = $("stage");
    const { w, h } = imageSize();
    const scale = Math.max(0.01, Math.min(stage.clientWidth / w, stage.clientHeight / h));
    const cssW = Math.max(1, Math.floor(w * scale));
    const cssH = Math.max(1, Math.floor(h * scale));
    const dpr = window.devicePixelRatio || 1;
    canvas.style.width = `${cssW}px`;
    canvas.style.height = `${cssH}px`;
    canvas.width = Math.max(1, Math.round(cssW * dpr));
    canvas.height = Math.max(1, Math.round(cssH * dpr));
    draw();
  }

  function draw() {
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!state.image || !state.current) return;
    const { w, h } = imageSize();
    const sx = canvas.width / w;
    const sy = canvas.height / h;
    const dpr = window.devicePixelRatio || 1;
    const unit = dpr / sx; // one CSS pixel in image pixels
    ctx.setTransform(sx, 0, 0, sy, 0, 0);
    ctx.drawImage(state.image, 0, 0, w, h);
    ctx.font = `${13 * unit}px system-ui, sans-serif`;
    ctx.textBaseline = "bottom";
    (state.current.boxes || []).forEach((b, i) => {
      const selected = i === state.selected;
      const colour = selected ? "#ffd400" : PALETTE[(b.class_id || 0) % PALETTE.length];
      ctx.lineWidth = (selected ? 4 : 2) * unit;
      ctx.strokeStyle = colour;
      ctx.setLineDash([]);
      ctx.strokeRect(b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1);
      if (selected) {
        ctx.fillStyle = "rgba(255, 212, 0, 0.18)";
        ctx.fillRect(b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1);
      }
      label(`${b.class_name} ${Number(b.confidence).toFixed(2)}`, b.x1, b.y1, colour, unit);
    });
    for (const c of state.sent.get(state.current.id) || []) drawSent(c, unit);
    if (state.drawn) {
      const b = state.drawn;
      ctx.lineWidth = 3 * unit;
      ctx.strokeStyle = "#00e5ff";
      ctx.setLineDash([8 * unit, 5 * unit]);
      ctx.strokeRect(b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1);
      ctx.setLineDash([]);
      label(`new: ${$("class").value || "?"}`, b.x1, b.y1, "#00e5ff", unit);
    }
  }

  function remember(detectionId, body) {
    const list = state.sent.get(detectionId) || [];
    list.push({ kind: body.kind, box: body.box, class_name: body.class_name });
    state.sent.set(detectionId, list);
  }

  function drawSent(c, unit) {
    const b = c.box;
    ctx.setLineDash([]);
    if (c.kind === "false_positive") {
      ctx.lineWidth = 3 * unit;
      ctx.strokeStyle = "#ff1744";
      ctx.beginPath();
      ctx.moveTo(b.x1, b.y1);
      ctx.lineTo(b.x2, b.y2);
      ctx.moveTo(b.x2, b.y1);
      ctx.lineTo(b.x1, b.y2);
      ctx.stroke();
      return;
    }
    ctx.lineWidth = 2 * unit;
    ctx.strokeStyle = "#00e676";
    ctx.strokeRect(b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1);
    const text = c.kind === "missed_defect" ? `missed: ${c.class_name} ✓` : `→ ${c.class_name} ✓`;
    label(text, b.x1, b.y2 + 16 * unit, "#00e676", unit);
  }

  function label(text, x, y, colour, unit) {
    const pad = 3 * unit;
    const width = ctx.measureText(text).width + 2 * pad;
    const height = 16 * unit;
    const top = y - height < 0 ? y : y - height;
    ctx.fillStyle = "rgba(0, 0, 0, 0.65)";
    ctx.fillRect(x, top, width, height);
    ctx.fillStyle = colour;
    ctx.fillText(text, x + pad, top + height - 2 * unit);
  }

  // ---- pointer: tap selects a box, drag draws one -------------------------------------------
  function toImage(event) {
    const rect = canvas.getBoundingClientRect();
    const { w, h } = imageSize();
    const x = ((event.clientX - rect.left) / rect.width) * w;
    const y = ((event.clientY - rect.top) / rect.height) * h;
    return { x: Math.min(Math.max(x, 0), w), y: Math.min(Math.max(y, 0), h) };
  }

  function hit(point) {
    const rect = canvas.getBoundingClientRect();
    const { w } = imageSize();
    const slop = (8 / rect.width) * w; // a finger is not a mouse: a few CSS pixels around the edges count
    let best = -1;
    let bestArea = Infinity;
    (state.current.boxes || []).forEach((b, i) => {
      const inside =
        point.x >= b.x1 - slop && point.x <= b.x2 + slop && point.y >= b.y1 - slop && point.y <= b.y2 + slop;
      const area = (b.x2 - b.x1) * (b.y2 - b.y1);
      if (inside && area < bestArea) {
        best = i;
        bestArea = area;
      }
    });
    return best;
  }

  function rectFrom(a, b) {
    return {
      x1: Math.min(a.x, b.x),
      y1: Math.min(a.y, b.y),
      x2: Math.max(a.x, b.x),
      y2: Math.max(a.y, b.y),
    };
  }

  canvas.addEventListener("pointerdown", (event) => {
    if (!state.image || event.button > 0) return;
    canvas.setPointerCapture(event.pointerId);
    state.drag = {
      id: event.pointerId,
      start: toImage(event),
      clientX: event.clientX,
      clientY: event.clientY,
      moved: false,
    };
    event.preventDefault();
  });

  canvas.addEventListener("pointermove", (event) => {
    const drag = state.drag;
    if (!drag || drag.id !== event.pointerId) return;
    if (!drag.moved && Math.hypot(event.clientX - drag.clientX, event.clientY - drag.clientY) < CLICK_SLOP_PX) return;
    drag.moved = true;
    state.drawn = rectFrom(drag.start, toImage(event));
    draw();
    event.preventDefault();
  });

  function endDrag(event, cancelled) {
    const drag = state.drag;
    if (!drag || drag.id !== event.pointerId) return;
    state.drag = null;
    if (cancelled) {
      state.drawn = null;
    } else if (!drag.moved) {
      const index = hit(drag.start);
      selectBox(index);
      if (index < 0) state.drawn = null; // a tap beside every box clears the drawing too
    } else {
      const box = rectFrom(drag.start, toImage(event));
      state.drawn = box.x2 - box.x1 >= MIN_BOX_PX && box.y2 - box.y1 >= MIN_BOX_PX ? box : null;
    }
    draw();
    updateControls();
  }

  canvas.addEventListener("pointerup", (event) => endDrag(event, false));
  canvas.addEventListener("pointercancel", (event) => endDrag(event, true));

  function selectBox(index) {
    state.selected = index;
    const box = index >= 0 ? state.current.boxes[index] : null;
    if (box && state.classes.includes(box.class_name)) $("class").value = box.class_name;
    renderBoxes();
    draw();
    updateControls();
  }

  function renderBoxes() {
    const boxes = (state.current && state.current.boxes) || [];
    $("boxes").replaceChildren(
      ...boxes.map((b, i) => {
        const li = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.dataset.testid = "box-item";
        button.dataset.index = String(i);
        button.setAttribute("aria-pressed", String(i === state.selected));
        button.textContent =
          `${b.class_name} ${Number(b.confidence).toFixed(2)} ` +
          `(${Math.round(b.x1)},${Math.round(b.y1)})–(${Math.round(b.x2)},${Math.round(b.y2)})`;
        button.addEventListener("click", () => selectBox(i === state.selected ? -1 : i));
        li.append(button);
        return li;
      }),
    );
  }

  // ---- corrections ---------------------------------------------------------------------------
  function selectedBox() {
    return state.current && state.selected >= 0 ? state.current.boxes[state.selected] : null;
  }

  function plainBox(b, round) {
    const r = (v) => (round ? Math.round(v * 10) / 10 : v);
    return { x1: r(b.x1), y1: r(b.y1), x2: r(b.x2), y2: r(b.y2) };
  }

  function updateControls() {
    const box = selectedBox();
    const cls = $("class").value;
    const ready = state.current !== null && state.image !== null && !state.busy;
    $("false-positive").disabled = !(ready && box);
    $("missed-defect").disabled = !(ready && state.drawn && cls);
    $("change-class").disabled = !(ready && box && cls && (cls !== box.class_name || state.drawn));
    const parts = [];
    if (box) parts.push(`Selected: ${box.class_name} ${Number(box.confidence).toFixed(2)}`);
    if (state.drawn) {
      const d = plainBox(state.drawn, true);
      parts.push(`Drawn box (${Math.round(d.x1)},${Math.round(d.y1)})–(${Math.round(d.x2)},${Math.round(d.y2)})`);
    }
    $("selection").textContent = parts.length
      ? parts.join(" · ")
      : "Tap a box to select it, or drag on the image to draw one.";
  }

  const LABELS = {
    false_positive: "False positive",
    missed_defect: "Missed defect",
    corrected_box: "Changed class",
  };

  async function send(kind) {
    const d = state.current;
    const author = $("author").value.trim();
    if (!author) {
      status("Enter your name in the Operator field first.", "error");
      $("author").focus();
      return;
    }
    const box = selectedBox();
    const body = { kind, detection_id: d.id, author };
    if (kind === "false_positive") {
      body.box = plainBox(box, false);
      body.class_name = box.class_name;
    } else if (kind === "missed_defect") {
      body.box = plainBox(state.drawn, true);
      body.class_name = $("class").value;
    } else {
      body.original_box = plainBox(box, false);
      body.box = state.drawn ? plainBox(state.drawn, true) : plainBox(box, false);
      body.class_name = $("class").value;
    }
    const comment = $("comment").value.trim();
    if (comment) body.comment = comment;
    state.busy = true;
    updateControls();
    status(`Sending ${LABELS[kind].toLowerCase()}…`, "info");
    try {
      const response = await api("v1/feedback", {
        method: "POST",
        headers: { "Content-Type": "application/json", "Idempotency-Key": keyFor(body) },
        body: JSON.stringify(body),
      });
      const result = await response.json();
      status(
        `${LABELS[kind]} saved${result.duplicate ? " (already queued)" : ""}: ${body.class_name} ` +
          `(feedback ${result.feedback_id.slice(0, 8)}; frame kept)`,
        "ok",
      );
      $("status").dataset.feedbackId = result.feedback_id;
      remember(d.id, body);
      if (kind === "missed_defect" || kind === "corrected_box") state.drawn = null;
      $("comment").value = "";
      d.flagged = true;
      state.listSignature = ""; // show the flag at once
      await refresh();
    } catch (err) {
      status(`${LABELS[kind]} not saved: ${authHint(err)}`, "error");
    } finally {
      state.busy = false;
      draw();
      updateControls();
    }
  }

  // ---- wiring --------------------------------------------------------------------------------
  $("false-positive").addEventListener("click", () => send("false_positive"));
  $("missed-defect").addEventListener("click", () => send("missed_defect"));
  $("change-class").addEventListener("click", () => send("corrected_box"));
  $("clear").addEventListener("click", () => {
    state.drawn = null;
    selectBox(-1);
  });
  $("class").addEventListener("change", () => {
    draw();
    updateControls();
  });
  $("refresh").addEventListener("click", () => refresh());
  $("author").value = saved.get(AUTHOR_KEY);
  $("author").addEventListener("input", () => saved.set(AUTHOR_KEY, $("author").value.trim()));
  $("token").value = state.token;
  $("token-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    state.token = $("token").value.trim();
    saved.set(TOKEN_KEY, state.token);
    status("Checking the token…", "info");
    if ((await loadModel()) && (await refresh())) status("Token accepted.", "ok");
  });
  // the stage changes size with the window and with the lines around it (a status message that wraps)
  if (window.ResizeObserver) {
    new ResizeObserver(() => layout()).observe($("stage"));
  } else {
    window.addEventListener("resize", () => layout());
  }

  (async () => {
    const modelRead = await loadModel();
    const listed = await refresh();
    if (!state.token && !(modelRead && listed)) {
      status('Paste an operator token above and press "Use token".', "info");
    }
    schedulePoll();
  })();
})();

/* medsearch web page: state in the URL, one request per view, results rendered from templates.
 *
 * The page has three views over the same results grid:
 *   search  — GET  /v1/search?q=&mode=&alpha=&k=&offset=&<field>=<value>…
 *   similar — GET  /v1/images/{id}/similar?mode=image|image_text&alpha=&k=&offset=
 *   upload  — POST /v1/search/image (multipart file, optional q → hybrid)
 * Everything but the uploaded file lives in the URL, so a search can be shared, reloaded and
 * walked with back/forward (history.pushState + popstate). An open image detail is one more
 * parameter (?image=ID, from GET /v1/images/{id}) over whichever view is behind it, so its link opens
 * it directly. The API base URL (and example queries) come from config.json ("" = same origin),
 * so these files can be hosted apart from the API.
 */
"use strict";

(() => {
  const MODES = ["text", "vector", "hybrid"];
  const SIMILAR_MODES = ["image", "image_text"];
  const DEFAULTS = { mode: "hybrid", alpha: 0.5, k: 20, smode: "image" };
  const MAX_K = 100;
  const MAX_OFFSET = 1000; // the API's deepest page start
  // The API version the page speaks: every request goes to {apiBaseUrl}/v1/...
  const API_VERSION = "v1";
  // Page-URL parameters that are not metadata filters; every other parameter is a filter.
  const RESERVED = new Set(["q", "mode", "alpha", "k", "offset", "similar", "smode", "upload", "image"]);
  // An image id as the API states it: 1-128 of A-Z a-z 0-9 . _ - (not "." or "..").
  const IMAGE_ID = /^(?!\.\.?$)[A-Za-z0-9._-]{1,128}$/;
  // An uploaded image whose nearest indexed vector is this close is the same picture.
  const DUPLICATE_COSINE = 0.995;
  // While the API is unreachable its health is asked again this often.
  const HEALTH_RETRY_MS = 5000;
  // While it is reachable, a visible page asks now and then, so the light turns red unprompted.
  const HEALTH_POLL_MS = 30000;
  const EXAMPLES = [
    "axial CT of the chest with a pulmonary nodule",
    "brain MRI with a ring-enhancing lesion",
    "fracture of the distal radius",
    "abdominal ultrasound of the liver",
  ];
  const FACET_PREVIEW = 6; // values shown per filter group before "Show all"
  const FACET_MAX_RENDER = 200; // a group with more values gets a search box instead of a long list
  // Metadata shown as chips on a card (first three present); the full record is one click away.
  const META_PREFERRED = ["modality", "body_region", "plane", "finding", "location_category", "location", "laterality"];

  const $ = (id) => document.getElementById(id);
  const el = {
    form: $("search-form"),
    q: $("q"),
    alpha: $("alpha"),
    alphaValue: $("alpha-value"),
    alphaControl: $("alpha-control"),
    modeGroup: $("mode-group"),
    k: $("k"),
    file: $("file"),
    chooseFile: $("choose-file"),
    dropzone: $("dropzone"),
    facets: $("facets"),
    filterCount: $("filter-count"),
    clearFilters: $("clear-filters"),
    region: $("results-region"),
    context: $("context"),
    status: $("status"),
    message: $("message"),
    results: $("results"),
    pager: $("pager"),
    prev: $("prev"),
    next: $("next"),
    range: $("range"),
    health: $("health"),
    docsLink: $("docs-link"),
    brand: $("brand-link"),
    template: $("card-template"),
    retry: $("retry"),
    advanced: $("advanced"),
    imageRef: $("image-ref"),
    imageRefGo: $("image-ref-go"),
    imageRefError: $("image-ref-error"),
    activeFilters: $("active-filters"),
    notice: $("notice"),
    pages: $("pages"),
    detail: $("detail"),
    detailTitle: $("detail-title"),
    detailPosition: $("detail-position"),
    detailPrev: $("detail-prev"),
    detailNext: $("detail-next"),
    detailClose: $("detail-close"),
    detailFigure: $("detail-figure"),
    detailImg: $("detail-img"),
    detailZoom: $("detail-zoom"),
    detailSize: $("detail-size"),
    detailMessage: $("detail-message"),
    detailCaption: $("detail-caption"),
    detailWhy: $("detail-why"),
    detailMeta: $("detail-meta"),
    detailId: $("detail-id"),
    copyId: $("copy-id"),
    copyLink: $("copy-link"),
    copyStatus: $("copy-status"),
    download: $("download"),
    similarImage: $("similar-image"),
    similarImageText: $("similar-image-text"),
  };

  let apiBase = "";
  let facetData = null; // {field: {value: count}} from /facets
  let state = blankState();
  let upload = null; // {file, previewUrl} — a File cannot travel in a URL
  let requestSeq = 0;
  let inflight = null;
  let examples = EXAMPLES;
  let lastRunKey = null; // the results view last run: opening or closing a detail does not rerun it
  let lastHits = new Map(); // image id → hit of the results shown (the detail shows its scores)
  let lastPage = null;
  let detailSeq = 0;
  let detailReturnId = null; // the card that opened the detail gets focus back when it closes
  let apiDown = false;
  let healthTimer = null;
  let pendingStep = 0; // the detail stepped past the page's end: show the first (1) or last (-1) hit of the next page
  const facetUi = {}; // field → {expanded, filter}

  // --- state ⇄ URL --------------------------------------------------------------------------

  function blankState() {
    return {
      q: "",
      mode: DEFAULTS.mode,
      alpha: DEFAULTS.alpha,
      k: DEFAULTS.k,
      offset: 0,
      filters: {},
      similar: null,
      smode: DEFAULTS.smode,
      upload: null,
      image: null,
    };
  }

  function clampNumber(raw, lo, hi, fallback, integer) {
    const n = Number(raw);
    if (raw === null || raw === "" || !Number.isFinite(n)) return fallback;
    const v = integer ? Math.trunc(n) : n;
    return Math.min(hi, Math.max(lo, v));
  }

  function stateFromUrl(search) {
    const p = new URLSearchParams(search);
    const s = blankState();
    s.q = p.get("q") || "";
    s.mode = MODES.includes(p.get("mode")) ? p.get("mode") : DEFAULTS.mode;
    s.alpha = clampNumber(p.get("alpha"), 0, 1, DEFAULTS.alpha, false);
    s.k = clampNumber(p.get("k"), 1, MAX_K, DEFAULTS.k, true);
    s.offset = clampNumber(p.get("offset"), 0, Number.MAX_SAFE_INTEGER, 0, true);
    s.similar = p.get("similar") || null;
    s.smode = SIMILAR_MODES.includes(p.get("smode")) ? p.get("smode") : DEFAULTS.smode;
    s.upload = p.get("upload") || null;
    s.image = IMAGE_ID.test(p.get("image") || "") ? p.get("image") : null;
    for (const [key, value] of p) {
      if (RESERVED.has(key) || value === "") continue;
      (s.filters[key] ||= []);
      if (!s.filters[key].includes(value)) s.filters[key].push(value);
    }
    return s;
  }

  function urlFromState(s) {
    const p = new URLSearchParams();
    if (s.q) p.set("q", s.q);
    if (s.mode !== DEFAULTS.mode || s.q) p.set("mode", s.mode);
    if (usesAlpha(s)) p.set("alpha", formatAlpha(s.alpha));
    if (s.k !== DEFAULTS.k) p.set("k", String(s.k));
    if (s.offset) p.set("offset", String(s.offset));
    if (s.similar) {
      p.set("similar", s.similar);
      p.set("smode", s.smode);
    }
    if (s.upload) p.set("upload", s.upload);
    for (const [field, values] of Object.entries(s.filters)) {
      for (const v of values) p.append(field, v);
    }
    if (s.image) p.set("image", s.image);
    const qs = p.toString();
    return location.pathname + (qs ? `?${qs}` : "");
  }

  function view(s) {
    if (s.similar) return "similar";
    if (s.upload) return "upload";
    return s.q ? "search" : "intro";
  }

  function usesAlpha(s) {
    switch (view(s)) {
      case "search":
        return s.mode === "hybrid";
      case "similar":
        return s.smode === "image_text";
      case "upload":
        return Boolean(s.q);
      default:
        return s.mode === "hybrid";
    }
  }

  function formatAlpha(a) {
    return (Math.round(a * 100) / 100).toFixed(2);
  }

  /** Move to a new state: record it in the history (push or replace) and run it. */
  function navigate(next, { replace = false, force = false } = {}) {
    state = next;
    if (force) lastRunKey = null;
    const url = urlFromState(state);
    const hist = { upload: state.upload && upload ? upload.file : null };
    try {
      if (replace) history.replaceState(hist, "", url);
      else history.pushState(hist, "", url);
    } catch {
      // A state the browser cannot store (e.g. a huge File): keep the URL, drop the file.
      if (replace) history.replaceState(null, "", url);
      else history.pushState(null, "", url);
    }
    syncControls();
    update();
  }

  /** Run the results view if it changed, then show or hide the image detail. */
  function update() {
    const key = urlFromState({ ...state, image: null }) + (upload ? `#${upload.previewUrl}` : "");
    if (key !== lastRunKey) {
      lastRunKey = key;
      run();
    }
    syncDetail();
  }

  function withChanges(changes) {
    return { ...state, filters: { ...state.filters }, ...changes };
  }

  // --- API ----------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  function isAbsolute(url) {
    return /^[a-z][a-z0-9+.-]*:/i.test(url) || url.startsWith("//");
  }

  /** Join the API base and a path; absolute http(s) URLs (e.g. presigned S3 links) pass
   * through, any other scheme (javascript:, data:...) in an API answer is refused (null). */
  function apiUrl(path) {
    if (!path) return null;
    if (isAbsolute(path)) return /^https?:\/\//i.test(path) ? path : null;
    const base = apiBase.replace(/\/+$/, "");
    return `${base}/${path.replace(/^\/+/, "")}`;
  }

  /** The link of an image's file: the API's image_url, else the API's own file route. */
  function fileUrl(id, imageUrl) {
    return (imageUrl && apiUrl(imageUrl)) || apiUrl(`${API_VERSION}/images/${encodeURIComponent(id)}/file`);
  }

  function appendFilters(params, filters) {
    for (const [field, values] of Object.entries(filters)) {
      for (const v of values) params.append(field, v);
    }
  }

  /** The message of the API's error body, {"error": {"code", "message", "field"}}; older
   * servers' {"detail": ...} (a string, or a list of validation errors) is read too. */
  function describeDetail(body, status) {
    const error = body && typeof body === "object" ? body.error : null;
    if (error && typeof error === "object" && typeof error.message === "string" && error.message) {
      return error.message;
    }
    const detail = body && typeof body === "object" ? body.detail : null;
    if (typeof detail === "string" && detail) return detail;
    if (Array.isArray(detail) && detail.length) {
      return detail
        .map((d) => {
          if (typeof d === "string") return d;
          const loc = Array.isArray(d.loc)
            ? d.loc.filter((part) => !["query", "body", "path"].includes(part)).join(".")
            : "";
          return loc ? `${loc}: ${d.msg}` : String(d.msg ?? JSON.stringify(d));
        })
        .join("; ");
    }
    if (detail && typeof detail === "object") return detail.message || JSON.stringify(detail);
    return `The server answered ${status} without an explanation.`;
  }

  async function api(path, { params, method = "GET", body, signal } = {}) {
    const qs = params ? `?${params.toString()}` : "";
    let response;
    try {
      response = await fetch(apiUrl(`${API_VERSION}/${path}`) + qs, {
        method,
        body,
        signal,
        headers: { Accept: "application/json" },
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      setApiDown(true, err);
      throw new ApiError(
        `Cannot reach the search API${apiBase ? ` at ${apiBase}` : ""}. Is the server running?`,
        0,
      );
    }
    if (apiDown) setApiDown(false);
    let data = null;
    const text = await response.text();
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!response.ok) throw new ApiError(describeDetail(data, response.status), response.status);
    if (data === null) throw new ApiError("The server sent a response that is not JSON.", response.status);
    return data;
  }

  function searchRequest(s, signal) {
    const params = new URLSearchParams({ q: s.q, mode: s.mode, k: s.k, offset: s.offset });
    if (s.mode === "hybrid") params.set("alpha", formatAlpha(s.alpha));
    appendFilters(params, s.filters);
    return api("search", { params, signal });
  }

  function similarRequest(s, signal) {
    const params = new URLSearchParams({ mode: s.smode, k: s.k, offset: s.offset });
    if (s.smode === "image_text") params.set("alpha", formatAlpha(s.alpha));
    appendFilters(params, s.filters);
    return api(`images/${encodeURIComponent(s.similar)}/similar`, { params, signal });
  }

  function uploadRequest(s, signal) {
    const body = new FormData();
    body.append("file", upload.file, upload.file.name);
    const params = new URLSearchParams({ k: s.k, offset: s.offset });
    if (s.q) {
      params.set("q", s.q);
      params.set("alpha", formatAlpha(s.alpha));
    }
    appendFilters(params, s.filters);
    return api("search/image", { method: "POST", body, params, signal });
  }

  // --- running a view -----------------------------------------------------------------------

  async function run() {
    const s = state;
    const seq = ++requestSeq;
    if (inflight) inflight.abort();
    inflight = new AbortController();
    const { signal } = inflight;
    renderContext(s);
    const v = view(s);
    if (v === "intro") {
      showIntro();
      return;
    }
    if (v === "upload" && !upload) {
      showMessage(
        "info",
        "Choose the image again",
        `This address is an image search for “${s.upload}”. Images are not stored in links — drop or choose the file again to repeat it.`,
      );
      return;
    }
    showLoading(s);
    try {
      let page;
      if (v === "similar") page = await similarRequest(s, signal);
      else if (v === "upload") page = await uploadRequest(s, signal);
      else page = await searchRequest(s, signal);
      if (seq !== requestSeq) return;
      renderResults(s, page);
    } catch (err) {
      if (err.name === "AbortError" || seq !== requestSeq) return;
      showError(err.message, err.status);
    }
  }

  // --- rendering ----------------------------------------------------------------------------

  /** Record what the results area shows (intro, loading, done, empty, error, info) for scripts and tests. */
  function setPhase(phase) {
    el.region.dataset.state = phase;
  }

  function clearResults() {
    el.results.replaceChildren();
    el.results.dataset.ids = "";
    el.results.classList.remove("is-loading");
    el.region.removeAttribute("aria-busy");
    el.pager.hidden = true;
    el.notice.hidden = true;
  }

  function showMessage(kind, title, text, extra) {
    clearResults();
    pendingStep = 0;
    el.status.textContent = "";
    el.message.hidden = false;
    el.message.className = `message message-${kind}`;
    el.message.setAttribute("role", kind === "error" ? "alert" : "status");
    const h = document.createElement("h2");
    h.textContent = title;
    const p = document.createElement("p");
    p.textContent = text;
    el.message.replaceChildren(h, p);
    if (extra) el.message.append(extra);
    setPhase(kind);
  }

  function showError(text, status) {
    const title =
      status === 404
        ? "Not found"
        : status === 413 || status === 415 || status === 422 || status === 400
          ? "The request needs a change"
          : "Search failed";
    let again = null;
    if (status === 0 || status === 503) {
      again = document.createElement("button");
      again.type = "button";
      again.className = "btn btn-ghost btn-small btn-retry";
      again.textContent = "Try again";
      again.addEventListener("click", retry);
    }
    showMessage("error", title, text, again);
    el.message.dataset.status = status ? String(status) : "";
  }

  function showIntro() {
    const list = document.createElement("ul");
    list.className = "intro-modes";
    for (const [name, text] of [
      ["Text", "BM25 over captions, like OpenSearch's match query: stemmed English, any term may match."],
      ["Vector", "The query's CLIP embedding against image embeddings — finds images that have no caption."],
      ["Hybrid", "Both lists min-max normalised and mixed: (1 − α)·text + α·vector."],
      ["Image", "Drop an image to find similar ones; add text to make it hybrid. Open any result for its full record and similar images; an image id or link finds images like it."],
    ]) {
      const li = document.createElement("li");
      const b = document.createElement("strong");
      b.textContent = name;
      li.append(b, ` — ${text}`);
      list.append(li);
    }
    const box = document.createElement("div");
    box.className = "examples";
    const h = document.createElement("h3");
    h.id = "examples-title";
    h.textContent = "Try an example";
    const ul = document.createElement("ul");
    ul.setAttribute("aria-labelledby", "examples-title");
    for (const text of examples) {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "example";
      b.textContent = text;
      b.addEventListener("click", () => {
        el.q.value = text;
        navigate(withChanges({ q: text, offset: 0, similar: null, upload: null, image: null }), { force: true });
      });
      li.append(b);
      ul.append(li);
    }
    box.append(h, ul);
    showMessage("intro", "Search the image collection", "Type a description and press Enter.", list);
    el.message.append(box);
  }

  function showLoading(s) {
    el.message.hidden = true;
    el.region.setAttribute("aria-busy", "true");
    el.status.textContent = "Searching…";
    setPhase("loading");
    el.pager.hidden = true;
    if (el.results.children.length && !el.results.querySelector(".skeleton")) {
      el.results.classList.add("is-loading");
      return;
    }
    const n = Math.min(s.k, 8);
    const skeletons = [];
    for (let i = 0; i < n; i += 1) {
      const li = document.createElement("li");
      li.className = "card skeleton";
      li.setAttribute("aria-hidden", "true");
      li.innerHTML = '<div class="thumb"></div><div class="card-body"><p class="bar"></p><p class="bar short"></p></div>';
      skeletons.push(li);
    }
    el.results.replaceChildren(...skeletons);
  }

  function fmt(n, digits) {
    return typeof n === "number" && Number.isFinite(n) ? n.toFixed(digits) : null;
  }

  function modeLabel(s, page) {
    const mode = page.mode || (view(s) === "similar" ? s.smode : s.mode);
    const names = {
      text: "text (BM25)",
      vector: "vector",
      hybrid: "hybrid",
      image: "similar image",
      image_text: "image + text",
      upload: "uploaded image",
    };
    let label = names[mode] || mode;
    const alpha = typeof page.alpha === "number" ? page.alpha : null;
    if (alpha !== null && (mode === "hybrid" || mode === "image_text" || (mode === "upload" && s.q))) {
      label += ` · α ${formatAlpha(alpha)}`;
    }
    return label;
  }

  function renderResults(s, page) {
    clearResults();
    const hits = Array.isArray(page.results) ? page.results : [];
    const total = typeof page.total === "number" ? page.total : hits.length;
    // A total counted up to a bound is a lower bound: "10,000+", never a false exact number.
    const totalText = total.toLocaleString() + (page.total_relation === "gte" ? "+" : "");
    const offset = typeof page.offset === "number" ? page.offset : s.offset;
    const took = fmt(page.took_ms, page.took_ms < 10 ? 1 : 0);
    lastPage = page;
    lastHits = new Map(hits.map((hit) => [String(hit.image_id), hit]));
    if (!hits.length) {
      const tips = document.createElement("ul");
      tips.className = "tips";
      const items = [];
      if (offset > 0 && total > 0) items.push("This page is past the last result — go back to the first page.");
      if (Object.keys(s.filters).length) items.push("Remove some filters.");
      if (view(s) === "search" && s.mode === "text")
        items.push("Try vector or hybrid mode: they also find images without captions.");
      items.push("Use fewer or more general terms.");
      for (const t of items) {
        const li = document.createElement("li");
        li.textContent = t;
        tips.append(li);
      }
      const what = view(s) === "search" ? `for “${s.q}”` : "for this image";
      el.notice.hidden = true;
      showMessage("empty", "No images found", `Nothing matched ${what}.`, tips);
      return;
    }
    el.message.hidden = true;
    const from = offset + 1;
    const to = offset + hits.length;
    const judged = typeof page.vector_floor === "number";
    el.status.textContent =
      (judged && page.best_match === "weak" ? `${hits.length} nearest, no good match` : `${from}–${to} of ${totalText}${judged ? " matches" : ""}`) +
      (page.total_relation === "gte" ? " (at least: counting stopped there)" : "") +
      ` · ${modeLabel(s, page)}` + (took ? ` · ${took} ms` : "");
    const bestText = Math.max(0, ...hits.map((h) => (typeof h.bm25_score === "number" ? h.bm25_score : 0)));
    const cards = hits.map((hit, i) => renderCard(hit, offset + i + 1, page, bestText));
    el.results.replaceChildren(...cards);
    el.results.dataset.ids = cards.map((card) => card.dataset.imageId).join(" ");
    el.range.textContent = judged && page.best_match === "weak" ? "no good match" : `${from}–${to} of ${totalText}`;
    el.prev.disabled = offset === 0;
    el.next.disabled = to >= total || offset + s.k > MAX_OFFSET;
    renderPages(s, page, total);
    el.pager.hidden = false;
    renderNotice(s, page, hits);
    setPhase("done");
    if (pendingStep && state.image) {
      const ids = resultIds();
      const target = pendingStep > 0 ? ids[0] : ids[ids.length - 1];
      pendingStep = 0;
      if (target) {
        detailReturnId = target;
        navigate(withChanges({ image: target }), { replace: true });
        return;
      }
    }
    syncDetailPosition();
  }

  /** Numbered pages around the current one; the API pages by offset (at most MAX_OFFSET). */
  function renderPages(s, page, total) {
    const k = s.k;
    const offset = typeof page.offset === "number" ? page.offset : s.offset;
    const current = Math.floor(offset / k) + 1;
    const reachable = Math.floor(MAX_OFFSET / k) + 1;
    const known = Math.max(1, Math.ceil(total / k));
    const last = Math.min(known, reachable);
    const open = page.total_relation === "gte" && known < reachable; // more pages than counted
    const numbers = new Set([1, last, current - 2, current - 1, current, current + 1, current + 2]);
    const shown = [...numbers].filter((n) => n >= 1 && n <= last).sort((a, b) => a - b);
    const items = [];
    let prev = 0;
    for (const n of shown) {
      if (n - prev > 1) items.push(gap());
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "btn btn-ghost btn-small page-number";
      b.textContent = String(n);
      b.setAttribute("aria-label", `Page ${n}`);
      if (n === current) b.setAttribute("aria-current", "page");
      b.addEventListener("click", () => goToOffset((n - 1) * k));
      li.append(b);
      items.push(li);
      prev = n;
    }
    if (open) items.push(gap());
    el.pages.replaceChildren(...items);
    el.pages.hidden = last === 1 && !open; // one page needs no numbers
    function gap() {
      const li = document.createElement("li");
      li.className = "page-gap";
      li.setAttribute("aria-hidden", "true");
      li.textContent = "…";
      return li;
    }
  }

  /** Say what the scores tell about the page as a whole: weak matches, an image already indexed. */
  function renderNotice(s, page, hits) {
    const parts = [];
    const mode = page.mode;
    const textAsked = typeof page.query === "string" && page.query !== "" && mode !== "vector";
    if (page.best_match === "weak") {
      // The index's calibrated floor says so: no caption match and no cosine close enough.
      parts.push({
        kind: "weak",
        text: "Nothing matches well: no caption contains your words and no image is close enough to them by vector. These are only the nearest images.",
      });
    } else if (textAsked && hits.length && hits.every((h) => typeof h.bm25_score !== "number")) {
      parts.push({
        kind: "weak",
        text:
          mode === "image_text"
            ? "No other caption shares words with this image's caption: these results come from the image vector alone."
            : "No caption contains the words of your query: these results are the nearest images by vector alone and may not match well.",
      });
    } else if (mode === "vector" && (page.offset || 0) === 0 && typeof page.vector_floor !== "number") {
      parts.push({
        kind: "info",
        text: "Vector search always returns the nearest images, close or not: there is no cut-off for a poor match.",
      });
    }
    const top = hits[0];
    if (mode === "upload" && (page.offset || 0) === 0 && top && typeof top.vector_score === "number" && top.vector_score >= DUPLICATE_COSINE) {
      parts.push({ kind: "duplicate", id: String(top.image_id), cosine: top.vector_score });
    }
    el.notice.replaceChildren();
    el.notice.hidden = !parts.length;
    el.notice.dataset.kinds = parts.map((p) => p.kind).join(" ");
    for (const part of parts) {
      const p = document.createElement("p");
      p.className = `notice-${part.kind}`;
      if (part.kind === "duplicate") {
        p.append(`This image is already in the collection (cosine ${part.cosine.toFixed(3)}): `);
        const open = document.createElement("a");
        open.href = urlFromState(withChanges({ image: part.id }));
        open.textContent = part.id;
        open.className = "notice-open";
        open.addEventListener("click", (e) => {
          if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
          e.preventDefault();
          openDetail(part.id);
        });
        p.append(open, ".");
      } else {
        p.textContent = part.text;
      }
      el.notice.append(p);
    }
  }

  function metadataSummary(meta) {
    if (!meta || typeof meta !== "object") return [];
    const keys = META_PREFERRED.filter((k) => meta[k] !== undefined && meta[k] !== null && meta[k] !== "");
    const chosen = keys.length ? keys.slice(0, 3) : Object.keys(meta).slice(0, 3);
    return chosen.map((k) => [k, String(meta[k])]);
  }

  // Fill a card's or a banner's metadata row: a chip per summarised field, then the image id.
  function appendMetaChips(row, metadata, id) {
    for (const [k, v] of metadataSummary(metadata)) {
      const chip = document.createElement("span");
      chip.className = "chip";
      chip.title = `${humanize(k)}: ${v}`;
      chip.textContent = v;
      row.append(chip);
    }
    const idChip = document.createElement("span");
    idChip.className = "image-id";
    idChip.textContent = id;
    row.append(idChip);
  }

  function renderCard(hit, rank, page, bestText) {
    const node = el.template.content.firstElementChild.cloneNode(true);
    const id = String(hit.image_id);
    const captionless = hit.caption === null || hit.caption === undefined || hit.caption === "";
    node.dataset.imageId = id;
    if (captionless) node.classList.add("captionless");

    const link = node.querySelector(".card-link");
    link.href = urlFromState(withChanges({ image: id }));
    link.setAttribute(
      "aria-label",
      `Result ${rank}: ${captionless ? "captionless image" : hit.caption} (${id}). Open details.`,
    );
    link.addEventListener("click", (e) => {
      if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
      e.preventDefault();
      openDetail(id);
    });

    const img = node.querySelector("img");
    img.src = fileUrl(id, hit.image_url);
    img.alt = captionless ? `Captionless image ${id}` : hit.caption;
    img.addEventListener("error", () => {
      img.replaceWith(Object.assign(document.createElement("span"), { className: "thumb-missing", textContent: "Image unavailable" }));
    }, { once: true });

    const caption = node.querySelector(".caption");
    if (captionless) {
      caption.innerHTML = '<span class="badge badge-warn">No caption</span> <span class="muted">found by image vector</span>';
    } else {
      caption.replaceChildren(...highlighted(hit.caption, hit.highlights));
      caption.title = hit.caption;
    }
    if (hit.low_confidence === true) {
      node.classList.add("low-confidence");
      const weak = document.createElement("span");
      weak.className = "badge badge-weak";
      weak.textContent = "Weak match";
      weak.title = "Not a caption match, and its cosine is below this index's calibrated floor";
      caption.prepend(weak, " ");
    }
    appendMetaChips(node.querySelector(".meta"), hit.metadata, id);

    const score = node.querySelector(".score");
    score.textContent = `#${rank} · score ${fmt(hit.score, 3) ?? "—"}`;
    const parts = [];
    const bm25 = hit.bm25_score;
    const t = fmt(bm25, 2);
    const v = fmt(hit.vector_score, 3);
    if (t !== null) parts.push(`BM25 ${t}`);
    if (v !== null) parts.push(`cos ${v}`);
    const comp = node.querySelector(".components");
    // A fused hit's meters carry these numbers; other modes show them as text.
    comp.textContent = isFused(page) ? "" : parts.join(" · ");
    node.querySelector(".card-foot").title =
      `Score ${fmt(hit.score, 4) ?? "—"}; BM25 (raw) ${fmt(bm25, 4) ?? "not matched"}; ` +
      `cosine ${fmt(hit.vector_score, 4) ?? "not in vector list"}`;
    const why = node.querySelector(".why");
    if (isFused(page)) why.replaceWith(whyBars(hit, page.alpha, bestText));
    else why.remove();
    return node;
  }

  /** A caption as text nodes with its highlighted words (the API's [start, end) spans, in code
   * points) in <mark> elements: never HTML from the caption, so no caption can inject markup. */
  function highlighted(text, spans) {
    const chars = Array.from(text);
    const out = [];
    let at = 0;
    const valid = Array.isArray(spans) ? spans.filter((sp) => Array.isArray(sp) && sp.length === 2) : [];
    for (const [start, end] of valid) {
      if (!Number.isInteger(start) || !Number.isInteger(end) || start < at || end <= start || end > chars.length) continue;
      if (start > at) out.push(document.createTextNode(chars.slice(at, start).join("")));
      const mark = document.createElement("mark");
      mark.textContent = chars.slice(start, end).join("");
      out.push(mark);
      at = end;
    }
    if (at < chars.length) out.push(document.createTextNode(chars.slice(at).join("")));
    return out;
  }

  /** A fused score's two sources: each hit carries raw BM25 and cosine plus the weight alpha. */
  function isFused(page) {
    return page && typeof page.alpha === "number";
  }

  /** Two small meters, text and vector, for one fused hit. Where the API gives the weighted
   * min-max parts fusion summed (text_part, vector_part), the meters draw those, the vector fill
   * after the text fill, so together they are the fused score; where it does not (OpenSearch's
   * pipeline fusion), each meter shows its own raw signal: BM25 as a share of the best BM25 on
   * this page, the cosine on 0-1. Each is labelled with its weight. */
  function whyBars(hit, alpha, bestText) {
    const wrap = document.createElement("div");
    wrap.className = "why";
    wrap.setAttribute("role", "group");
    wrap.setAttribute("aria-label", "Why it matched");
    const bm25 = typeof hit.bm25_score === "number" ? hit.bm25_score : null;
    const cos = typeof hit.vector_score === "number" ? hit.vector_score : null;
    if (typeof hit.text_part === "number" && typeof hit.vector_part === "number") {
      // The parts fusion summed: the two fills laid end to end are the fused score, exactly.
      wrap.dataset.parts = "true";
      const tp = hit.text_part;
      const vp = hit.vector_part;
      wrap.append(
        meter(
          "text",
          "Text",
          bm25 === null ? null : tp,
          bm25 === null ? "not among the best text matches fused: adds 0" : `adds ${tp.toFixed(3)} of ${(tp + vp).toFixed(3)} (BM25 ${bm25.toFixed(2)})`,
          bm25 === null ? "+0" : `+${tp.toFixed(3)}`,
          1 - alpha,
        ),
        meter(
          "vector",
          "Vector",
          cos === null ? null : vp,
          cos === null ? "not among the nearest vectors: adds 0" : `adds ${vp.toFixed(3)} of ${(tp + vp).toFixed(3)} (cosine ${cos.toFixed(3)})`,
          cos === null ? "+0" : `+${vp.toFixed(3)}`,
          alpha,
          tp,
        ),
      );
      return wrap;
    }
    wrap.append(
      meter(
        "text",
        "Text",
        bm25 === null ? null : bestText > 0 ? bm25 / bestText : 1,
        bm25 === null ? "no query term in the caption" : `BM25 ${bm25.toFixed(2)} (${Math.round((bm25 / (bestText || bm25 || 1)) * 100)}% of this page's best)`,
        bm25 === null ? "none" : `BM25 ${bm25.toFixed(2)}`,
        1 - alpha,
      ),
      meter(
        "vector",
        "Vector",
        cos === null ? null : Math.max(0, Math.min(1, cos)),
        cos === null ? "not among the nearest vectors" : `cosine ${cos.toFixed(3)}`,
        cos === null ? "none" : `cos ${cos.toFixed(3)}`,
        alpha,
      ),
    );
    return wrap;
  }

  /** One meter row; ``offset`` (a fraction) starts the fill there, so a vector part drawn after
   * the text part shows both as one fused score. */
  function meter(kind, name, fraction, text, short, weight, offset = 0) {
    const row = document.createElement("div");
    row.className = `why-row why-${kind}`;
    row.dataset.matched = fraction === null ? "false" : "true";
    const label = document.createElement("span");
    label.className = "why-label";
    label.textContent = `${name} ×${weight.toFixed(2)}`;
    const bar = document.createElement("span");
    bar.className = "why-bar";
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-label", `${name} match, weight ${weight.toFixed(2)}: ${text}`);
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    const pct = fraction === null ? 0 : Math.round(fraction * 100);
    bar.setAttribute("aria-valuenow", String(pct));
    bar.title = text;
    const fill = document.createElement("span");
    fill.className = "why-fill";
    // Unrounded, so a text fill and a vector fill after it end exactly at the fused score.
    fill.style.width = `${fraction === null ? 0 : fraction * 100}%`;
    if (offset > 0 && fraction !== null) fill.style.marginLeft = `${offset * 100}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "why-value";
    value.textContent = short;
    row.append(label, bar, value);
    return row;
  }

  /** The banner above the results in the similar and upload views. */
  function renderContext(s) {
    const v = view(s);
    if (v !== "similar" && v !== "upload") {
      el.context.hidden = true;
      el.context.replaceChildren();
      el.context.dataset.for = "";
      return;
    }
    const key = v === "similar" ? `similar:${s.similar}` : `upload:${upload ? upload.previewUrl : s.upload}`;
    if (el.context.dataset.for !== key) {
      el.context.dataset.for = key;
      el.context.replaceChildren(v === "similar" ? similarBanner(s.similar) : uploadBanner(s.upload));
    }
    el.context.hidden = false;
    const radios = el.context.querySelectorAll('input[name="smode"]');
    for (const r of radios) r.checked = r.value === s.smode;
    const note = el.context.querySelector(".upload-note");
    if (note) {
      note.textContent = s.q
        ? `Hybrid with the text “${s.q}” (vector weight α = ${formatAlpha(s.alpha)}).`
        : "Image only. Type text in the search box and press Enter to make it hybrid.";
    }
  }

  function banner(title, thumbSrc, thumbAlt) {
    const wrap = document.createElement("div");
    wrap.className = "banner";
    const fig = document.createElement("div");
    fig.className = "banner-thumb";
    if (thumbSrc) {
      const img = document.createElement("img");
      img.src = thumbSrc;
      img.alt = thumbAlt;
      fig.append(img);
    } else {
      fig.textContent = thumbAlt;
    }
    const body = document.createElement("div");
    body.className = "banner-body";
    const h = document.createElement("h2");
    h.textContent = title;
    body.append(h);
    const close = document.createElement("button");
    close.type = "button";
    close.className = "btn btn-ghost btn-small banner-close";
    wrap.append(fig, body, close);
    return { wrap, body, close, img: fig.querySelector("img") };
  }

  function similarBanner(id) {
    const { wrap, body, close, img } = banner("Images similar to", apiUrl(`${API_VERSION}/images/${encodeURIComponent(id)}/file`), `Query image ${id}`);
    const caption = document.createElement("p");
    caption.className = "banner-caption";
    caption.textContent = id;
    const meta = document.createElement("p");
    meta.className = "meta";
    const switcher = document.createElement("fieldset");
    switcher.className = "segmented segmented-small";
    switcher.innerHTML =
      '<legend>Similar by</legend>' +
      '<input type="radio" name="smode" id="smode-image" value="image"><label for="smode-image" title="Nearest image vectors">Image</label>' +
      '<input type="radio" name="smode" id="smode-image_text" value="image_text"><label for="smode-image_text" title="Image vector plus its caption as a BM25 query, mixed by α">Image + text</label>';
    switcher.addEventListener("change", (e) => {
      if (e.target.name === "smode") navigate(withChanges({ smode: e.target.value, offset: 0 }));
    });
    const details = document.createElement("button");
    details.type = "button";
    details.className = "btn btn-link btn-small banner-details";
    details.textContent = "Image details";
    details.addEventListener("click", () => openDetail(id));
    body.append(caption, meta, switcher, details);
    close.textContent = "← Back to search";
    close.addEventListener("click", () => navigate(withChanges({ similar: null, offset: 0 })));
    // The record gives the caption and metadata; a failure here leaves the id as the caption.
    api(`images/${encodeURIComponent(id)}`)
      .then((rec) => {
        if (el.context.dataset.for !== `similar:${id}`) return;
        caption.textContent = rec.caption || "No caption";
        caption.classList.toggle("muted", !rec.caption);
        if (img) img.src = fileUrl(id, rec.image_url);
        if (img) img.alt = rec.caption ? `Query image: ${rec.caption}` : `Query image ${id} (no caption)`;
        appendMetaChips(meta, rec.metadata, id);
      })
      .catch(() => {});
    return wrap;
  }

  function uploadBanner(name) {
    const isPreviewable = upload && /^image\/(png|jpeg)$/.test(upload.file.type);
    const { wrap, body, close } = banner(
      "Images similar to your image",
      isPreviewable ? upload.previewUrl : null,
      isPreviewable ? `Uploaded image ${name}` : (upload ? "DICOM" : "—"),
    );
    const caption = document.createElement("p");
    caption.className = "banner-caption";
    caption.textContent = upload ? `${upload.file.name} · ${formatBytes(upload.file.size)}` : name;
    const note = document.createElement("p");
    note.className = "upload-note muted small";
    body.append(caption, note);
    close.textContent = "Remove image";
    close.addEventListener("click", () => {
      clearUpload();
      navigate(withChanges({ upload: null, offset: 0 }));
    });
    return wrap;
  }

  function formatBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
    return `${(n / 1024 / 1024).toFixed(1)} MB`;
  }

  function humanize(field) {
    const s = String(field).replace(/[_-]+/g, " ").trim();
    return s.charAt(0).toUpperCase() + s.slice(1);
  }

  // --- image detail -------------------------------------------------------------------------

  function openDetail(id) {
    detailReturnId = id;
    navigate(withChanges({ image: id }));
  }

  function closeDetail() {
    navigate(withChanges({ image: null }));
  }

  /** Show the detail of state.image (fetching its record), or close the dialog. */
  function syncDetail() {
    const id = state.image;
    if (!id) {
      if (el.detail.open) el.detail.close();
      el.detail.dataset.state = "closed";
      el.detail.dataset.imageId = "";
      return;
    }
    if (!el.detail.open) {
      el.detail.showModal();
      el.detailClose.focus();
    }
    if (el.detail.dataset.imageId === id) return;
    el.detail.dataset.imageId = id;
    renderDetail(id);
  }

  function renderDetail(id) {
    const seq = ++detailSeq;
    el.detail.dataset.state = "loading";
    el.detailTitle.textContent = `Image ${id}`;
    el.detailId.textContent = id;
    el.detailMessage.hidden = true;
    el.detailCaption.textContent = "Loading…";
    el.detailCaption.classList.add("muted");
    el.detailMeta.replaceChildren();
    el.copyStatus.textContent = "";
    setZoom(false);
    el.detailSize.textContent = "";
    const hit = lastHits.get(id);
    el.detailImg.src = fileUrl(id, hit && hit.image_url);
    el.detailImg.alt = `Image ${id}`;
    setDownload(el.detailImg.src, id);
    renderDetailWhy(hit);
    syncDetailPosition();
    api(`images/${encodeURIComponent(id)}`)
      .then((rec) => {
        if (seq !== detailSeq) return;
        const caption = typeof rec.caption === "string" && rec.caption ? rec.caption : null;
        el.detailCaption.textContent = caption || "No caption";
        el.detailCaption.classList.toggle("muted", !caption);
        el.detailImg.alt = caption ? caption : `Captionless image ${id}`;
        const src = fileUrl(id, rec.image_url);
        if (el.detailImg.src !== new URL(src, location.href).href) el.detailImg.src = src;
        setDownload(src, id);
        renderDetailMeta(rec);
        el.detail.dataset.state = "done";
      })
      .catch((err) => {
        if (seq !== detailSeq) return;
        el.detailCaption.textContent = "";
        el.detailMessage.hidden = false;
        el.detailMessage.className = "message message-error";
        el.detailMessage.setAttribute("role", "alert");
        const h = document.createElement("h3");
        h.textContent = err.status === 404 ? "Image not found" : "The image record did not load";
        const p = document.createElement("p");
        p.textContent = err.message;
        el.detailMessage.replaceChildren(h, p);
        el.detail.dataset.state = "error";
      });
  }

  function renderDetailMeta(rec) {
    const rows = [];
    const meta = rec.metadata && typeof rec.metadata === "object" ? rec.metadata : {};
    for (const [key, value] of Object.entries(meta)) {
      const dt = document.createElement("dt");
      dt.textContent = humanize(key);
      dt.title = key;
      const dd = document.createElement("dd");
      dd.dataset.field = key;
      dd.textContent = value === null || value === undefined ? "—" : typeof value === "object" ? JSON.stringify(value) : String(value);
      rows.push(dt, dd);
    }
    const dt = document.createElement("dt");
    dt.textContent = "Vector";
    const dd = document.createElement("dd");
    dd.dataset.field = "has_vector";
    dd.textContent = rec.has_vector ? "indexed" : "none (found by caption only)";
    rows.push(dt, dd);
    el.detailMeta.replaceChildren(...rows);
    el.similarImage.disabled = !rec.has_vector;
    el.similarImageText.disabled = !rec.has_vector;
  }

  function renderDetailWhy(hit) {
    el.detailWhy.replaceChildren();
    el.detailWhy.hidden = true;
    if (!hit || !lastPage) return;
    const h = document.createElement("h3");
    h.textContent = `Score ${fmt(hit.score, 3) ?? "—"} in these results`;
    el.detailWhy.append(h);
    if (isFused(lastPage)) {
      const best = Math.max(0, ...[...lastHits.values()].map((x) => (typeof x.bm25_score === "number" ? x.bm25_score : 0)));
      el.detailWhy.append(whyBars(hit, lastPage.alpha, best));
    }
    el.detailWhy.hidden = false;
  }

  function resultIds() {
    const ids = el.results.dataset.ids;
    return ids ? ids.split(" ") : [];
  }

  function syncDetailPosition() {
    if (!state.image) return;
    const ids = resultIds();
    const i = ids.indexOf(state.image);
    el.detailPosition.textContent = i >= 0 ? `${(lastPage?.offset || 0) + i + 1} of ${lastPage?.total ?? ids.length}${lastPage?.total_relation === "gte" ? "+" : ""}` : "";
    el.detailPrev.disabled = i < 0 || (i === 0 && el.prev.disabled);
    el.detailNext.disabled = i < 0 || (i === ids.length - 1 && el.next.disabled);
    if (i >= 0) renderDetailWhy(lastHits.get(state.image));
  }

  /** Move the detail to the previous or next result (history replaced, not stacked); past the
   * page's first or last hit, the neighbouring page loads and its nearest hit is shown. */
  function stepDetail(direction) {
    const ids = resultIds();
    const i = ids.indexOf(state.image);
    if (i < 0 || el.region.dataset.state !== "done") return;
    const next = ids[i + direction];
    if (next) {
      detailReturnId = next;
      navigate(withChanges({ image: next }), { replace: true });
      return;
    }
    if ((direction > 0 ? el.next : el.prev).disabled) return;
    pendingStep = direction;
    const offset = Math.max(0, state.offset + direction * state.k);
    navigate(withChanges({ offset: Math.min(offset, MAX_OFFSET) }), { replace: true });
  }

  /** A download link: same-origin files save under the image id; a file on another origin
   * (a CDN) cannot be renamed by the page, so it opens in a new tab instead of replacing this one. */
  function setDownload(src, id) {
    el.download.href = src;
    const sameOrigin = new URL(src, location.href).origin === location.origin;
    el.download.setAttribute("download", id);
    if (sameOrigin) {
      el.download.removeAttribute("target");
      el.download.removeAttribute("rel");
    } else {
      el.download.target = "_blank";
      el.download.rel = "noopener noreferrer";
    }
  }

  function setZoom(on) {
    el.detailFigure.classList.toggle("is-zoomed", on);
    el.detailZoom.setAttribute("aria-pressed", String(on));
    el.detailZoom.textContent = on ? "Fit to panel" : "Full size";
  }

  async function copyText(text, what) {
    let ok = false;
    try {
      await navigator.clipboard.writeText(text);
      ok = true;
    } catch {
      // No clipboard API (insecure origin) or permission: the old way, through a selection.
      const area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "visually-hidden";
      el.detail.append(area);
      area.select();
      try {
        ok = document.execCommand("copy");
      } catch {
        ok = false;
      }
      area.remove();
    }
    el.copyStatus.textContent = ok ? `${what} copied.` : `Could not copy: ${text}`;
  }

  function imageLink(id) {
    return `${location.origin}${location.pathname}?image=${encodeURIComponent(id)}`;
  }

  function findSimilar(smode) {
    const id = state.image;
    if (!id) return;
    clearUpload();
    detailReturnId = null;
    navigate(withChanges({ similar: id, smode, image: null, upload: null, offset: 0 }));
    el.region.focus({ preventScroll: true });
  }

  function bindDetail() {
    el.detailClose.addEventListener("click", closeDetail);
    el.detailPrev.addEventListener("click", () => stepDetail(-1));
    el.detailNext.addEventListener("click", () => stepDetail(1));
    // Esc: the dialog's own cancel; the URL follows, so back/forward and links stay right.
    el.detail.addEventListener("cancel", (e) => {
      e.preventDefault();
      closeDetail();
    });
    el.detail.addEventListener("close", () => {
      if (state.image) closeDetail();
      const card = detailReturnId && [...el.results.children].find((c) => c.dataset.imageId === detailReturnId);
      (card?.querySelector(".card-link") || el.region).focus({ preventScroll: Boolean(!card) });
    });
    // A click on the backdrop (outside the panel) closes, as people expect of an overlay.
    el.detail.addEventListener("click", (e) => {
      if (e.target === el.detail) closeDetail();
    });
    el.detail.addEventListener("keydown", (e) => {
      if (e.key !== "ArrowLeft" && e.key !== "ArrowRight") return;
      if (/^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement?.tagName || "")) return;
      e.preventDefault();
      stepDetail(e.key === "ArrowLeft" ? -1 : 1);
    });
    el.detailZoom.addEventListener("click", () => setZoom(!el.detailFigure.classList.contains("is-zoomed")));
    el.detailImg.addEventListener("click", () => setZoom(!el.detailFigure.classList.contains("is-zoomed")));
    el.detailImg.addEventListener("load", () => {
      el.detailSize.textContent = `${el.detailImg.naturalWidth} × ${el.detailImg.naturalHeight} px`;
    });
    el.copyId.addEventListener("click", () => copyText(state.image, "Image id"));
    el.copyLink.addEventListener("click", () => copyText(imageLink(state.image), "Link"));
    el.similarImage.addEventListener("click", () => findSimilar("image"));
    el.similarImageText.addEventListener("click", () => findSimilar("image_text"));
  }

  // --- image id search ----------------------------------------------------------------------

  /** Read an image id from what was typed or pasted: an id, or a link to one of this
   * collection's images (…/images/ID, …/images/ID/file, or a page link with ?image= / ?similar=). */
  function parseImageRef(raw) {
    const text = String(raw || "").trim();
    if (!text) return null;
    if (IMAGE_ID.test(text)) return text;
    let url;
    try {
      url = new URL(text, location.href);
    } catch {
      return null;
    }
    for (const name of ["image", "similar"]) {
      const v = url.searchParams.get(name);
      if (v && IMAGE_ID.test(v)) return v;
    }
    const m = url.pathname.match(/\/images\/([^/]+)(?:\/(?:file|similar))?\/?$/);
    if (m) {
      const id = decodeURIComponent(m[1]);
      if (IMAGE_ID.test(id)) return id;
    }
    return null;
  }

  function searchImageRef() {
    const id = parseImageRef(el.imageRef.value);
    if (!id) {
      el.imageRefError.hidden = false;
      el.imageRefError.textContent =
        "Not an image id or image link: ids are 1–128 characters from A–Z a–z 0–9 . _ -";
      el.imageRef.setAttribute("aria-invalid", "true");
      el.imageRef.focus();
      return;
    }
    el.imageRefError.hidden = true;
    el.imageRef.removeAttribute("aria-invalid");
    clearUpload();
    navigate(withChanges({ similar: id, image: null, upload: null, offset: 0 }));
  }

  // --- active filters -----------------------------------------------------------------------

  function renderActiveFilters() {
    const chips = [];
    for (const [field, values] of Object.entries(state.filters)) {
      for (const value of values) {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "filter-chip";
        b.dataset.field = field;
        b.dataset.value = value;
        b.setAttribute("aria-label", `Remove filter ${humanize(field)}: ${value}`);
        const name = document.createElement("span");
        name.className = "filter-chip-field";
        name.textContent = `${humanize(field)}:`;
        const x = document.createElement("span");
        x.setAttribute("aria-hidden", "true");
        x.className = "filter-chip-x";
        x.textContent = "×";
        b.append(name, ` ${value} `, x);
        b.addEventListener("click", () => {
          const all = [...el.activeFilters.querySelectorAll(".filter-chip")];
          const i = all.indexOf(b);
          toggleFilter(field, value, false);
          // Keep the keyboard where it was: the chip that took this one's place, else the results.
          const rest = [...el.activeFilters.querySelectorAll(".filter-chip")];
          (rest[Math.min(i, rest.length - 1)] || el.region).focus({ preventScroll: true });
        });
        chips.push(b);
      }
    }
    if (chips.length > 1) {
      const all = document.createElement("button");
      all.type = "button";
      all.className = "btn btn-link btn-small";
      all.textContent = "Clear all";
      all.addEventListener("click", () => {
        navigate(withChanges({ filters: {}, offset: 0 }));
        el.region.focus({ preventScroll: true });
      });
      chips.push(all);
    }
    el.activeFilters.replaceChildren(...chips);
    el.activeFilters.hidden = !chips.length;
  }

  // --- facets -------------------------------------------------------------------------------

  function renderFacets() {
    const fields = facetData ? Object.keys(facetData) : [];
    // Values chosen in the URL stay visible even if /facets does not list them.
    for (const f of Object.keys(state.filters)) if (!fields.includes(f)) fields.push(f);
    if (!fields.length) {
      el.facets.innerHTML = '<p class="muted small">No filterable fields in this index.</p>';
      updateFilterCount();
      return;
    }
    // Re-rendering replaces the boxes; keep keyboard focus on the one the user just toggled.
    const active = document.activeElement;
    const focused =
      active && el.facets.contains(active) && active.type === "checkbox"
        ? { field: active.closest(".facet").dataset.field, value: active.value }
        : null;
    const groups = fields.map((field, fi) => renderFacetGroup(field, fi));
    el.facets.replaceChildren(...groups);
    if (focused) {
      const box = [...el.facets.querySelectorAll(".facet")]
        .find((g) => g.dataset.field === focused.field)
        ?.querySelector(`input[value="${CSS.escape(focused.value)}"]`);
      box?.focus();
    }
    updateFilterCount();
  }

  function renderFacetGroup(field, fi) {
    const counts = (facetData && facetData[field]) || {};
    const chosen = state.filters[field] || [];
    const ui = (facetUi[field] ||= { expanded: false, filter: "" });
    const values = Object.keys(counts).sort((a, b) => counts[b] - counts[a] || a.localeCompare(b));
    for (const v of chosen) if (!values.includes(v)) values.unshift(v);

    const group = document.createElement("fieldset");
    group.className = "facet";
    group.dataset.field = field;
    const legend = document.createElement("legend");
    legend.textContent = humanize(field);
    group.append(legend);

    let shown = values;
    if (values.length > FACET_PREVIEW * 2) {
      const search = document.createElement("input");
      search.type = "search";
      search.className = "facet-search";
      search.placeholder = `Find ${humanize(field).toLowerCase()}…`;
      search.setAttribute("aria-label", `Find a ${humanize(field).toLowerCase()} value`);
      search.value = ui.filter;
      search.addEventListener("input", () => {
        ui.filter = search.value;
        const fresh = renderFacetGroup(field, fi);
        group.replaceWith(fresh);
        const box = fresh.querySelector(".facet-search");
        box.focus();
        box.setSelectionRange(box.value.length, box.value.length);
      });
      group.append(search);
    }
    if (ui.filter) {
      const needle = ui.filter.toLowerCase();
      shown = values.filter((v) => chosen.includes(v) || v.toLowerCase().includes(needle));
    }
    const limit = ui.expanded ? FACET_MAX_RENDER : FACET_PREVIEW;
    // Chosen values first, so a selection never hides behind "Show all".
    shown = [...shown.filter((v) => chosen.includes(v)), ...shown.filter((v) => !chosen.includes(v))];
    const hidden = Math.max(0, shown.length - Math.max(limit, chosen.length));
    shown = shown.slice(0, Math.max(limit, chosen.length));

    const list = document.createElement("ul");
    list.className = "facet-values";
    shown.forEach((value, vi) => {
      const li = document.createElement("li");
      const id = `facet-${fi}-${vi}`;
      const box = document.createElement("input");
      box.type = "checkbox";
      box.id = id;
      box.value = value;
      box.checked = chosen.includes(value);
      box.addEventListener("change", () => toggleFilter(field, value, box.checked));
      const label = document.createElement("label");
      label.htmlFor = id;
      const name = document.createElement("span");
      name.className = "facet-name";
      name.textContent = value;
      const count = document.createElement("span");
      count.className = "facet-count";
      count.textContent = counts[value] !== undefined ? counts[value].toLocaleString() : "";
      label.append(name, count);
      li.append(box, label);
      list.append(li);
    });
    group.append(list);
    if (hidden > 0 || ui.expanded) {
      const more = document.createElement("button");
      more.type = "button";
      more.className = "btn btn-link btn-small";
      more.textContent = ui.expanded ? "Show fewer" : `Show ${Math.min(hidden, FACET_MAX_RENDER - limit)} more`;
      if (!ui.expanded && hidden > FACET_MAX_RENDER - limit) more.textContent += " (type to find the rest)";
      more.setAttribute("aria-expanded", String(ui.expanded));
      more.addEventListener("click", () => {
        ui.expanded = !ui.expanded;
        const fresh = renderFacetGroup(field, fi);
        group.replaceWith(fresh);
        fresh.querySelector(".btn-link")?.focus();
      });
      group.append(more);
    }
    return group;
  }

  function toggleFilter(field, value, on) {
    const next = withChanges({ offset: 0 });
    const values = new Set(next.filters[field] || []);
    if (on) values.add(value);
    else values.delete(value);
    if (values.size) next.filters[field] = [...values];
    else delete next.filters[field];
    navigate(next);
  }

  function updateFilterCount() {
    const n = Object.values(state.filters).reduce((sum, vs) => sum + vs.length, 0);
    el.filterCount.textContent = n ? `${n} active` : "";
    el.clearFilters.hidden = n === 0;
    renderActiveFilters();
  }

  function syncFacetChecks() {
    // Re-render when the chosen set changed (back/forward), so the boxes always match the URL.
    if (facetData !== null || Object.keys(state.filters).length) renderFacets();
  }

  // --- controls -----------------------------------------------------------------------------

  function syncControls() {
    if (document.activeElement !== el.q || el.q.value !== state.q) el.q.value = state.q;
    for (const r of el.form.querySelectorAll('input[name="mode"]')) r.checked = r.value === state.mode;
    el.alpha.value = String(state.alpha);
    el.alphaValue.textContent = formatAlpha(state.alpha);
    el.alphaControl.hidden = !usesAlpha(state);
    // The text-mode switch does not drive the similar and upload views; picking a mode leaves them.
    el.modeGroup.classList.toggle("is-inactive", view(state) === "similar" || view(state) === "upload");
    const kValue = String(state.k);
    if (![...el.k.options].some((o) => o.value === kValue)) {
      el.k.append(new Option(kValue, kValue));
    }
    el.k.value = kValue;
    syncFacetChecks();
    renderActiveFilters();
    document.title = state.image
      ? `Image ${state.image} — medsearch`
      : state.similar
      ? `Similar to ${state.similar} — medsearch`
      : state.q
        ? `${state.q} — medsearch`
        : "medsearch — medical image search";
  }

  function setUpload(file) {
    clearUpload();
    upload = { file, previewUrl: URL.createObjectURL(file) };
  }

  function clearUpload() {
    if (upload) URL.revokeObjectURL(upload.previewUrl);
    upload = null;
    el.file.value = "";
  }

  function acceptFile(file) {
    if (!file || el.chooseFile.disabled) return;
    setUpload(file);
    navigate(withChanges({ upload: file.name || "image", similar: null, offset: 0, q: el.q.value.trim() }));
  }

  function bindEvents() {
    el.form.addEventListener("submit", (e) => {
      e.preventDefault();
      const q = el.q.value.trim();
      // A pasted link to an image of this collection means "images like this one".
      const linked = /^https?:\/\//i.test(q) ? parseImageRef(q) : null;
      if (linked) {
        clearUpload();
        el.q.value = "";
        navigate(withChanges({ q: "", similar: linked, image: null, upload: null, offset: 0 }));
        return;
      }
      // With an image chosen, text refines it (hybrid); otherwise it is a new text search.
      const keepUpload = Boolean(state.upload && upload);
      navigate(
        withChanges({ q, offset: 0, similar: null, image: null, upload: keepUpload ? state.upload : null }),
        { force: true },
      );
    });
    el.imageRefGo.addEventListener("click", searchImageRef);
    el.imageRef.addEventListener("keydown", (e) => {
      if (e.key !== "Enter") return;
      e.preventDefault(); // not the text search's submit
      searchImageRef();
    });
    el.imageRef.addEventListener("input", () => {
      el.imageRefError.hidden = true;
      el.imageRef.removeAttribute("aria-invalid");
    });
    el.retry.addEventListener("click", retry);
    bindDetail();
    // Arrow keys move between result cards: left/right by one, up/down by a row of the grid.
    el.results.addEventListener("keydown", (e) => {
      const link = e.target.closest && e.target.closest(".card-link");
      if (!link || e.altKey || e.ctrlKey || e.metaKey) return;
      const cards = [...el.results.querySelectorAll(".card:not(.skeleton)")];
      const i = cards.indexOf(link.closest(".card"));
      const perRow = Math.max(1, cards.filter((c) => c.offsetTop === cards[0].offsetTop).length);
      const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -perRow, ArrowDown: perRow }[e.key];
      if (!step || i < 0) return;
      const target = cards[i + step];
      e.preventDefault();
      target?.querySelector(".card-link").focus();
    });
    for (const r of el.form.querySelectorAll('input[name="mode"]')) {
      r.addEventListener("change", () => {
        if (!r.checked) return;
        const q = el.q.value.trim();
        navigate(withChanges({ mode: r.value, q, offset: 0, similar: null, upload: null }));
      });
    }
    el.alpha.addEventListener("input", () => {
      el.alphaValue.textContent = formatAlpha(Number(el.alpha.value));
    });
    // Sliding fires many input events; search once the value settles, and do not flood history.
    el.alpha.addEventListener("change", () => {
      navigate(withChanges({ alpha: Number(el.alpha.value), offset: 0 }), { replace: true });
    });
    el.k.addEventListener("change", () => navigate(withChanges({ k: Number(el.k.value), offset: 0 })));
    el.prev.addEventListener("click", () => page(-1));
    el.next.addEventListener("click", () => page(1));
    el.clearFilters.addEventListener("click", () => navigate(withChanges({ filters: {}, offset: 0 })));
    el.brand.addEventListener("click", (e) => {
      e.preventDefault();
      clearUpload();
      navigate(blankState());
      el.q.focus();
    });

    el.chooseFile.addEventListener("click", () => el.file.click());
    el.file.addEventListener("change", () => acceptFile(el.file.files[0]));
    let dragDepth = 0;
    document.addEventListener("dragenter", (e) => {
      if (!hasFiles(e)) return;
      dragDepth += 1;
      el.dropzone.classList.add("is-dragover");
    });
    document.addEventListener("dragleave", () => {
      dragDepth = Math.max(0, dragDepth - 1);
      if (!dragDepth) el.dropzone.classList.remove("is-dragover");
    });
    document.addEventListener("dragover", (e) => {
      if (hasFiles(e)) e.preventDefault();
    });
    // A drop anywhere on the page counts, so a near miss does not open the file in the tab.
    document.addEventListener("drop", (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      dragDepth = 0;
      el.dropzone.classList.remove("is-dragover");
      acceptFile(e.dataTransfer.files[0]);
    });

    document.addEventListener("keydown", (e) => {
      const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement?.tagName || "");
      // The detail is modal: the search box behind it cannot take focus until it closes.
      if (e.key === "/" && !typing && !e.metaKey && !e.ctrlKey && !el.detail.open) {
        e.preventDefault();
        el.q.focus();
        el.q.select();
      }
    });

    window.addEventListener("popstate", (e) => {
      state = stateFromUrl(location.search);
      // An upload view's file travels in the history entry (Files survive structured cloning).
      const file = e.state && e.state.upload;
      if (state.upload && file instanceof File && (!upload || upload.file !== file)) setUpload(file);
      syncControls();
      update();
    });
  }

  function hasFiles(e) {
    return Boolean(e.dataTransfer && [...e.dataTransfer.types].includes("Files"));
  }

  function page(direction) {
    goToOffset(Math.max(0, state.offset + direction * state.k));
  }

  function goToOffset(offset) {
    navigate(withChanges({ offset: Math.min(offset, MAX_OFFSET) }));
    el.region.focus({ preventScroll: true });
    el.region.scrollIntoView({ block: "start", behavior: "smooth" });
  }

  // --- start-up -----------------------------------------------------------------------------

  async function loadConfig() {
    try {
      const response = await fetch("config.json", { cache: "no-cache" });
      if (!response.ok) return;
      const config = await response.json();
      if (config && typeof config.apiBaseUrl === "string") apiBase = config.apiBaseUrl.trim();
      if (config && Array.isArray(config.exampleQueries)) {
        const given = config.exampleQueries.filter((q) => typeof q === "string" && q.trim()).slice(0, 8);
        if (given.length) examples = given;
      }
    } catch {
      // No config: the API is on the same origin as the page.
    }
  }

  async function loadHealth() {
    try {
      const h = await api("health");
      const count = h.documents;
      const bits = [];
      if (typeof count === "number") bits.push(`${count.toLocaleString()} images`);
      // The API names the model fit to show (a hub id as it is, a folder by its name only).
      const model = typeof h.model === "string" && h.model ? h.model : null;
      bits.push(model ? `model ${model}` : "text search only (no model)");
      el.health.title = model ? `Model: ${model}` : "";
      el.health.textContent = bits.join(" · ");
      if (Array.isArray(h.modes)) applyModes(h.modes);
      el.health.classList.toggle("is-down", Boolean(h.status && h.status !== "ok"));
    } catch (err) {
      if (err.status !== 0) {
        // Reachable but not ready (503: index or model down): the API's own reason.
        el.health.textContent = "Search service unavailable";
        el.health.title = err.message;
        el.health.classList.add("is-down");
        el.retry.hidden = false;
      }
    }
  }

  /** The header's light: red with a Retry button while the API cannot be reached, asked again
   * every few seconds; back to normal as soon as any answer arrives. */
  function setApiDown(down, err) {
    const was = apiDown;
    apiDown = down;
    clearTimeout(healthTimer);
    if (down) {
      el.health.textContent = "API unreachable";
      el.health.title = err ? String(err.message || err) : "";
      el.health.classList.add("is-down");
      el.retry.hidden = false;
      healthTimer = setTimeout(() => loadHealth(), HEALTH_RETRY_MS);
      return;
    }
    el.retry.hidden = true;
    el.health.classList.remove("is-down");
    if (was) {
      el.health.textContent = "API reachable again";
      loadHealth();
      if (facetData === null) loadFacets();
    }
  }

  /** Ask the API again now, and rerun a view that failed. */
  function retry() {
    loadHealth();
    if (facetData === null) loadFacets();
    if (el.region.dataset.state === "error") {
      lastRunKey = null;
      update();
    }
    if (el.detail.dataset.state === "error" && state.image) renderDetail(state.image);
  }

  /** Disable what the service cannot run (a server without a model offers text search only). */
  function applyModes(modes) {
    for (const r of el.form.querySelectorAll('input[name="mode"]')) {
      r.disabled = !modes.includes(r.value);
      const label = el.form.querySelector(`label[for="${r.id}"]`);
      if (r.disabled) label.title = "Not available: the server runs without a model";
    }
    const canUpload = modes.includes("upload");
    el.chooseFile.disabled = !canUpload;
    el.dropzone.classList.toggle("is-disabled", !canUpload);
    if (!canUpload) el.dropzone.querySelector(".drop-types").textContent = "Not available: the server runs without a model";
    if (!modes.includes(state.mode) && view(state) === "search") {
      navigate(withChanges({ mode: "text", offset: 0 }), { replace: true });
    }
  }

  async function loadFacets() {
    try {
      const data = await api("facets");
      facetData = data && typeof data === "object" && !Array.isArray(data) ? data : {};
      renderFacets();
    } catch (err) {
      el.facets.innerHTML = "";
      const p = document.createElement("p");
      p.className = "muted small";
      p.textContent = `Filters unavailable: ${err.message}`;
      el.facets.append(p);
    }
  }

  async function start() {
    bindEvents();
    await loadConfig();
    el.docsLink.href = apiUrl("docs");
    state = stateFromUrl(location.search);
    const restored = history.state && history.state.upload;
    if (state.upload && restored instanceof File) setUpload(restored);
    history.replaceState(history.state, "", urlFromState(state));
    // Text typed while the config loaded is the user's: the controls' sync must not wipe it.
    const typed = el.q.value;
    syncControls();
    if (!state.q && typed.trim()) el.q.value = typed;
    loadHealth();
    loadFacets();
    setInterval(() => {
      if (document.visibilityState === "visible" && !apiDown) loadHealth();
    }, HEALTH_POLL_MS);
    // On a phone the results come first: filters and search options start folded.
    if (window.matchMedia("(max-width: 760px)").matches) {
      $("filters-details").open = false;
      el.advanced.open = false;
    }
    update();
  }

  start();
})();

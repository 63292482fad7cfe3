// Live figures and the month switch, on top of pages that work without this script.
"use strict";
(function () {
  const main = document.getElementById("main");
  if (!main || !main.dataset.fragment) return;
  const form = document.getElementById("month-form");
  const input = form && form.querySelector("input[type=month]");
  // The live poll is held by the server until the page changes (about 20 s at most): an open page
  // costs nothing while nothing changes. After an error, or an answer that came back at once, it waits.
  const pause = 3000;
  let tag = main.dataset.etag || "";
  let inflight = null;

  // What had the focus inside the page, to find it again after a swap (links by their address).
  function focusKey() {
    const active = document.activeElement;
    if (!active || !main.contains(active)) return null;
    if (active.id) return "#" + CSS.escape(active.id);
    const href = active.getAttribute("href");
    return href ? 'a[href="' + CSS.escape(href) + '"]' : null;
  }

  // Load the page's fragment and swap it in if it changed: "ok", "error" or "aborted" (a month switch
  // replaces the poll under way, and a hidden tab gives its connection back).
  function load(url, force) {
    if (inflight) inflight.controller.abort();
    const controller = new AbortController();
    const promise = fetchAndSwap(url, force, controller);
    inflight = { controller: controller, promise: promise };
    return promise;
  }

  async function fetchAndSwap(url, force, controller) {
    try {
      const headers = tag && !force ? { "If-None-Match": tag } : {};
      const response = await fetch(url, { credentials: "same-origin", cache: "no-store", headers, signal: controller.signal });
      if (response.status === 401) { window.location.reload(); return "aborted"; }
      if (response.status === 304) return "ok";
      if (!response.ok) return "error";
      const html = await response.text();
      if (controller.signal.aborted) return "aborted";
      const focused = focusKey();
      main.innerHTML = html;
      tag = response.headers.get("ETag") || "";
      const title = document.getElementById("page-title");
      if (title) document.title = title.textContent;
      if (focused) { const again = main.querySelector(focused); if (again) again.focus(); }
      return "ok";
    } catch (error) {
      return controller.signal.aborted ? "aborted" : "error";  // offline for a moment: try again soon
    } finally {
      if (inflight && inflight.controller === controller) inflight = null;
    }
  }

  function sleep(ms) { return new Promise(function (done) { window.setTimeout(done, ms); }); }

  async function follow() {
    for (;;) {
      if (inflight) {  // a month switch under way: the poll follows it
        await inflight.promise;
        continue;
      }
      if (document.hidden) {
        await new Promise(function (done) { document.addEventListener("visibilitychange", done, { once: true }); });
        continue;
      }
      const url = new URL(main.dataset.fragment, window.location.href);
      url.searchParams.set("wait", "1");
      const started = Date.now();
      const outcome = await load(url.pathname + url.search, false);
      if (outcome === "error" || (outcome === "ok" && Date.now() - started < 1000)) await sleep(pause);
    }
  }

  function fragmentFor(month) {
    const url = new URL(main.dataset.fragment, window.location.href);
    url.searchParams.set("month", month);
    return url.pathname + url.search;
  }

  function show(month) {
    main.dataset.fragment = fragmentFor(month);
    // The language links keep the month shown.
    document.querySelectorAll("header nav a").forEach(function (link) {
      const url = new URL(link.href);
      url.searchParams.set("month", month);
      link.href = url.pathname + url.search;
    });
    load(main.dataset.fragment, true);
  }

  if (input) {
    let timer = null;
    // Typing a year fires "change" at every digit: act on a whole, plausible month, once typing pauses.
    input.addEventListener("change", function () {
      window.clearTimeout(timer);
      timer = window.setTimeout(function () {
        const value = input.value;
        if (!/^[0-9]{4}-[0-9]{2}$/.test(value) || value < "2000-01") return;
        const page = new URL(window.location.href);
        if (page.searchParams.get("month") === value) return;
        page.searchParams.set("month", value);
        window.history.pushState({ month: value }, "", page.pathname + page.search);
        show(value);
      }, 600);
    });
    // Back and forward: the page the address names, as it would load.
    window.addEventListener("popstate", function () { window.location.reload(); });
  }
  document.addEventListener("visibilitychange", function () { if (document.hidden && inflight) inflight.controller.abort(); });
  follow();
})();

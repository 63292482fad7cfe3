// Live figures and the month switch, on top of pages that work without this script.
"use strict";
(function () {
  const main = document.getElementById("main");
  if (!main || !main.dataset.fragment) return;
  const form = document.getElementById("month-form");
  const input = form && form.querySelector("input[type=month]");
  const every = 3000;  // with the server's 1 s cache: a sale shows within about 4 s
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

  async function load(url, force) {
    if (inflight) {
      if (!force) return;  // a poll waits for the one under way; a month switch replaces it
      inflight.abort();
    }
    const controller = new AbortController();
    inflight = controller;
    try {
      const headers = tag && !force ? { "If-None-Match": tag } : {};
      const response = await fetch(url, { credentials: "same-origin", cache: "no-store", headers, signal: controller.signal });
      if (response.status === 401) { window.location.reload(); return; }
      if (response.status === 304 || !response.ok) return;
      const html = await response.text();
      if (controller.signal.aborted) return;
      const focused = focusKey();
      main.innerHTML = html;
      tag = response.headers.get("ETag") || "";
      const title = document.getElementById("page-title");
      if (title) document.title = title.textContent;
      if (focused) { const again = main.querySelector(focused); if (again) again.focus(); }
    } catch (error) {
      // Aborted, or offline for a moment: the next poll tries again.
    } finally {
      if (inflight === controller) inflight = null;
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
  window.setInterval(function () { if (!document.hidden) load(main.dataset.fragment, false); }, every);
})();

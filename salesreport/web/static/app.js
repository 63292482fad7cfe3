// Live figures and the month switch, on top of pages that work without this script.
"use strict";
(function () {
  const main = document.getElementById("main");
  if (!main || !main.dataset.fragment) return;
  const form = document.getElementById("month-form");
  const every = 3000;  // with the server's 1 s cache: a sale shows within about 4 s
  let shown = null;
  let busy = false;

  async function load(url) {
    if (busy) return;
    busy = true;
    try {
      // "no-cache": the browser revalidates with the page's ETag; unchanged figures cost a 304.
      const response = await fetch(url, { credentials: "same-origin", cache: "no-cache" });
      if (response.status === 401) { window.location.reload(); return; }
      if (!response.ok) return;
      const html = await response.text();
      if (html !== shown) {
        const focused = document.activeElement && document.activeElement.id;
        main.innerHTML = html;
        shown = html;
        if (focused) { const again = document.getElementById(focused); if (again) again.focus(); }
      }
      const status = document.getElementById("live-status");
      if (status) status.dataset.updated = new Date().toISOString();
    } catch (error) {
      // Offline for a moment: the next poll tries again.
    } finally {
      busy = false;
    }
  }

  function fragmentFor(month) {
    const url = new URL(main.dataset.fragment, window.location.href);
    url.searchParams.set("month", month);
    return url.pathname + url.search;
  }

  if (form) {
    const input = form.querySelector("input[type=month]");
    input.addEventListener("change", function () {
      if (!input.value) return;
      const page = new URL(window.location.href);
      page.searchParams.set("month", input.value);
      window.history.pushState({ month: input.value }, "", page.pathname + page.search);
      main.dataset.fragment = fragmentFor(input.value);
      load(main.dataset.fragment);
    });
    window.addEventListener("popstate", function () {
      const month = new URL(window.location.href).searchParams.get("month");
      if (month) { input.value = month; main.dataset.fragment = fragmentFor(month); load(main.dataset.fragment); }
    });
  }
  window.setInterval(function () { if (!document.hidden) load(main.dataset.fragment); }, every);
})();

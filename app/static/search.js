// Search as you type: one fetch per keystroke, the previous one aborted.
//
// Aborting a fetch makes the browser close that request's connection; the server's
// RequestAbortedMiddleware sees the disconnect and fires the request's token, which stops
// the SQL statement and the upstream call the request was waiting on.
"use strict";

const $ = (id) => document.getElementById(id);

const input = $("q");
const statusLine = $("status");
const results = $("results");
const productList = $("products");
const recommended = $("recommended");
const recommendedMissing = $("recommended-missing");
const recommendationList = $("recommendations");

const page = { sent: 0, aborted: 0 };
let inFlight = null; // { query, controller } of the latest search

input.addEventListener("input", () => search(input.value.trim()));

async function search(query) {
  if (inFlight !== null && inFlight.query === query) {
    return; // a trailing space changes nothing: let the request in flight finish
  }
  inFlight?.controller.abort();
  inFlight = null;
  if (query === "") {
    showEmpty();
    return;
  }
  const mine = { query, controller: new AbortController() };
  inFlight = mine;
  page.sent += 1;
  showPageCounts();
  setStatus(`Searching for “${query}”…`);
  const started = performance.now();
  try {
    const response = await fetch(`/search?limit=8&q=${encodeURIComponent(query)}`, {
      signal: mine.controller.signal,
    });
    const body = await response.json();
    if (!response.ok) {
      throw new Error(body.detail || `HTTP ${response.status}`);
    }
    if (inFlight === mine) {
      showResults(body, performance.now() - started);
    }
  } catch (error) {
    if (error.name === "AbortError") {
      page.aborted += 1; // superseded while the server was still working on it
      showPageCounts();
      return;
    }
    if (inFlight === mine) {
      setStatus(`Search failed: ${error.message}`, "error");
    }
  } finally {
    if (inFlight === mine) {
      inFlight = null;
    }
  }
}

function showEmpty() {
  results.dataset.query = "";
  productList.replaceChildren();
  recommended.hidden = true;
  setStatus("Type to search 2,000 products.");
}

function showResults(body, elapsedMs) {
  results.dataset.query = body.query;
  const found = body.products.length;
  const what =
    found === 0 ? "No products match" : `${found} ${found === 1 ? "product" : "products"} for`;
  setStatus(`${what} “${body.query}” · ${Math.round(elapsedMs)} ms`);
  productList.replaceChildren(...body.products.map(productItem));

  recommended.hidden = false;
  const recommendations = body.recommendations;
  recommendedMissing.hidden = recommendations !== null;
  recommendedMissing.textContent = `Recommendations unavailable (${body.recommendations_missing}).`;
  recommendationList.replaceChildren(
    ...(recommendations ?? []).map((hit) => element("li", "chip", hit.name)),
  );
}

function productItem(hit) {
  const item = element("li", "product");
  const text = element("div", "product-text");
  text.append(
    element("span", "name", hit.name),
    element("span", "meta", `${hit.category} · ${hit.sku}`),
  );
  const inStock = hit.in_stock > 0;
  const numbers = element("div", "product-numbers");
  numbers.append(
    element("span", "price", price.format(hit.price)),
    element("span", inStock ? "stock" : "stock out", inStock ? `${hit.in_stock} in stock` : "sold out"),
  );
  item.append(text, numbers);
  return item;
}

function setStatus(text, kind = "") {
  statusLine.textContent = text;
  statusLine.className = `status ${kind}`.trim();
}

function showPageCounts() {
  $("c-sent").textContent = count(page.sent);
  $("c-aborted").textContent = count(page.aborted);
}

// The live panel: GET /stats twice a second, the next poll only after the last one is done.

const panel = $("panel");

async function poll() {
  try {
    const response = await fetch("/stats", { cache: "no-store" });
    if (!response.ok) {
      throw new Error(`HTTP ${response.status}`);
    }
    showStats(await response.json());
    panel.dataset.state = "live";
  } catch {
    panel.dataset.state = "offline";
  } finally {
    setTimeout(poll, 500);
  }
}

function showStats(stats) {
  const requests = stats.requests;
  $("s-started").textContent = count(requests.started);
  $("s-completed").textContent = count(requests.completed);
  $("s-aborted").textContent = count(requests.aborted);
  $("s-in-flight").textContent = count(requests.in_flight);

  const reasons = Object.entries(requests.aborted_by_reason);
  $("s-reasons").replaceChildren(
    ...(reasons.length === 0
      ? [element("li", "muted", "none yet")]
      : reasons.map(([reason, n]) => {
          const item = element("li");
          item.append(element("span", "reason", reason), element("span", "n", count(n)));
          return item;
        })),
  );

  $("s-statements").textContent = count(stats.cancelled.db_statements);
  $("s-outbound").textContent = count(stats.cancelled.outbound_calls);
  const dbTime = stats.db_time_ms; // null until a completed request gives an estimate
  $("s-db-would").textContent = duration(dbTime.aborted_would_have_cost);
  $("s-db-used").textContent = duration(dbTime.aborted_used);
  $("s-db-saved").textContent = duration(dbTime.saved);
}

// Small helpers

const price = new Intl.NumberFormat("en", { style: "currency", currency: "USD" });

function count(n) {
  return n.toLocaleString("en");
}

function duration(ms) {
  if (ms === null) {
    return "–";
  }
  return ms < 1000 ? `${ms.toFixed(ms < 10 ? 1 : 0)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

function element(tag, className = "", text = "") {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text) {
    node.textContent = text;
  }
  return node;
}

poll();

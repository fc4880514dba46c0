// The page of `ramem serve` in headless Chromium: upload a real photo, see
// the classes and the neighbour grid with weights that sum to one; classify
// a memory entry by its URL with the keyboard; search by text; keep a
// screenshot. Usage: node page.mjs URL PHOTO SCREENSHOT.PNG
// (run by crates/ramem/tests/serve.rs; prints "page ok" when every check held).
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [url, photo, screenshot] = process.argv.slice(2);
if (!url || !photo || !screenshot) {
  console.error("usage: node page.mjs URL PHOTO SCREENSHOT.PNG");
  process.exit(2);
}

const profile = mkdtempSync(join(tmpdir(), "ramem-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
  ],
  viewport: { width: 1200, height: 1000 },
});
const problems = [];
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
  page.setDefaultTimeout(60_000);

  await page.goto(url);
  await page.waitForFunction(() => /over \d+ memory entries/.test(
    document.getElementById("model-info").textContent));

  // Every control has an accessible name.
  for (const label of ["Image file", "Text to search for", "Neighbours to retrieve (k)"]) {
    assert.equal(await page.getByLabel(label).count(), 1, `no control labelled ${label}`);
  }

  // Upload a real photo.
  await page.setInputFiles("#file-input", photo);
  await page.waitForSelector("#classes li");
  await page.waitForSelector("#neighbours li");
  const classes = await page.$$eval("#classes li", (items) => items.map((li) => ({
    name: li.querySelector(".name").textContent,
    p: Number(li.dataset.probability),
  })));
  assert.ok(classes.length >= 1, "no class shown");
  const total = classes.reduce((s, c) => s + c.p, 0);
  assert.ok(total <= 1.0001 && classes[0].p > 0, `class probabilities ${JSON.stringify(classes)}`);
  for (let i = 1; i < classes.length; i++) assert.ok(classes[i - 1].p >= classes[i].p, "classes not sorted");

  const grid = await page.$$eval("#neighbours li", (items) => items.map((li) => ({
    id: li.dataset.memoryId,
    attention: Number(li.dataset.attention),
    faded: li.classList.contains("ignored"),
    alt: li.querySelector("img").alt,
    caption: li.querySelector(".caption").textContent,
  })));
  const query = await page.$eval("#neighbours", (ul) => Number(ul.dataset.queryAttention || 0));
  const weights = grid.reduce((s, n) => s + n.attention, 0) + query;
  assert.ok(Math.abs(weights - 1) < 1e-3, `attention sums to ${weights}`);
  for (let i = 1; i < grid.length; i++) {
    assert.ok(grid[i - 1].attention >= grid[i].attention, "the grid is not sorted by weight");
  }
  const even = 1 / grid.length;
  for (const n of grid) {
    assert.equal(n.faded, n.attention < even / 2, `entry ${n.id} fading`);
    assert.ok(n.alt.length > 0 && n.caption.length > 0, `entry ${n.id} has no text`);
  }
  // The thumbnails load.
  await page.waitForFunction(() => [...document.querySelectorAll("#neighbours img")]
    .every((img) => img.complete && img.naturalWidth > 0));
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`photo: ${classes[0].name} ${classes[0].p.toFixed(3)}; ${grid.length} neighbours`);

  // A memory entry by its URL, with the keyboard only.
  await page.focus("#entry-input");
  await page.keyboard.type(`${url}/v1/memory/0`);
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.getElementById("status").textContent.startsWith("memory entry 0:"));
  const first = await page.$eval("#neighbours li", (li) => li.dataset.memoryId);
  assert.ok(first !== undefined, "no neighbours for the entry");

  // Search the memory by text.
  await page.fill("#search-input", "a bag");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => /entries found/.test(document.getElementById("status").textContent));
  const found = await page.$$eval("#neighbours li .details", (items) => items.map((d) => d.textContent));
  assert.ok(found.length > 0, "the search found nothing");
  assert.ok(found[0].startsWith("Bag"), `the nearest entry to "a bag": ${found[0]}`);
  assert.ok(await page.$eval("#decision", (d) => d.hidden), "a search shows no classes");

  assert.deepEqual(problems, [], "the page reported errors");
  console.log("page ok");
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}

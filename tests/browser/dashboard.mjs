// Drives the dashboard in headless Chromium for tests/dashboard.rs: signs
// in, opens the campaign, watches the counters rise, clicks "Pause
// campaign" and waits for the page to say paused. Prints one JSON line.
//
//   node dashboard.mjs <base-url> <admin-token> <campaign> <screenshot.png> <analyst-token>
import { chromium } from "playwright-core";

const [base, token, campaign, screenshot, analystToken] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const result = { samples: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1100 } });
  page.on("pageerror", (e) => { result.page_error = String(e); });
  await page.goto(base + "/");
  await page.fill("#token", token);
  await page.click("#login-form button[type=submit]");
  await page.click(`a[href="#/c/${campaign}"]`);
  const sent = async () => Number((await page.textContent("#v-sent")).replace(/[^0-9]/g, ""));
  await page.waitForSelector("#v-sent");
  // Counters rise while the campaign runs (live updates, no reload).
  const started = Date.now();
  while (result.samples.length < 3 && Date.now() - started < 60000) {
    const n = await sent();
    if (!result.samples.length || n > result.samples[result.samples.length - 1]) result.samples.push(n);
    await page.waitForTimeout(500);
  }
  result.state_before = await page.textContent("#state");
  await page.click("button[data-action=pause]");
  result.clicked_at = Date.now();
  await page.waitForFunction(() => document.getElementById("state")?.textContent === "paused", null, { timeout: 15000 });
  result.paused_seen_after_ms = Date.now() - result.clicked_at;
  result.sent_when_paused = await sent();
  await page.waitForTimeout(3000);
  result.sent_later = await sent();
  await page.screenshot({ path: screenshot, fullPage: true });
  result.resume_button = (await page.$("button[data-action=resume]")) !== null;
  // An analyst sees the same page without any control.
  if (analystToken) {
    const other = await browser.newContext();
    const view = await other.newPage();
    await view.goto(base + "/");
    await view.fill("#token", analystToken);
    await view.click("#login-form button[type=submit]");
    await view.click(`a[href="#/c/${campaign}"]`);
    await view.waitForSelector("#v-sent");
    result.analyst_role = await view.textContent("#role");
    result.analyst_buttons = (await view.$$("button[data-action]")).length;
  }
} catch (e) {
  result.error = String(e && e.stack || e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));

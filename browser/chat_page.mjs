// Drives Karta's chat page in headless Chromium, as an end user would, for
// tests/all/chat_page.rs:
//
//   node browser/chat_page.mjs <page URL with ?key=pk_live_…> <screenshot.png>
//
// Sends a message and sees the streamed answer; uploads a file; asks for a
// tool that needs approval, reloads the page while the turn waits for the
// answer, approves from the reloaded page and sees the tool's output (with
// its fuel) and the turn's end; lists the conversation and reopens it.
// Prints one JSON line of what it saw; exits non-zero on any failure (the
// Rust test checks the JSON too).
import { chromium } from "playwright-core";

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error("usage: node chat_page.mjs URL SCREENSHOT");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // No sandbox as root; no background traffic (the machine's network is
  // closed and Chromium's own lookups would only add noise).
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const seen = { console: [] };
const step = (name) => { seen.step = name; };
try {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 } }); // a phone
  const page = await context.newPage();
  page.on("console", (m) => seen.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => seen.console.push(`pageerror: ${e.message}`));
  page.setDefaultTimeout(30000);

  step("load");
  await page.goto(url);
  await page.getByLabel("Message", { exact: true }).waitFor();

  step("send and see the streamed answer");
  await page.getByLabel("Message", { exact: true }).fill("hello from the browser");
  await page.getByRole("button", { name: "Send" }).click();
  const answer = page.locator(".msg.agent").first();
  await answer.filter({ hasText: "hello from the browser" }).waitFor();
  seen.answer = await answer.textContent();

  step("upload a file");
  await page.locator("#file").setInputFiles({
    name: "notes.txt", mimeType: "text/plain", buffer: Buffer.from("secret-sauce-42\n"),
  });
  await page.locator(".msg.user", { hasText: "uploads/notes.txt" }).waitFor();

  step("a tool that needs approval");
  await page.getByLabel("Message", { exact: true }).fill('/tool read {"path": "uploads/notes.txt"}');
  await page.getByRole("button", { name: "Send" }).click();
  await page.locator(".approval").waitFor();

  step("reload mid-turn");
  await page.reload();
  const approval = page.locator(".approval");
  await approval.waitFor();
  seen.options = await approval.locator("button").allTextContents();
  await approval.getByRole("button", { name: "Allow once" }).click();

  step("the turn finishes after the reload");
  const tool = page.locator(".tool", { hasText: "secret-sauce-42" });
  await tool.waitFor();
  seen.fuel = await tool.locator(".fuel").textContent();
  await page.locator(".msg.agent", { hasText: "Tool read returned" }).waitFor();
  await page.waitForFunction(() => document.getElementById("status").textContent === "");

  step("list and reopen the conversation");
  await page.locator("#sessions li").first().waitFor();
  seen.conversations = await page.locator("#sessions li").count();
  await page.getByRole("button", { name: "New chat" }).click();
  await page.locator("#log .msg").first().waitFor({ state: "detached" });
  await page.locator("#sessions li button").first().click();
  await page.locator(".msg.user", { hasText: "hello from the browser" }).waitFor();
  seen.reopened = await page.locator("#log .msg").count();

  step("keyboard: the composer and the send button are reachable");
  await page.getByLabel("Message", { exact: true }).focus();
  await page.keyboard.press("Tab");
  seen.tab_lands_on = await page.evaluate(() => document.activeElement?.id || document.activeElement?.tagName);

  await page.screenshot({ path: screenshot, fullPage: true });
  seen.step = "done";
  console.log(JSON.stringify(seen));
} catch (error) {
  seen.error = String(error);
  console.log(JSON.stringify(seen));
  process.exitCode = 1;
} finally {
  await browser.close();
}

// End to end through two browsers: a visitor opens a page with the chat widget and writes;
// the agent with the matching skill logs in, accepts, replies; the visitor sees the reply;
// the visitor reloads and the history is still there; an agent without the skill never
// sees it; a dropped visitor connection resumes without loss or duplicates.
// Widget DOM contract (web/widget/widget.js): #sb-chat-launcher, #sb-chat-panel,
// #sb-chat-input, #sb-chat-send, .sb-msg, .sb-msg-agent, .sb-msg-visitor, #sb-chat-status.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  skipReason, sharedEnv, loginInbox, setPresenceUi, apiClient, eventually, watchErrors, screenshotPath, DEMO, sleep,
  WS_CUTTER, cutNetwork, restoreNetwork, openSockets,
} from './helpers.mjs';

const skip = skipReason() || false;
if (skip) console.log(`# SKIP browser tests: ${skip}`);
const env = sharedEnv();
after(() => env.teardown());

const RECORD_SEEN = () => {
  window.__seen = new Set();
  const scan = () => {
    for (const el of document.querySelectorAll('[data-interaction-id]')) window.__seen.add(el.dataset.interactionId);
  };
  new MutationObserver(scan).observe(document, { subtree: true, childList: true, attributes: true });
};

/** Opens the widget panel if it is closed and fills the pre-chat form if it is shown. */
async function openWidget(page, { name, email }) {
  await page.waitForSelector('#sb-chat-launcher');
  if (!(await page.isVisible('#sb-chat-panel'))) await page.click('#sb-chat-launcher');
  await page.waitForSelector('#sb-chat-panel', { state: 'visible' });
  await page.waitForSelector('#sb-chat-prechat:visible, #sb-chat-form:visible', { timeout: 10000 });
  if (await page.isVisible('#sb-chat-prechat')) {
    await page.fill('#sb-chat-name', name);
    await page.fill('#sb-chat-email', email);
    await page.click('#sb-chat-start');
  }
  await page.waitForSelector('#sb-chat-input', { state: 'visible' });
}

async function visitorSays(page, text) {
  await page.fill('#sb-chat-input', text);
  await page.click('#sb-chat-send');
  await page.waitForFunction((t) => [...document.querySelectorAll('.sb-msg-visitor')].some((m) => m.textContent.includes(t)), text);
}

const texts = (page, sel) => page.$$eval(sel, (els) => els.map((e) => e.textContent));

test('visitor ↔ agent through the widget and the inbox, with reload and reconnect', { skip }, async () => {
  const { hub, chrome } = await env.get();
  const sup = await apiClient(hub.url, DEMO.sam);

  // Agents: Alice (billing) and Bruno (no billing), both available.
  const aliceCtx = await chrome.newContext();
  const brunoCtx = await chrome.newContext();
  await brunoCtx.addInitScript(RECORD_SEEN);
  const alice = await aliceCtx.newPage();
  const bruno = await brunoCtx.newPage();
  const aliceErrors = watchErrors(alice);
  await loginInbox(alice, hub.url, DEMO.alice);
  await setPresenceUi(alice, 'available');
  await loginInbox(bruno, hub.url, DEMO.bruno);
  await setPresenceUi(bruno, 'available');

  // The visitor opens the demo page with the widget and writes.
  const visitorCtx = await chrome.newContext({ viewport: { width: 1100, height: 800 } });
  await visitorCtx.addInitScript(WS_CUTTER);
  const visitor = await visitorCtx.newPage();
  const visitorErrors = watchErrors(visitor);
  const demo = await visitor.goto(`${hub.url}/chat-demo.html`);
  assert.equal(demo.status(), 200, '/chat-demo.html is served');
  await openWidget(visitor, { name: 'Maria Lopez', email: 'maria.widget@example.com' });
  await visitorSays(visitor, 'Hello, I need a refund for a double payment on my invoice.');

  // Alice gets the offer, accepts, replies.
  const offer = alice.locator('.offer').filter({ hasText: /chat/i }).first();
  await offer.waitFor({ timeout: 20000 });
  const iid = await offer.getAttribute('data-interaction-id');
  await offer.locator('.offer-accept').click();
  await alice.waitForFunction(() => [...document.querySelectorAll('#messages .msg-in')].some((m) => /double payment/.test(m.textContent)));
  await alice.fill('#reply-input', 'Hi Maria, this is Alice from billing. Let me check that for you.');
  await alice.click('#reply-send');

  // The visitor sees the reply.
  await visitor.waitForFunction(() => [...document.querySelectorAll('.sb-msg-agent')].some((m) => /Alice from billing/.test(m.textContent)), null, { timeout: 15000 });
  await visitor.screenshot({ path: screenshotPath('widget-conversation.png') });
  await alice.screenshot({ path: screenshotPath('inbox-with-widget-chat.png') });

  // The visitor reloads: the history is still there, each message once.
  await visitor.reload();
  await openWidget(visitor, { name: 'Maria Lopez', email: 'maria.widget@example.com' });
  await visitor.waitForFunction(() => document.querySelectorAll('.sb-msg-agent').length >= 1 && document.querySelectorAll('.sb-msg-visitor').length >= 1, null, { timeout: 15000 });
  assert.deepEqual((await texts(visitor, '.sb-msg-visitor')).filter((t) => /double payment/.test(t)).length, 1);
  assert.deepEqual((await texts(visitor, '.sb-msg-agent')).filter((t) => /Alice from billing/.test(t)).length, 1);

  // After the reload the visitor continues the same conversation.
  await visitorSays(visitor, 'Thanks! The invoice number is 4471.');
  await alice.waitForFunction(() => [...document.querySelectorAll('#messages .msg-in')].some((m) => /4471/.test(m.textContent)), null, { timeout: 15000 });

  // The visitor's connection drops; Alice replies twice meanwhile; on resume both arrive once.
  await cutNetwork(visitorCtx, visitor);
  await sleep(1000);
  assert.equal(await openSockets(visitor), 0, 'the visitor is disconnected');
  for (const body of ['Found it: 49.90 EUR charged twice.', 'The refund is on its way.']) {
    await alice.fill('#reply-input', body);
    await alice.click('#reply-send');
    await alice.waitForFunction((b) => [...document.querySelectorAll('#messages .msg-out')].some((m) => m.textContent.includes(b)), body);
  }
  assert.equal(await visitor.$$eval('.sb-msg-agent', (els) => els.filter((e) => /refund is on its way/.test(e.textContent)).length), 0,
    'the replies were not delivered while disconnected');
  await restoreNetwork(visitorCtx, visitor);
  await visitor.waitForFunction(() => [...document.querySelectorAll('.sb-msg-agent')].some((m) => /refund is on its way/.test(m.textContent)), null, { timeout: 30000 });
  await sleep(500);
  const agentTexts = await texts(visitor, '.sb-msg-agent');
  for (const b of ['Alice from billing', '49.90 EUR charged twice', 'refund is on its way']) {
    assert.equal(agentTexts.filter((t) => t.includes(b)).length, 1, `"${b}" shown exactly once in the widget`);
  }
  // The inbox shows the visitor's messages exactly once too.
  const inboxIn = await texts(alice, '#messages .msg-in .msg-body');
  assert.equal(inboxIn.filter((t) => /4471/.test(t)).length, 1);
  const stored = await sup.get(`/api/v1/interactions/${iid}/messages`);
  assert.equal(await alice.$$eval('#messages .msg', (els) => els.length), stored.length, 'inbox shows every stored message once');

  // Bruno (no billing skill) never saw this chat.
  assert.ok(!(await bruno.evaluate(() => [...window.__seen])).includes(iid), 'bruno never saw it');

  assert.deepEqual(aliceErrors, []);
  assert.deepEqual(visitorErrors.filter((e) => !/net::ERR_INTERNET_DISCONNECTED/.test(e)), []);
  await visitorCtx.close();
  await aliceCtx.close();
  await brunoCtx.close();
});

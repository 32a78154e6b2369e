// The inbox and the pages around it, against real chat contacts: the transcript is not
// refetched on every message (one reply = zero full-transcript requests), "Open in CRM"
// lands on the customer's profile, a marketer signs in without error toasts, and the inbox
// works at phone width (360×740: lists and conversation take turns, nothing scrolls
// sideways).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  skipReason, sharedEnv, loginInbox, setPresenceUi, apiClient, chatVisitor, eventually, watchErrors, screenshotPath, DEMO, sleep,
} from './helpers.mjs';

const skip = skipReason() || false;
if (skip) console.log(`# SKIP browser tests: ${skip}`);
const env = sharedEnv();
after(() => env.teardown());

/** The demo's marketer (src/demo.rs). */
const MIA = ['mia', 'marketer-pass'];
const offerSel = (iid) => `.offer[data-interaction-id="${iid}"]`;
const convSel = (iid) => `.conv-item[data-interaction-id="${iid}"]`;

async function interactionOf(api, conversationId) {
  return eventually(async () => {
    const r = await api.get('/api/v1/interactions?channel=chat&limit=200');
    return r.items.find((i) => i.conversation_key === conversationId);
  }, 15000, `the interaction of chat ${conversationId}`);
}

/** Alice signed in and available, in a context with `options` (viewport…). */
async function alicePage(chrome, hub, options = {}) {
  const ctx = await chrome.newContext(options);
  const page = await ctx.newPage();
  const errors = watchErrors(page);
  await loginInbox(page, hub.url, DEMO.alice);
  await setPresenceUi(page, 'available');
  return { ctx, page, errors };
}

/** A billing chat (routed to Alice) accepted in her page; returns its interaction. */
async function acceptedChat(hub, page, visitorName, text) {
  const sup = await apiClient(hub.url, DEMO.sam);
  const visitor = await chatVisitor(hub.url, { name: visitorName, email: `${visitorName.split(' ')[0].toLowerCase()}@example.com`, language: 'en' });
  await visitor.say(text);
  const i = await interactionOf(sup, visitor.session.conversation_id);
  await page.waitForSelector(offerSel(i.id), { timeout: 15000 });
  await page.click(`${offerSel(i.id)} .offer-accept`);
  await page.waitForSelector('#conv-view:not([hidden]) #messages .msg-in');
  return { i, visitor, sup };
}

/** Closes the conversation through Alice's API session (frees her chat capacity). */
async function finish(hub, iid) {
  const alice = await apiClient(hub.url, DEMO.alice);
  await alice.post(`/api/v1/interactions/${iid}/close`, { disposition: 'inquiry' });
}

test('replies and new messages fetch only what is new: no full transcript reload, each message once and in order', { skip }, async () => {
  const { hub, chrome } = await env.get();
  const { ctx, page, errors } = await alicePage(chrome, hub);
  const { i, visitor, sup } = await acceptedChat(hub, page, 'Paula Grant', 'My invoice shows a payment twice.');

  // Count the transcript requests from here on.
  const full = [];
  const incremental = [];
  page.on('request', (r) => {
    const u = new URL(r.url());
    if (r.method() !== 'GET' || u.pathname !== `/api/v1/interactions/${i.id}/messages`) return;
    (u.searchParams.has('after') ? incremental : full).push(u.search);
  });

  const replies = ['Let me check that payment.', 'I found the duplicate.', 'The refund is on its way.'];
  for (const [k, text] of replies.entries()) {
    await page.fill('#reply-input', text);
    await page.click('#reply-send');
    await page.waitForFunction((n) => document.querySelectorAll('#messages .msg-out').length === n, k + 1);
  }
  await visitor.say('Great, thanks!');
  await visitor.say('One more question about my bill.');
  await page.waitForFunction(() => document.querySelectorAll('#messages .msg-in').length === 3, null, { timeout: 10000 });
  // Every reply delivered (its `delivered` event sent), then a moment for late events.
  await eventually(async () => (await visitor.transcript()).filter((m) => m.from === 'agent').length === 3, 15000, 'the replies delivered');
  await sleep(1000);

  assert.deepEqual(full, [], 'no full transcript reload after the conversation was opened');
  assert.ok(incremental.length <= 2 + replies.length, `a few incremental fetches at most, got ${incremental.length}`);
  const shown = await page.$$eval('#messages .msg', (els) => els.map((e) => e.dataset.messageId));
  const stored = (await sup.get(`/api/v1/interactions/${i.id}/messages`)).map((m) => m.id);
  assert.deepEqual(shown, stored, 'every message shown once, in the stored order');
  const bodies = await page.$$eval('#messages .msg-out .msg-body', (els) => els.map((e) => e.textContent));
  assert.deepEqual(bodies, replies);
  assert.deepEqual(errors, []);
  await finish(hub, i.id);
  await ctx.close();
});

test('"Open in CRM" lands on the customer\'s profile with its data', { skip }, async () => {
  const { hub, chrome } = await env.get();
  const { ctx, page, errors } = await alicePage(chrome, hub);
  const { i } = await acceptedChat(hub, page, 'Olga Berg', 'Question about my last invoice.');
  assert.ok(i.customer_id, 'the chat has a customer');
  const link = page.locator('#customer-panel a', { hasText: 'Open in CRM' });
  await link.waitFor();
  await link.click();
  await page.waitForURL(/\/crm\.html#customer=/);
  await page.waitForSelector('#profile-h');
  assert.match(await page.textContent('#profile-h'), /Olga Berg/);
  await page.waitForSelector('#timeline-sec .timeline li');
  assert.match(await page.textContent('#timeline-sec'), /chat/);
  assert.equal(await page.evaluate(() => document.querySelector('#status').classList.contains('error')), false);
  assert.deepEqual(errors, []);
  await finish(hub, i.id);
  await ctx.close();
});

test('a marketer signs in and moves between the pages without error toasts or refused requests', { skip }, async () => {
  const { hub, chrome } = await env.get();
  const ctx = await chrome.newContext();
  const page = await ctx.newPage();
  const errors = watchErrors(page);
  const refused = [];
  page.on('response', (r) => {
    const u = new URL(r.url());
    if (u.pathname.startsWith('/api/') && r.status() >= 400) refused.push(`${r.request().method()} ${u.pathname} ${r.status()}`);
  });
  await page.goto(`${hub.url}/`);
  await page.fill('#login-username', MIA[0]);
  await page.fill('#login-password', MIA[1]);
  // The session probe before signing in answers 401; only what follows counts.
  refused.length = 0;
  await page.click('#login-submit');
  await page.waitForSelector('#no-inbox');
  await sleep(1000);
  assert.equal(await page.locator('.toast-error').count(), 0, 'no error toast in the inbox');
  assert.match(await page.textContent('#no-inbox'), /Customers/);

  await page.click('#no-inbox a[href="/crm.html"]');
  await page.waitForSelector('#view-search:not([hidden])');
  assert.equal(await page.isVisible('nav button[data-view="tasks"]'), false, 'no task list for a role without tasks');
  await page.fill('#q', 'Olga');
  await page.click('#search-form button[type="submit"]');
  await page.waitForSelector('#results li button');
  await page.click('#results li button');
  await page.waitForSelector('#profile-h');
  await sleep(500);
  assert.equal(await page.evaluate(() => document.querySelector('#status').classList.contains('error')), false, await page.textContent('#status'));

  await page.goto(`${hub.url}/kb.html`);
  await page.waitForLoadState('networkidle');
  assert.deepEqual(refused, [], 'no API request refused');
  assert.deepEqual(errors, []);
  await ctx.close();
});

test('the inbox at phone width: lists and conversation take turns, nothing scrolls sideways', { skip }, async () => {
  const { hub, chrome } = await env.get();
  const { ctx, page, errors } = await alicePage(chrome, hub, { viewport: { width: 360, height: 740 }, isMobile: true, hasTouch: true });
  const overflow = () => page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok((await overflow()) <= 0, `no horizontal scroll on the lists (${await overflow()}px)`);
  assert.equal(await page.isVisible('#conv-heading'), true, 'the lists are shown first');

  const { i, visitor } = await acceptedChat(hub, page, 'Nina Park', 'A payment question about my bill.');
  assert.equal(await page.isVisible('#reply-input'), true, 'the conversation is shown after accepting');
  assert.equal(await page.isVisible('.sidebar'), false, 'the lists step aside');
  assert.ok((await overflow()) <= 0, `no horizontal scroll in the conversation (${await overflow()}px)`);
  const box = await page.locator('#reply-input').boundingBox();
  assert.ok(box && box.x >= 0 && box.x + box.width <= 360 && box.y + box.height <= 740, `the reply box is on screen: ${JSON.stringify(box)}`);
  await page.fill('#reply-input', 'Hi Nina, looking at it now.');
  await page.click('#reply-send');
  await page.waitForSelector('#messages .msg-out');
  await eventually(async () => (await visitor.transcript()).some((m) => m.from === 'agent'), 15000, 'the reply');
  await page.screenshot({ path: screenshotPath('inbox-phone-conversation.png') });

  // Back to the lists, and into the conversation again.
  await page.click('#btn-back');
  await page.waitForSelector('#conv-heading', { state: 'visible' });
  assert.equal(await page.isVisible('#reply-input'), false);
  assert.ok((await overflow()) <= 0, 'no horizontal scroll after going back');
  await page.screenshot({ path: screenshotPath('inbox-phone-list.png') });
  await page.click(convSel(i.id));
  await page.waitForSelector('#reply-input', { state: 'visible' });
  assert.deepEqual(errors, []);
  await finish(hub, i.id);
  await ctx.close();
});

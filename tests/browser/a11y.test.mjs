// Accessibility and keyboard use of the pages people work in all day. axe-core (the
// accessibility engine behind most audit tools) checks the WCAG 2.1 A/AA rules on the
// sign-in page, the inbox with an offer and an open conversation, the chat widget while
// chatting, and the supervisor dashboard; then an agent works a chat with the keyboard
// alone: sign in, accept the offer, reply, and close it with a disposition.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import {
  skipReason, sharedEnv, loginInbox, setPresenceUi, apiClient, chatVisitor, eventually, watchErrors, screenshotPath, DEMO,
} from './helpers.mjs';

const skip = skipReason() || false;
if (skip) console.log(`# SKIP browser tests: ${skip}`);
const env = sharedEnv();
after(() => env.teardown());

const AXE = createRequire(import.meta.url).resolve('axe-core/axe.min.js');

/** Runs axe on the page as it is now; returns the violations as readable lines. */
async function audit(page, what) {
  if (!(await page.evaluate(() => typeof window.axe === 'object'))) await page.addScriptTag({ path: AXE });
  const violations = await page.evaluate(async () => {
    const r = await window.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map((n) => n.target.join(' ') + (n.any[0] && n.any[0].data && n.any[0].data.fgColor ? ` (${n.any[0].data.fgColor} on ${n.any[0].data.bgColor}, ${n.any[0].data.contrastRatio}:1, ${n.any[0].data.fontSize} ${n.any[0].data.fontWeight})` : '')) }));
  });
  return violations.map((v) => `${what}: ${v.id} (${v.impact}) ${v.help} at ${v.nodes.join(', ')}`);
}

test('the sign-in page, the inbox, the widget, the dashboard, CRM and KB pages pass the WCAG 2.1 AA rules', { skip }, async () => {
  const { hub, chrome } = await env.get();
  const found = [];
  // Reduced motion: the audit must not catch an offer in the middle of its fade-in.
  const ctx = await chrome.newContext({ reducedMotion: 'reduce' });
  const page = await ctx.newPage();
  const errors = watchErrors(page);
  await page.goto(`${hub.url}/`);
  await page.waitForSelector('#login-username');
  found.push(...(await audit(page, 'sign-in')));

  await loginInbox(page, hub.url, DEMO.alice);
  await setPresenceUi(page, 'available');
  const visitor = await chatVisitor(hub.url, { name: 'Ines Audit', email: 'ines.audit@example.com', language: 'en' });
  await visitor.say('Hi, I was charged twice for my invoice, please refund one payment.');
  await page.waitForSelector('.offer', { timeout: 15000 });
  found.push(...(await audit(page, 'inbox with an offer')));
  await page.click('.offer .offer-accept');
  await page.waitForFunction(() => !document.querySelector('#reply-input').disabled, null, { timeout: 10000 });
  found.push(...(await audit(page, 'inbox with a conversation')));

  const widget = await ctx.newPage();
  await widget.goto(`${hub.url}/chat-demo.html`);
  await widget.click('#sb-chat-launcher');
  await widget.waitForSelector('#sb-chat-panel', { state: 'visible' });
  await widget.waitForSelector('#sb-chat-prechat:visible, #sb-chat-form:visible', { timeout: 10000 });
  found.push(...(await audit(widget, 'widget, pre-chat form')));
  await widget.fill('#sb-chat-name', 'Olga Audit');
  await widget.fill('#sb-chat-email', 'olga.audit@example.com');
  await widget.click('#sb-chat-start');
  await widget.fill('#sb-chat-input', 'Do you ship to Norway?');
  await widget.click('#sb-chat-send');
  await widget.waitForSelector('.sb-msg-visitor');
  found.push(...(await audit(widget, 'widget, chatting')));

  const sam = await chrome.newContext({ reducedMotion: 'reduce' });
  const dash = await sam.newPage();
  await dash.goto(`${hub.url}/dashboard.html`);
  await dash.fill('#login-username', DEMO.sam[0]);
  await dash.fill('#login-password', DEMO.sam[1]);
  await dash.click('#login-submit');
  await dash.waitForSelector('#queue-table tbody tr[data-queue="billing"]');
  await dash.waitForFunction(() => document.body.dataset.stream === 'live');
  found.push(...(await audit(dash, 'dashboard')));
  for (const path of ['/crm.html', '/kb.html']) {
    await dash.goto(`${hub.url}${path}`);
    await dash.waitForLoadState('networkidle');
    found.push(...(await audit(dash, path)));
  }

  assert.deepEqual(found, [], found.join('\n'));
  assert.deepEqual(errors, []);
  await sam.close();
  await ctx.close();
});

/** Presses Tab (or Shift+Tab) until the focused element matches `selector`; fails after `max`. */
async function tabTo(page, selector, { back = false, max = 80 } = {}) {
  for (let n = 0; n < max; n++) {
    if (await page.evaluate((s) => !!document.activeElement && document.activeElement.matches(s), selector)) return;
    await page.keyboard.press(back ? 'Shift+Tab' : 'Tab');
  }
  const at = await page.evaluate(() => document.activeElement && document.activeElement.outerHTML.slice(0, 120));
  assert.fail(`${selector} is not reachable with the keyboard (focus stayed around ${at})`);
}

test('an agent works a chat with the keyboard alone: sign in, presence, accept, reply, close', { skip }, async () => {
  const { hub, chrome } = await env.get();
  const sup = await apiClient(hub.url, DEMO.sam);
  // Start from a clean slate: the audit above left alice a conversation and offered her the
  // widget's chat; with her chat slots taken the offer below would wait (this was a flake).
  const alice = await apiClient(hub.url, DEMO.alice);
  for (const i of (await sup.get('/api/v1/interactions?status=queued,offered,active,wrap_up&limit=200')).items) {
    if (i.status === 'queued' || i.status === 'offered') await sup.post(`/api/v1/interactions/${i.id}/abandon`);
    else if (i.agent_id === alice.agentId) await alice.post(`/api/v1/interactions/${i.id}/close`, { disposition: 'other' });
  }
  const ctx = await chrome.newContext({ reducedMotion: 'reduce' });
  const page = await ctx.newPage();
  const errors = watchErrors(page);
  await page.goto(`${hub.url}/`);
  await page.waitForSelector('#login-username');
  await tabTo(page, '#login-username');
  await page.keyboard.type(DEMO.alice[0]);
  await page.keyboard.press('Tab');
  await page.keyboard.type(DEMO.alice[1]);
  await page.keyboard.press('Enter');
  await page.waitForSelector('#app:not([hidden])');
  await page.waitForFunction(() => document.body.dataset.stream === 'live');

  // Presence: the select, changed with the keyboard.
  await tabTo(page, '#presence');
  await page.keyboard.type('available');
  await page.waitForFunction(() => document.querySelector('#presence').dataset.presence === 'available', null, { timeout: 5000 });

  const visitor = await chatVisitor(hub.url, { name: 'Keyla Board', email: 'keyla@example.com', language: 'en' });
  await visitor.say('My invoice shows a charge I do not recognise.');
  const iid = (await eventually(async () => (await sup.get('/api/v1/interactions?channel=chat&limit=200')).items
    .find((i) => i.conversation_key === visitor.session.conversation_id), 15000, 'the interaction')).id;
  const accept = `.offer[data-interaction-id="${iid}"] .offer-accept`;
  try {
    await page.waitForSelector(accept, { timeout: 15000 });
  } catch (e) {
    // Say where the offer went (a CI run once timed out here and passed on every rerun).
    const i = await sup.get(`/api/v1/interactions/${iid}`);
    const events = (await sup.get(`/api/v1/interactions/${iid}/events`)).map((ev) => `${ev.kind} ${JSON.stringify(ev.data)}`);
    const me = await alice.get('/api/v1/auth/me');
    const offers = await page.evaluate(() => [...document.querySelectorAll('.offer')].map((o) => o.dataset.interactionId));
    throw new Error(`${e.message}\ninteraction: ${i.status} agent ${i.agent_id}\nevents: ${events.join('; ')}\n` +
      `alice: ${JSON.stringify(me.agent || me)}\noffers on the page: ${offers.join(', ')}\nstream: ${await page.evaluate(() => document.body.dataset.stream)}`);
  }
  await tabTo(page, accept);
  await page.keyboard.press('Enter');
  // Accepting puts the focus in the reply box.
  await page.waitForFunction(() => document.activeElement && document.activeElement.id === 'reply-input', null, { timeout: 10000 });
  await page.keyboard.type('Let me look at that charge for you.');
  await page.keyboard.press('Control+Enter');
  await eventually(async () => (await visitor.transcript()).some((m) => m.from === 'agent' && /look at that charge/.test(m.body)),
    10000, 'the reply reaching the visitor');

  // Close with a disposition: the dialog, the radio group and its submit, by keyboard.
  await tabTo(page, '#btn-close');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#close-dialog[open]');
  await tabTo(page, '#close-form input[name="disposition"]:checked');
  await page.keyboard.press('ArrowDown'); // inquiry → complaint
  await tabTo(page, '#close-summary');
  await page.keyboard.type('Unknown charge explained.');
  await tabTo(page, '#close-submit');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelector('#conv-status').textContent === 'Closed', null, { timeout: 10000 });
  const mine = await sup.get(`/api/v1/interactions/${iid}`);
  assert.equal(mine.status, 'closed');
  assert.equal(mine.disposition, 'complaint');
  assert.equal(mine.summary, 'Unknown charge explained.');
  await page.screenshot({ path: screenshotPath('inbox-keyboard-closed.png') });
  assert.deepEqual(errors, []);
  await ctx.close();
});

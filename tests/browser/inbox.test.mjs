// The agents' inbox against real chat contacts (the chat channel's visitor HTTP endpoints):
// skill routing (an agent without the skill never sees the contact), offers with a
// countdown, accept, history, reply reaching the visitor, internal notes staying internal,
// canned responses, transfer between two agents side by side, close with a disposition,
// and a dropped event stream that resumes without loss or duplicates.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  skipReason, sharedEnv, loginInbox, setPresenceUi, apiClient, chatVisitor, eventually, watchErrors, screenshotPath, DEMO, sleep,
  WS_CUTTER, cutNetwork, restoreNetwork, openSockets,
} from './helpers.mjs';

const skip = skipReason() || false;
if (skip) console.log(`# SKIP browser tests: ${skip}`);
const env = sharedEnv();
after(() => env.teardown());

/** Records every interaction id that ever appears in the page's offers or lists. */
const RECORD_SEEN = () => {
  window.__seen = new Set();
  const scan = () => {
    for (const el of document.querySelectorAll('[data-interaction-id]')) window.__seen.add(el.dataset.interactionId);
  };
  new MutationObserver(scan).observe(document, { subtree: true, childList: true, attributes: true });
};

async function agentPage(chrome, hub, who) {
  const ctx = await chrome.newContext();
  await ctx.addInitScript(RECORD_SEEN);
  await ctx.addInitScript(WS_CUTTER);
  const page = await ctx.newPage();
  const errors = watchErrors(page);
  await loginInbox(page, hub.url, who);
  await setPresenceUi(page, 'available');
  return { ctx, page, errors };
}

const seen = (page) => page.evaluate(() => [...window.__seen]);
const offerSel = (iid) => `.offer[data-interaction-id="${iid}"]`;
const convSel = (iid) => `.conv-item[data-interaction-id="${iid}"]`;

async function interactionOf(api, conversationId) {
  return eventually(async () => {
    const r = await api.get('/api/v1/interactions?channel=chat&limit=200');
    return r.items.find((i) => i.conversation_key === conversationId);
  }, 15000, `the interaction of chat ${conversationId}`);
}

test('routing by skill, offer countdown, accept, reply, note, canned response, close', { skip }, async () => {
  const { hub, chrome } = await env.get();
  const sup = await apiClient(hub.url, DEMO.sam);
  const alice = await agentPage(chrome, hub, DEMO.alice); // billing=4
  const bruno = await agentPage(chrome, hub, DEMO.bruno); // no billing skill

  const visitor = await chatVisitor(hub.url, { name: 'Maria Lopez', email: 'maria@example.com', language: 'en' });
  await visitor.say('Hi, I was charged twice for my invoice, please refund one payment.');
  const i = await interactionOf(sup, visitor.session.conversation_id);
  const iid = i.id;

  // Alice gets the offer, with a running countdown.
  await alice.page.waitForSelector(offerSel(iid), { timeout: 15000 });
  const offer = alice.page.locator(offerSel(iid));
  assert.equal(await offer.getAttribute('data-channel'), 'chat');
  const secs = async () => Number((await offer.locator('.offer-countdown').textContent()).replace('s', ''));
  const s1 = await secs();
  assert.ok(s1 > 0 && s1 <= 20, `countdown starts within the queue's accept timeout, got ${s1}`);
  await sleep(1300);
  const s2 = await secs();
  assert.ok(s2 < s1, `countdown runs (${s1} → ${s2})`);
  assert.match(await alice.page.textContent('#announcer'), /offer/i, 'the offer is announced to screen readers');
  await alice.page.screenshot({ path: screenshotPath('inbox-offer.png') });

  await offer.locator('.offer-accept').click();
  await alice.page.waitForSelector('#conv-view:not([hidden])');
  await alice.page.waitForSelector('#messages .msg-in');
  assert.match(await alice.page.textContent('#messages .msg-in .msg-body'), /charged twice/);
  assert.equal(await alice.page.evaluate(() => document.activeElement.id), 'reply-input', 'focus moves to the reply box');
  assert.equal(await alice.page.textContent('#conv-status'), 'Active');
  await alice.page.waitForSelector(`${convSel(iid)}[data-status="active"]`);

  // Canned response, then the reply reaches the visitor.
  await alice.page.selectOption('#canned-select', { label: 'Greeting' });
  assert.match(await alice.page.inputValue('#reply-input'), /Thanks for contacting us/);
  await alice.page.fill('#reply-input', 'Hello Maria, I can see the double charge and will refund it now.');
  await alice.page.click('#reply-send');
  await alice.page.waitForSelector('#messages .msg-out');
  assert.equal(await alice.page.inputValue('#reply-input'), '', 'the reply box is cleared after sending');
  await eventually(async () => (await visitor.transcript()).some((m) => m.from === 'agent' && /double charge/.test(m.body)), 15000, 'the reply in the visitor transcript');

  // An internal note is shown as a note and never reaches the visitor.
  await alice.page.check('#mode-note');
  await alice.page.fill('#reply-input', 'Refund ticket R-77 opened in billing system.');
  await alice.page.click('#reply-send');
  await alice.page.waitForSelector('#messages .msg-note');
  assert.match(await alice.page.textContent('#messages .msg-note'), /R-77/);
  await alice.page.check('#mode-reply');
  await alice.page.fill('#reply-input', 'Done: the refund is on its way.');
  await alice.page.keyboard.press('Control+Enter');
  await eventually(async () => (await visitor.transcript()).some((m) => /refund is on its way/.test(m.body)), 15000, 'the second reply');
  const transcript = await visitor.transcript();
  assert.ok(!transcript.some((m) => /R-77/.test(m.body)), 'the internal note is not in the visitor transcript');

  // A new visitor message arrives live, exactly once.
  await visitor.say('Thank you so much!');
  await alice.page.waitForFunction(() => [...document.querySelectorAll('#messages .msg-in')].some((m) => /Thank you so much/.test(m.textContent)));
  const ids = await alice.page.$$eval('#messages .msg', (els) => els.map((e) => e.dataset.messageId));
  assert.equal(new Set(ids).size, ids.length, 'no message is shown twice');
  assert.equal(ids.length, (await sup.get(`/api/v1/interactions/${iid}/messages`)).length);

  // The agent's read receipt reached the hub (chat agent-signal).
  await eventually(async () => (await sup.get(`/api/v1/interactions/${iid}/events`)).some((e) => e.kind === 'read' && e.data.by === 'agent'),
    10000, 'the agent read receipt');
  await alice.page.screenshot({ path: screenshotPath('inbox-conversation.png') });

  // Close with a disposition.
  await alice.page.click('#btn-close');
  await alice.page.check('#close-form input[value="complaint"]');
  await alice.page.fill('#close-summary', 'Double charge refunded.');
  await alice.page.click('#close-submit');
  await alice.page.waitForFunction(() => document.querySelector('#conv-status').textContent === 'Closed');
  const closed = await sup.get(`/api/v1/interactions/${iid}`);
  assert.equal(closed.status, 'closed');
  assert.equal(closed.disposition, 'complaint');
  assert.equal(closed.summary, 'Double charge refunded.');
  assert.equal(await alice.page.isDisabled('#reply-input'), true, 'a closed conversation is read-only');

  // Bruno (no billing skill) never saw it, neither in the page nor through the API.
  assert.ok((await seen(alice.page)).includes(iid), 'the recorder works (alice saw it)');
  assert.ok(!(await seen(bruno.page)).includes(iid), 'bruno never saw the billing chat');
  await assert.rejects(bruno.page.evaluate((id) => fetch(`/api/v1/interactions/${id}`).then((r) => { if (!r.ok) throw new Error(String(r.status)); }), iid), /404/);

  assert.deepEqual(alice.errors, []);
  assert.deepEqual(bruno.errors, []);
  await alice.ctx.close();
  await bruno.ctx.close();
});

test('two agents side by side: Spanish chat goes to Bruno, transfer to Alice, both views agree', { skip }, async () => {
  const { hub, chrome } = await env.get();
  const sup = await apiClient(hub.url, DEMO.sam);
  const alice = await agentPage(chrome, hub, DEMO.alice); // no Spanish
  const bruno = await agentPage(chrome, hub, DEMO.bruno); // language:es=5

  const visitor = await chatVisitor(hub.url, { name: 'José Pérez', email: 'jose@example.com', language: 'es' });
  await visitor.say('Hola, necesito ayuda con mi cuenta');
  const i = await interactionOf(sup, visitor.session.conversation_id);
  const iid = i.id;

  await bruno.page.waitForSelector(offerSel(iid), { timeout: 15000 });
  // Declining is possible; here Bruno accepts.
  await bruno.page.click(`${offerSel(iid)} .offer-accept`);
  await bruno.page.waitForSelector('#messages .msg-in');
  assert.ok(!(await seen(alice.page)).includes(iid), 'alice (no Spanish) is not offered the Spanish chat');

  await bruno.page.fill('#reply-input', '¡Hola José! Te paso con una compañera.');
  await bruno.page.click('#reply-send');
  await bruno.page.waitForSelector('#messages .msg-out');

  // Transfer to Alice through the dialog (keyboard-usable: it is a modal <dialog>).
  await bruno.page.click('#btn-transfer');
  await bruno.page.waitForSelector('#transfer-dialog[open]');
  const aliceAgent = (await sup.get('/api/v1/agents')).find((a) => a.name === 'Alice');
  await bruno.page.selectOption('#transfer-agent', aliceAgent.id);
  await bruno.page.click('#transfer-submit');
  await bruno.page.waitForSelector('#transfer-dialog', { state: 'hidden' });

  // Alice is offered it and, after accepting, sees the whole history.
  await alice.page.waitForSelector(offerSel(iid), { timeout: 10000 });
  await alice.page.click(`${offerSel(iid)} .offer-accept`);
  await alice.page.waitForFunction(() => document.querySelectorAll('#messages .msg').length >= 2);
  assert.match(await alice.page.textContent('#messages'), /necesito ayuda/);
  assert.match(await alice.page.textContent('#messages'), /Te paso con una compañera/);

  // Bruno's list no longer has it open; Alice's does.
  await bruno.page.waitForFunction((sel) => !document.querySelector(`#conv-list ${sel}`), convSel(iid));
  await alice.page.waitForSelector(`#conv-list ${convSel(iid)}`);
  const now = await sup.get(`/api/v1/interactions/${iid}`);
  assert.equal(now.status, 'active');
  assert.equal(now.agent_id, aliceAgent.id);

  // Wrap-up, then close as an inquiry.
  await alice.page.click('#btn-wrapup');
  await alice.page.waitForFunction(() => document.querySelector('#conv-status').textContent === 'Wrap-up');
  await alice.page.click('#btn-close');
  await alice.page.check('#close-form input[value="inquiry"]');
  await alice.page.click('#close-submit');
  await alice.page.waitForFunction(() => document.querySelector('#conv-status').textContent === 'Closed');
  assert.equal((await sup.get(`/api/v1/interactions/${iid}`)).disposition, 'inquiry');
  assert.deepEqual(alice.errors, []);
  assert.deepEqual(bruno.errors, []);
  await alice.ctx.close();
  await bruno.ctx.close();
});

test('a dropped event stream resumes without losing or duplicating messages', { skip }, async () => {
  const { hub, chrome } = await env.get();
  const sup = await apiClient(hub.url, DEMO.sam);
  const alice = await agentPage(chrome, hub, DEMO.alice);
  const { page, ctx } = alice;

  const visitor = await chatVisitor(hub.url, { name: 'Ana Weber', email: 'ana@example.com', language: 'en' });
  await visitor.say('My payment failed, can you check my bill?');
  const i = await interactionOf(sup, visitor.session.conversation_id);
  await page.waitForSelector(offerSel(i.id), { timeout: 15000 });
  await page.click(`${offerSel(i.id)} .offer-accept`);
  await page.waitForSelector('#messages .msg-in');

  // Drop the connection: the browser goes offline and the socket is cut.
  await cutNetwork(ctx, page);
  await page.waitForFunction(() => document.body.dataset.stream !== 'live');
  await sleep(1500); // reconnect attempts fail while offline
  assert.notEqual(await page.evaluate(() => document.body.dataset.stream), 'live', 'no connection while offline');
  assert.equal(await openSockets(page), 0);

  // Meanwhile the visitor writes three messages (one resent with the same id: stored once).
  await visitor.say('first while you were away', 'gap-1');
  await visitor.say('second while you were away', 'gap-2');
  await visitor.say('second while you were away', 'gap-2');
  await visitor.say('third while you were away', 'gap-3');

  // A reply attempted while offline fails visibly and keeps the draft.
  await page.fill('#reply-input', 'Checking your bill now.');
  await page.click('#reply-send');
  await page.waitForSelector('.toast-error');
  assert.equal(await page.inputValue('#reply-input'), 'Checking your bill now.');

  // Back online: the stream reconnects and the missed messages appear exactly once.
  await restoreNetwork(ctx, page);
  await page.waitForFunction(() => document.body.dataset.stream === 'live', null, { timeout: 20000 });
  await page.waitForFunction(() => document.querySelectorAll('#messages .msg-in').length === 4, null, { timeout: 10000 });
  const texts = await page.$$eval('#messages .msg-in .msg-body', (els) => els.map((e) => e.textContent));
  assert.deepEqual(texts.slice(1), ['first while you were away', 'second while you were away', 'third while you were away']);

  // The retried reply is delivered once.
  await page.click('#reply-send');
  await page.waitForSelector('#messages .msg-out');
  await eventually(async () => (await visitor.transcript()).some((m) => m.body === 'Checking your bill now.'), 15000, 'the reply');
  await sleep(500);
  const t = await visitor.transcript();
  assert.equal(t.filter((m) => m.body === 'Checking your bill now.').length, 1);
  assert.equal(t.filter((m) => m.body === 'second while you were away').length, 1);

  // Live updates work again after the reconnect.
  await visitor.say('and one after the reconnect');
  await page.waitForFunction(() => document.querySelectorAll('#messages .msg-in').length === 5, null, { timeout: 10000 });
  const ids = await page.$$eval('#messages .msg', (els) => els.map((e) => e.dataset.messageId));
  assert.equal(new Set(ids).size, ids.length, 'no duplicates');
  assert.equal(ids.length, (await sup.get(`/api/v1/interactions/${i.id}/messages`)).length, 'nothing missing');
  await ctx.close();
});

test('knowledge-base suggestions insert a link or an excerpt; hostile text stays text', { skip }, async () => {
  const { hub, chrome } = await env.get();
  const sup = await apiClient(hub.url, DEMO.sam);
  // Real articles through the real KB (the embedded PostgreSQL search backend), one of them
  // with a hostile title.
  const ken = await apiClient(hub.url, DEMO.ken);
  const refunds = await ken.post('/api/v1/kb/articles', {
    title: 'Refunds <b>and</b> chargebacks', body: 'Refunds reach your card in 3-5 business days after the invoice is credited.',
    category: 'billing', tags: ['refund'], status: 'published', public: true,
  });
  const hostile = await ken.post('/api/v1/kb/articles', {
    title: '<img src=x onerror="window.__pwned=1"> refund invoice', body: 'Refund invoice questions <script>window.__pwned=2</script>.',
    category: 'billing', status: 'published',
  });
  await ken.post('/api/v1/kb/articles', { title: 'Refund draft', body: 'refund invoice draft', status: 'draft' });
  // Indexing is asynchronous (outbox worker): wait until search sees both.
  for (let n = 0; ; n++) {
    const r = await sup.get('/api/v1/kb/search?q=refund%20invoice');
    const ids = (r.items || r.hits || []).map((h) => h.id);
    if (ids.includes(refunds.id) && ids.includes(hostile.id)) break;
    if (n > 100) throw new Error(`articles not searchable: ${JSON.stringify(r)}`);
    await new Promise((res) => setTimeout(res, 100));
  }
  const alice = await agentPage(chrome, hub, DEMO.alice);
  const { page } = alice;
  let asked = null;
  page.on('request', (req) => {
    if (req.url().includes('/api/v1/kb/suggest?')) asked = new URL(req.url()).searchParams.get('interaction_id');
  });
  const visitor = await chatVisitor(hub.url, { name: 'Lea Kurz', email: 'lea@example.com', language: 'en' });
  await visitor.say('When will my refund for the invoice arrive?');
  const i = await interactionOf(sup, visitor.session.conversation_id);
  await page.waitForSelector(offerSel(i.id), { timeout: 15000 });
  assert.match(await page.textContent(`${offerSel(i.id)} .offer-preview`), /When will my refund/, 'the offer previews the message');
  await page.click(`${offerSel(i.id)} .offer-accept`);
  await page.waitForFunction(() => document.querySelectorAll('#kb-suggestions .kb-item').length >= 2, null, { timeout: 15000 });
  assert.equal(asked, i.id);
  const titles = await page.$$eval('#kb-suggestions .kb-title', (els) => els.map((e) => e.textContent));
  assert.ok(titles.includes('Refunds <b>and</b> chargebacks'), JSON.stringify(titles));
  assert.ok(titles.includes('<img src=x onerror="window.__pwned=1"> refund invoice'), JSON.stringify(titles));
  assert.ok(!titles.includes('Refund draft'), 'drafts are never suggested');
  assert.ok(titles.length <= 3, 'top three');
  assert.equal(await page.$('#kb-suggestions img, #kb-suggestions b, #kb-suggestions script'), null, 'titles are not parsed as HTML');
  assert.equal(await page.$('#kb-suggestions a[href^="javascript:"]'), null, 'no javascript: links');

  const item = page.locator('#kb-suggestions .kb-item', { hasText: 'Refunds <b>and</b> chargebacks' });
  await item.locator('.kb-insert-excerpt').click();
  assert.equal(await page.inputValue('#reply-input'), 'Refunds reach your card in 3-5 business days after the invoice is credited.');
  await item.locator('.kb-insert-link').click();
  const v = await page.inputValue('#reply-input');
  assert.ok(v.endsWith(`Refunds <b>and</b> chargebacks: ${hub.url}/portal.html#/articles/${refunds.id}`), v);
  assert.equal(await page.evaluate(() => window.__pwned), undefined);

  // The customer panel shows the CRM profile (or degrades gracefully when the CRM is absent).
  await page.waitForFunction(() => document.querySelector('#customer-panel .cust-name')?.textContent.length > 0);
  assert.equal(await page.textContent('#customer-panel .cust-name'), 'Lea Kurz');
  await page.screenshot({ path: screenshotPath('inbox-kb.png') });
  assert.deepEqual(alice.errors, []);
  await alice.ctx.close();
});

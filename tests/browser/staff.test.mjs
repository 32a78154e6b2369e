// Staff pages without a customer: sign-in (and its errors), presence, the live supervisor
// dashboard, the admin forms (CSRF on every write), escaping of hostile text.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  skipReason, sharedEnv, loginInbox, setPresenceUi, apiClient, chatVisitor, eventually, watchErrors, screenshotPath, DEMO,
} from './helpers.mjs';

const skip = skipReason() || false;
if (skip) console.log(`# SKIP browser tests: ${skip}`);

const env = sharedEnv({ chat: false });
after(() => env.teardown());

test('sign-in rejects a wrong password with a readable message, then signs in', { skip }, async () => {
  const { hub, chrome } = await env.get();
  const ctx = await chrome.newContext();
  const page = await ctx.newPage();
  const errors = watchErrors(page);
  await page.goto(`${hub.url}/`);
  await page.waitForSelector('#login-view:not([hidden])');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'login-username', 'focus starts in the username field');
  await page.fill('#login-username', 'alice');
  await page.fill('#login-password', 'not-her-password');
  await page.click('#login-submit');
  await page.waitForSelector('#login-error:not([hidden])');
  assert.match(await page.textContent('#login-error'), /wrong username or password/i);
  assert.equal(await page.isHidden('#app'), true);

  await page.fill('#login-password', DEMO.alice[1]);
  await page.click('#login-submit');
  await page.waitForSelector('#app:not([hidden])');
  await page.waitForFunction(() => document.body.dataset.stream === 'live');
  assert.equal(await page.textContent('#me-name'), 'Alice');
  // Agents do not see supervisor/admin navigation.
  assert.equal(await page.isHidden('a[href="/dashboard.html"]'), true);
  assert.equal(await page.isHidden('a[href="/admin.html"]'), true);
  // A reload keeps the session (cookie) and lands in the inbox, not the login form.
  await page.reload();
  await page.waitForSelector('#app:not([hidden])');
  assert.deepEqual(errors, []);
  await ctx.close();
});

test('presence changes reach the server and the live dashboard', { skip }, async () => {
  const { hub, chrome } = await env.get();
  const agentCtx = await chrome.newContext();
  const supCtx = await chrome.newContext();
  const agent = await agentCtx.newPage();
  const sup = await supCtx.newPage();
  const errors = [...watchErrors(agent)];
  const supErrors = watchErrors(sup);
  const api = await apiClient(hub.url, DEMO.sam);

  await loginInbox(agent, hub.url, DEMO.bruno);
  const brunoId = await agent.evaluate(() => window.__sb.state.me.agent_id);
  assert.ok(brunoId, 'bruno has an agent record');

  await sup.goto(`${hub.url}/dashboard.html`);
  await sup.fill('#login-username', DEMO.sam[0]);
  await sup.fill('#login-password', DEMO.sam[1]);
  await sup.click('#login-submit');
  await sup.waitForSelector('#queue-table tbody tr[data-queue="billing"]');
  await sup.waitForFunction(() => document.body.dataset.stream === 'live');
  // From here on the dashboard reads no whole list: presence comes as wallboard deltas,
  // a changed agent or interaction is fetched alone.
  const listReads = [];
  sup.on('request', (r) => {
    const u = new URL(r.url());
    if (/^\/api\/v1\/(queues(\/stats)?|agents|interactions)$/.test(u.pathname)) listReads.push(u.pathname + u.search);
  });
  const brunoPresence = () => sup.textContent('tr[data-agent="Bruno"] .agent-presence');
  assert.equal(await brunoPresence(), 'offline');

  await setPresenceUi(agent, 'available');
  await eventually(async () => (await api.get(`/api/v1/agents/${brunoId}`)).presence === 'available', 5000, 'presence on the server');
  // The dashboard updates from the pushed deltas.
  await sup.waitForFunction(() => document.querySelector('tr[data-agent="Bruno"] .agent-presence')?.textContent === 'available', null, { timeout: 3000 });

  await setPresenceUi(agent, 'away');
  await sup.waitForFunction(() => document.querySelector('tr[data-agent="Bruno"] .agent-presence')?.textContent === 'away', null, { timeout: 3000 });

  // A supervisor changes it from the server side: the agent's inbox follows.
  await api.put(`/api/v1/agents/${brunoId}/presence`, { presence: 'available' });
  await agent.waitForFunction(() => document.querySelector('#presence').dataset.presence === 'available', null, { timeout: 5000 });

  // A visitor starts a chat: it shows in the waiting list and the queue's figures
  // without any list being read again.
  await api.put(`/api/v1/agents/${brunoId}/presence`, { presence: 'away' });
  const visitor = await chatVisitor(hub.url, { name: 'Dashboard visitor' });
  await visitor.say('Is anybody there?');
  await sup.waitForFunction(() => Number(document.querySelector('#kpi-waiting .kpi-value')?.textContent) >= 1, null, { timeout: 5000 });
  const row = await sup.waitForSelector('#waiting-rows tr[data-interaction-id]', { timeout: 5000 });
  const waitingId = await row.getAttribute('data-interaction-id');
  // The supervisor closes it: the row leaves the list, from the event alone.
  await api.post(`/api/v1/interactions/${waitingId}/abandon`, {});
  await sup.waitForFunction((id) => !document.querySelector(`#waiting-rows tr[data-interaction-id="${id}"]`), waitingId, { timeout: 5000 });
  assert.deepEqual(listReads, [], 'no whole list read after the page loaded');
  await api.put(`/api/v1/agents/${brunoId}/presence`, { presence: 'available' });

  // Three queues with figures.
  const queues = await sup.$$eval('#queue-table tbody tr', (rows) => rows.map((r) => r.dataset.queue));
  assert.deepEqual(queues.sort(), ['billing', 'default', 'soporte']);
  await sup.screenshot({ path: screenshotPath('dashboard.png'), fullPage: true });
  await agent.screenshot({ path: screenshotPath('inbox-empty.png') });
  assert.deepEqual(errors, []);
  assert.deepEqual(supErrors, []);
  await agentCtx.close();
  await supCtx.close();
});

test('admin pages create and edit users, agents and queues; problem details are shown; text is escaped', { skip }, async () => {
  const { hub, chrome } = await env.get();
  const ctx = await chrome.newContext();
  const page = await ctx.newPage();
  const errors = watchErrors(page);
  await page.goto(`${hub.url}/admin.html`);
  await page.fill('#login-username', DEMO.admin[0]);
  await page.fill('#login-password', DEMO.admin[1]);
  await page.click('#login-submit');
  await page.waitForSelector('#user-table tbody tr[data-username="alice"]');

  // Server-side validation error: the problem+json detail is shown.
  await page.fill('#user-username', 'dora');
  await page.fill('#user-password', 'short');
  await page.check('input[name="role"][value="agent"]');
  await page.click('#user-submit');
  await page.waitForSelector('#user-form .form-error:not([hidden])');
  assert.match(await page.textContent('#user-form .form-error'), /8 characters/);

  // Hostile display name: must appear as text, never as markup.
  const hostile = '<img src=x onerror="window.__pwned=1">Dora';
  await page.fill('#user-display', hostile);
  await page.fill('#user-password', 'dora-password-1');
  await page.click('#user-submit');
  await page.waitForSelector('#user-table tbody tr[data-username="dora"]');
  const cell = await page.$('#user-table tbody tr[data-username="dora"] td');
  assert.equal(await cell.textContent(), hostile);
  assert.equal(await cell.$('img'), null, 'no element was created from the display name');
  assert.equal(await page.evaluate(() => window.__pwned), undefined);

  // Edit: make dora a supervisor too (PATCH with CSRF).
  await page.click('#user-table tbody tr[data-username="dora"] button');
  await page.check('input[name="role"][value="supervisor"]');
  await page.click('#user-submit');
  await page.waitForFunction(() => document.querySelector('#user-table tr[data-username="dora"] td:nth-of-type(2)')?.textContent.split(', ').sort().join() === 'agent,supervisor');

  // Agents tab: create an agent for dora with skills.
  await page.click('#tab-agents');
  await page.waitForSelector('#agent-table tbody tr[data-agent="Alice"]');
  await page.fill('#agent-name', 'Dora');
  await page.selectOption('#agent-user', { label: 'dora' });
  await page.fill('#agent-skills', 'language:de=5, billing=2');
  await page.fill('#agent-cap-chat', '4');
  await page.click('#agent-submit');
  await page.waitForSelector('#agent-table tbody tr[data-agent="Dora"]');
  assert.match(await page.textContent('#agent-table tr[data-agent="Dora"]'), /billing=2, language:de=5/);

  // Queues tab: an invalid requirement is refused with the server's reason; a valid one is stored.
  await page.click('#tab-queues');
  await page.waitForSelector('#queue-table tbody tr[data-queue="billing"]');
  await page.fill('#queue-name', 'german');
  await page.fill('#queue-requirement', 'language:de >=');
  await page.click('#queue-submit');
  await page.waitForSelector('#queue-form .form-error:not([hidden])');
  assert.match(await page.textContent('#queue-form .form-error'), /requirement|skill expression/i);
  await page.fill('#queue-requirement', 'language:de >= 3');
  await page.click('#queue-submit');
  await page.waitForSelector('#queue-table tbody tr[data-queue="german"]');

  const api = await apiClient(hub.url, DEMO.admin);
  const q = (await api.get('/api/v1/queues')).find((x) => x.name === 'german');
  assert.equal(q.requirement, 'language:de >= 3');
  const users = (await api.get('/api/v1/users?limit=200')).items;
  const dora = users.find((u) => u.username === 'dora');
  assert.deepEqual([...dora.roles].sort(), ['agent', 'supervisor']);
  await page.screenshot({ path: screenshotPath('admin.png'), fullPage: true });

  // Without the CSRF header, the same write is refused (the page always sends it).
  const cookie = (await ctx.cookies()).find((c) => c.name === 'sb_session');
  const noCsrf = await fetch(`${hub.url}/api/v1/queues`, {
    method: 'POST', headers: { cookie: `sb_session=${cookie.value}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'nocsrf' }),
  });
  assert.equal(noCsrf.status, 403);
  assert.deepEqual(errors, []);
  await ctx.close();
});

test('an agent cannot open the admin page', { skip }, async () => {
  const { hub, chrome } = await env.get();
  const ctx = await chrome.newContext();
  const page = await ctx.newPage();
  await page.goto(`${hub.url}/admin.html`);
  await page.fill('#login-username', DEMO.carla[0]);
  await page.fill('#login-password', DEMO.carla[1]);
  await page.click('#login-submit');
  await page.waitForSelector('main .form-error');
  assert.match(await page.textContent('main .form-error'), /needs one of these roles: admin/);
  assert.equal(await page.$('#user-table'), null);
  await ctx.close();
});

test('admin sets an agent\'s SIP phone password from the agent form; a bad one shows the reason', { skip }, async () => {
  const { hub, chrome } = await env.get();
  const ctx = await chrome.newContext();
  const page = await ctx.newPage();
  const errors = watchErrors(page);
  await page.goto(`${hub.url}/admin.html#agents`);
  await page.fill('#login-username', DEMO.admin[0]);
  await page.fill('#login-password', DEMO.admin[1]);
  await page.click('#login-submit');
  await page.waitForSelector('#agent-table tbody tr[data-agent="Bruno"]');
  // Only an existing agent has a phone password to set.
  assert.equal(await page.isHidden('#agent-sip-password-box'), true, 'no SIP password control on the new-agent form');
  await page.click('#agent-table tbody tr[data-agent="Bruno"] button');
  await page.waitForSelector('#agent-sip-password-box:not([hidden])');
  // Too short: the server's reason is shown and the field gets focus.
  await page.fill('#agent-sip-password', 'short');
  await page.click('#agent-sip-password-set');
  await page.waitForSelector('#agent-form .form-error:not([hidden])');
  assert.match(await page.textContent('#agent-form .form-error'), /8 to 128 characters/);
  assert.equal(await page.evaluate(() => document.activeElement.id), 'agent-sip-password');
  // A good one is stored as the digest HA1 = MD5(user:realm:password) and the field cleared.
  await page.fill('#agent-sip-password', 'bruno-desk-phone-1');
  await page.click('#agent-sip-password-set');
  await page.waitForFunction(() => [...document.querySelectorAll('#toasts .toast')].some((t) => /SIP password set for Bruno/.test(t.textContent)));
  assert.equal(await page.inputValue('#agent-sip-password'), '');
  const pg = new URL(process.env.SWITCHBOARD_TEST_DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/postgres');
  pg.pathname = `/${hub.db}`;
  const row = spawnSync('psql', [pg.toString(), '-Atqc',
    "select c.ha1 from sip_credentials c join agents a on a.id = c.agent_id where a.sip_user = 'bruno'"], { encoding: 'utf8' });
  assert.equal(row.status, 0, row.stderr);
  assert.equal(row.stdout.trim(), createHash('md5').update('bruno:switchboard:bruno-desk-phone-1').digest('hex'));
  // Nothing the page reads returns it.
  const api = await apiClient(hub.url, DEMO.admin);
  const text = JSON.stringify(await api.get('/api/v1/agents'));
  assert.ok(!text.includes('bruno-desk-phone-1') && !text.includes(row.stdout.trim()));
  assert.deepEqual(errors.filter((e) => !/422|Unprocessable/.test(e)), []);
  await ctx.close();
});

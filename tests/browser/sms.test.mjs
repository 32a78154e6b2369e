// The agent answers an SMS in the inbox: the scripted SMSC (tests/sms/smsc.mjs, the npm
// `smpp` package's server) beside `switchboard demo` with an SMPP channel. As the agent
// types, the reply box shows the encoding (GSM-7, UCS-2 once a non-GSM character appears),
// the parts and the characters left, counting GSM extension characters twice; a reply the
// SMSC never answered is shown to the agent as "Delivery unknown" (never resent).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import readline from 'node:readline';
import {
  ROOT, skipReason, startHubWithConfig, launchBrowser, loginInbox, setPresenceUi, apiClient, eventually, watchErrors, waitOffer,
} from './helpers.mjs';

const SMS_DIR = join(ROOT, 'tests', 'sms');
const skip = skipReason() || false;
if (skip) console.log(`# SKIP sms browser test: ${skip}`);

const cleanups = [];
after(async () => { for (const c of cleanups.reverse()) await c(); });

/** Starts the scripted SMSC; resolves with { port, cmd(obj), events, waitFor(pred, ms) }. */
async function startSmsc() {
  if (!existsSync(join(SMS_DIR, 'node_modules', 'smpp'))) {
    throw new Error('run `npm install` in tests/sms (scripts/test.sh does) for the SMPP peer');
  }
  const child = spawn('node', ['smsc.mjs'], { cwd: SMS_DIR, stdio: ['pipe', 'pipe', 'inherit'] });
  const events = [];
  const waiters = [];
  readline.createInterface({ input: child.stdout }).on('line', (l) => {
    let e;
    try { e = JSON.parse(l); } catch { return; }
    events.push(e);
    for (const w of [...waiters]) if (w.pred(e)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(e); }
  });
  const waitFor = (pred, ms = 15000) => {
    const seen = events.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const w = { pred, resolve };
      waiters.push(w);
      setTimeout(() => {
        const k = waiters.indexOf(w);
        if (k >= 0) { waiters.splice(k, 1); reject(new Error(`no SMSC event within ${ms} ms; events: ${JSON.stringify(events)}`)); }
      }, ms);
    });
  };
  const listening = await waitFor((e) => e.event === 'listening', 10000);
  return {
    port: listening.port,
    events,
    waitFor,
    cmd: (c) => child.stdin.write(`${JSON.stringify(c)}\n`),
    stop: () => { child.stdin.end(); child.kill('SIGTERM'); },
  };
}

/** The counter's current figures once they match `want` (the answer is debounced). */
async function counter(page, want) {
  return eventually(async () => {
    const el = page.locator('#sms-counter');
    if (await el.isHidden()) return null;
    const got = {
      encoding: await el.getAttribute('data-encoding'),
      parts: Number(await el.getAttribute('data-parts')),
      remaining: Number(await el.getAttribute('data-remaining')),
      text: await el.textContent(),
    };
    return got.encoding === want.encoding && got.parts === want.parts && got.remaining === want.remaining ? got : null;
  }, 10000, `the SMS counter to show ${JSON.stringify(want)}`);
}

test('SMS reply box counts encoding, parts and characters left; an unanswered submit shows as delivery unknown', { skip, timeout: 180000 }, async () => {
  const smsc = await startSmsc();
  cleanups.push(async () => smsc.stop());
  const hub = await startHubWithConfig(`
[[channels]]
type = "smpp"
name = "sms-main"
host = "127.0.0.1"
port = ${smsc.port}
system_id = "switchboard"
password = "secret"
source_address = "4930123456"
response_timeout_secs = 2
reconnect_min_ms = 100
reconnect_max_ms = 1000
lease_secs = 3
queue = "billing"
`);
  cleanups.push(async () => hub.stop());
  await smsc.waitFor((e) => e.event === 'bound', 30000);

  const chrome = await launchBrowser();
  cleanups.push(async () => chrome.close());
  const ctx = await chrome.newContext();
  const page = await ctx.newPage();
  const errors = watchErrors(page);
  await loginInbox(page, hub.url, ['alice', 'agent-pass-1']);
  await setPresenceUi(page, 'available');
  const api = await apiClient(hub.url, ['alice', 'agent-pass-1']);

  smsc.cmd({ cmd: 'deliver', tag: 'mo', source: '4915177777777', dest: '4930123456', text: 'Hello, my parcel is late', coding: 'gsm' });
  const resp = await smsc.waitFor((e) => e.event === 'deliver_sm_resp' && e.tag === 'mo');
  assert.equal(resp.status, 0);
  const { offer, interaction } = await waitOffer(api, (i) => i.channel === 'sms', 30000);
  assert.equal(interaction.customer_address, '+4915177777777');
  await page.click(`.offer[data-offer-id="${offer.id}"] .offer-accept`);
  await page.click(`.conv-item[data-interaction-id="${interaction.id}"]`);
  await page.waitForSelector('#messages .msg-in .msg-body');

  // Empty draft: one GSM part, 160 left.
  await counter(page, { encoding: 'gsm7', parts: 1, remaining: 160 });
  // Typing GSM text counts down.
  await page.fill('#reply-input', 'Hello');
  const c1 = await counter(page, { encoding: 'gsm7', parts: 1, remaining: 155 });
  assert.match(c1.text, /GSM-7 · 1 part · 155 characters left/);
  // Extension characters (€, [, ]) count double.
  await page.fill('#reply-input', 'Price €5 [x]');
  await counter(page, { encoding: 'gsm7', parts: 1, remaining: 160 - 15 });
  // 161 GSM characters: two parts of 153.
  await page.fill('#reply-input', 'a'.repeat(161));
  await counter(page, { encoding: 'gsm7', parts: 2, remaining: 306 - 161 });
  // One character outside GSM 03.38 makes the whole text UCS-2 (70, then 67 per part).
  await page.fill('#reply-input', 'Hello 你好');
  const c2 = await counter(page, { encoding: 'ucs2', parts: 1, remaining: 70 - 8 });
  assert.match(c2.text, /UCS-2 · 1 part · 62 characters left/);
  await page.fill('#reply-input', `${'ж'.repeat(71)}`);
  await counter(page, { encoding: 'ucs2', parts: 2, remaining: 134 - 71 });
  // Typing key by key updates it too.
  await page.fill('#reply-input', '');
  await page.type('#reply-input', 'Hi {');
  await counter(page, { encoding: 'gsm7', parts: 1, remaining: 160 - 5 });
  // An internal note is not an SMS: no counter.
  await page.check('#mode-note');
  await eventually(async () => page.locator('#sms-counter').isHidden(), 5000, 'the counter hidden for notes');
  await page.check('#mode-reply');
  await counter(page, { encoding: 'gsm7', parts: 1, remaining: 155 });

  // A reply the SMSC accepts shows as sent, then delivered (receipt).
  await page.fill('#reply-input', 'Your parcel arrives tomorrow.');
  await page.click('#reply-send');
  await smsc.waitFor((e) => e.event === 'submit_sm' && e.message === 'Your parcel arrives tomorrow.');
  await page.waitForSelector('#messages .msg-out .sms-delivery[data-status="delivered"]', { timeout: 20000 });

  // The next submit gets no response: `unknown`, shown to the agent, never resent.
  smsc.cmd({ cmd: 'silent', count: 1 });
  await smsc.waitFor((e) => e.event === 'ok' && e.cmd === 'silent');
  await page.fill('#reply-input', 'Sorry for the delay.');
  await page.click('#reply-send');
  await smsc.waitFor((e) => e.event === 'submit_sm' && e.answered === 'silent');
  const tag = page.locator('#messages .msg-out', { hasText: 'Sorry for the delay.' }).locator('.sms-delivery[data-status="unknown"]');
  await tag.waitFor({ timeout: 30000 });
  assert.match(await tag.textContent(), /Delivery unknown.*not resent automatically/);
  const deliveries = await api.get(`/sms/v1/sms-main/interactions/${interaction.id}/deliveries`);
  assert.deepEqual(deliveries.map((d) => d.status), ['delivered', 'unknown']);
  assert.equal(smsc.events.filter((e) => e.event === 'submit_sm' && e.message === 'Sorry for the delay.').length, 1, 'not resent');
  await page.screenshot({ path: join(ROOT, 'artifacts', 'sms-reply-box.png') });
  assert.deepEqual(errors, []);
});

// Reports page, live wallboard and recordings in a real browser: the wallboard's
// "answered today" changes live (pushed delta, no reload) when an agent answers a chat;
// the reports page shows that contact once the rollup worker has it and offers CSV;
// a call recording is listed, plays in the browser and seeks.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import dgram from 'node:dgram';
import {
  skipReason, startHubWithConfig, launchBrowser, apiClient, eventually, watchErrors, screenshotPath, chatVisitor, waitOffer, DEMO,
} from './helpers.mjs';

const skip = skipReason() || false;
if (skip) console.log(`# SKIP browser tests: ${skip}`);
const PG_URL = process.env.SWITCHBOARD_TEST_DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/postgres';
const work = mkdtempSync(join(tmpdir(), 'sb-reports-'));
let hub = null;
let chrome = null;
after(async () => {
  if (chrome) await chrome.close();
  if (hub) await hub.stop();
  rmSync(work, { recursive: true, force: true });
});

async function freeUdpPort() {
  const s = dgram.createSocket('udp4');
  const port = await new Promise((res, rej) => { s.once('error', rej); s.bind(0, '127.0.0.1', () => res(s.address().port)); });
  s.close();
  return port;
}

function psqlDb(db, sql) {
  const u = new URL(PG_URL);
  u.pathname = `/${db}`;
  const r = spawnSync('psql', [u.toString(), '-v', 'ON_ERROR_STOP=1', '-Atqc', sql], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`psql ${sql}: ${r.stderr}`);
  return r.stdout.trim();
}

/** Two seconds of a 440 Hz tone, 8 kHz 16-bit mono PCM WAV. */
function toneWav() {
  const rate = 8000; const n = rate * 2;
  const b = Buffer.alloc(44 + n * 2);
  b.write('RIFF', 0); b.writeUInt32LE(36 + n * 2, 4); b.write('WAVE', 8); b.write('fmt ', 12);
  b.writeUInt32LE(16, 16); b.writeUInt16LE(1, 20); b.writeUInt16LE(1, 22); b.writeUInt32LE(rate, 24);
  b.writeUInt32LE(rate * 2, 28); b.writeUInt16LE(2, 32); b.writeUInt16LE(16, 34); b.write('data', 36); b.writeUInt32LE(n * 2, 40);
  for (let i = 0; i < n; i++) b.writeInt16LE(Math.round(8000 * Math.sin((2 * Math.PI * 440 * i) / rate)), 44 + i * 2);
  return b;
}

async function signIn(page, url, path, [user, pass]) {
  await page.goto(`${url}${path}`);
  await page.waitForSelector('#login-username');
  await page.fill('#login-username', user);
  await page.fill('#login-password', pass);
  await page.click('#login-submit');
}

test('wallboard updates live, reports show the contact, a recording plays and seeks', { skip }, async () => {
  const sipPort = await freeUdpPort();
  hub = await startHubWithConfig(`
[[channels]]
type = "webchat"
name = "webchat"

[[channels]]
type = "sip"
name = "phones"
udp_listen = "127.0.0.1:${sipPort}"
tcp_listen = "127.0.0.1:0"
public_ip = "127.0.0.1"
rtp_port_min = 0
recordings_dir = "${work}"
voicemail_dir = "${work}"
`);
  chrome = await launchBrowser();
  const sam = await apiClient(hub.url, DEMO.sam);
  const alice = await apiClient(hub.url, DEMO.alice);

  // The supervisor's wallboard, before anything happens.
  const ctx = await chrome.newContext();
  const board = await ctx.newPage();
  const errors = watchErrors(board);
  await signIn(board, hub.url, '/wallboard.html', DEMO.sam);
  await board.waitForSelector('#wb-queues article');
  await board.waitForFunction(() => document.body.dataset.stream === 'live');
  const answeredNow = () => board.evaluate(() => Array.from(document.querySelectorAll('#wb-queues article [data-f=answered]'))
    .reduce((n, el) => n + Number(el.textContent), 0));
  const before = await answeredNow();
  const updatesBefore = await board.evaluate(() => Number(document.body.dataset.updates || 0));

  // A chat arrives and Alice answers it.
  await alice.put(`/api/v1/agents/${alice.agentId}/presence`, { presence: 'available' });
  const visitor = await chatVisitor(hub.url, { name: 'Wally Board', email: 'wally@example.com' });
  await visitor.say('Hello, I need help with my order');
  const { offer, interaction } = await waitOffer(alice, null, 20000);
  await alice.post(`/api/v1/offers/${offer.id}/accept`);
  await board.waitForFunction((b) => Array.from(document.querySelectorAll('#wb-queues article [data-f=answered]'))
    .reduce((n, el) => n + Number(el.textContent), 0) === b + 1, before, { timeout: 15000 });
  assert.ok(await board.evaluate(() => Number(document.body.dataset.updates)) > updatesBefore, 'updated by pushed deltas');
  await board.screenshot({ path: screenshotPath('reports-wallboard.png'), fullPage: true });

  // The reports page shows today's answered chat once the worker has rolled it up.
  const rep = await ctx.newPage();
  errors.push(...watchErrors(rep));
  await rep.goto(`${hub.url}/reports.html`);
  const today = new Date().toISOString().slice(0, 10);
  await rep.waitForSelector('#from');
  await rep.fill('#from', today);
  await rep.fill('#to', today);
  await rep.fill('#tz', 'UTC');
  await eventually(async () => {
    await rep.click('#run');
    await rep.waitForSelector('#report tbody tr', { timeout: 5000 });
    const answered = await rep.evaluate(() => {
      const head = Array.from(document.querySelectorAll('#report thead th')).map((th) => th.textContent);
      const col = head.indexOf('answered');
      return Array.from(document.querySelectorAll('#report tbody tr')).reduce((n, tr) => n + Number(tr.children[col].textContent.split(' ')[0]), 0);
    });
    return answered >= 1;
  }, 20000, 'the answered chat in the queue report');
  assert.ok(await rep.isVisible('#chart svg'), 'a chart is drawn');
  const csvHref = await rep.getAttribute('#csv', 'href');
  const csv = await rep.evaluate(async (href) => (await fetch(href)).text(), csvHref);
  assert.match(csv.split('\r\n')[0], /^start,end,queue,.*answered.*offered/);
  // Business hours only (the queue has no calendar: always open, the same rows).
  await rep.check('#business-hours');
  await rep.click('#run');
  await rep.waitForFunction(() => document.querySelector('#csv').href.includes('business_hours=true'), null, { timeout: 10000 });
  await rep.waitForSelector('#report tbody tr', { timeout: 10000 });
  await rep.screenshot({ path: screenshotPath('reports-queues.png'), fullPage: true });

  // A recorded call: listed under Recordings, played with a seek bar.
  writeFileSync(join(work, 'call-1.wav'), toneWav());
  psqlDb(hub.db, `insert into interactions (channel, status, queue_id, agent_id, customer_address, metadata, created_at, answered_at, closed_at, disposition)
    select 'voice', 'closed', (select id from queues order by name limit 1), '${alice.agentId}', '+4930123456',
           jsonb_build_object('recording', '${join(work, 'call-1.wav')}'), now(), now(), now(), 'inquiry'`);
  await rep.click('#tab-recordings');
  await rep.waitForSelector('#recordings tbody tr');
  assert.match(await rep.textContent('#recordings tbody tr'), /\+4930123456/);
  await rep.click('#recordings button.play');
  await rep.waitForFunction(() => { const a = document.querySelector('#recording-audio'); return a && a.readyState >= 1 && a.duration > 1.5; }, null, { timeout: 15000 });
  const seeked = await rep.evaluate(() => new Promise((res) => {
    const a = document.querySelector('#recording-audio');
    a.addEventListener('seeked', () => res(a.currentTime), { once: true });
    a.currentTime = 1.25;
  }));
  assert.ok(Math.abs(seeked - 1.25) < 0.1, `seeked to ${seeked}`);
  assert.equal(await rep.getAttribute('#recording-audio', 'controls'), '', 'the native seek bar is shown');
  assert.deepEqual(errors, []);
  void sam; void interaction;
  await ctx.close();
});

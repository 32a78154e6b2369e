// The inbox's call controls on a real call: a caller (SIPp through the trunk) reaches the
// IVR, presses 1 and is queued; Alice's registered phone (a second SIPp) rings and
// answers; in the inbox Alice holds, resumes and hangs up the call with the buttons, and
// both phones are hung up by the hub.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import dgram from 'node:dgram';
import {
  ROOT, skipReason, startHubWithConfig, launchBrowser, loginInbox, setPresenceUi, apiClient, eventually, watchErrors,
  screenshotPath, DEMO, sleep,
} from './helpers.mjs';

const noSipp = spawnSync('sipp', ['-v'], { encoding: 'utf8' }).error ? 'sipp not on PATH (apt-get install sip-tester)' : null;
const skip = skipReason() || noSipp || false;
if (skip) console.log(`# SKIP voice browser test: ${skip}`);

const work = mkdtempSync(join(tmpdir(), 'sb-voice-browser-'));
let hub = null;
let chrome = null;
const phones = [];
after(async () => {
  for (const p of phones) p.child.kill('SIGKILL');
  if (chrome) await chrome.close();
  if (hub) await hub.stop();
  rmSync(work, { recursive: true, force: true });
});

/** A free UDP port on loopback (`even`: and the next one free too, for RTP + RTCP). */
async function freeUdpPort(even = false) {
  for (;;) {
    const s = dgram.createSocket('udp4');
    const port = await new Promise((res, rej) => { s.once('error', rej); s.bind(0, '127.0.0.1', () => res(s.address().port)); });
    s.close();
    if (!even) return port;
    const p = port & ~1;
    if (p <= 1024) continue;
    const ok = await Promise.all([p, p + 1].map((q) => new Promise((res) => {
      const t = dgram.createSocket('udp4');
      t.once('error', () => res(false));
      t.bind(q, '127.0.0.1', () => t.close(() => res(true)));
    })));
    if (ok.every(Boolean)) return p;
  }
}

/** Runs one SIPp scenario of tests/voice against the hub; `done` resolves with its exit. */
async function sipp(scenario, extra, sipPort, port) {
  const args = [
    '-sf', join(ROOT, 'tests', 'voice', scenario), '-i', '127.0.0.1', '-mi', '127.0.0.1', '-m', '1', '-timeout', '60s',
    '-nostdin', '-trace_err', '-p', String(port || await freeUdpPort()), '-mp', String(await freeUdpPort(true)),
    ...extra, `127.0.0.1:${sipPort}`,
  ];
  const child = spawn('sipp', args, { cwd: work, stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d) => { err += d; });
  const done = new Promise((res) => child.on('exit', (code, sig) => res({ code: code ?? sig, err })));
  const p = { child, done };
  phones.push(p);
  return p;
}

async function finished(p, what) {
  const r = await Promise.race([p.done, new Promise((res) => setTimeout(() => res(null), 30000))]);
  assert.ok(r, `${what}: sipp did not finish`);
  assert.equal(r.code, 0, `${what}: sipp failed: ${r.err}`);
}

function voiceConfig(sipPort) {
  return `
[[channels]]
type = "sip"
name = "phones"
udp_listen = "127.0.0.1:${sipPort}"
tcp_listen = "127.0.0.1:0"
public_ip = "127.0.0.1"
rtp_port_min = 0
ring_timeout_secs = 20
prompts_dir = "${join(ROOT, 'config', 'prompts')}"
recordings_dir = "${work}"
voicemail_dir = "${work}"

[channels.registrar]
realm = "switchboard"
credentials = { type = "inline", agents = [ { user = "alice", password = "alice-pw" } ] }

[[channels.trunks]]
name = "carrier"
allowed_sources = ["127.0.0.1"]
dids = { "100" = "main" }

[channels.ivr_flows.main]
start = "menu"
default_queue = "default"
[channels.ivr_flows.main.nodes.menu]
type = "menu"
prompt = "menu"
choices = { "1" = "queue" }
timeout_ms = 8000
max_attempts = 1
on_failure = "queue"
[channels.ivr_flows.main.nodes.queue]
type = "enqueue"
`;
}

test('an agent holds, resumes and hangs up a live call from the inbox', { skip }, async () => {
  const sipPort = await freeUdpPort();
  hub = await startHubWithConfig(voiceConfig(sipPort));
  chrome = await launchBrowser();
  const sup = await apiClient(hub.url, DEMO.sam);

  // Alice's phone: a UAS that answers and stays up until the hub hangs up, registered
  // with her SIP credentials.
  const phonePort = await freeUdpPort();
  const phone = await sipp('agent_answer_until_bye.xml', ['-s', 'alice'], sipPort, phonePort);
  const reg = await sipp('register.xml', ['-s', 'alice', '-au', 'alice', '-ap', 'alice-pw', '-key', 'agent_port', String(phonePort)], sipPort);
  await finished(reg, 'register');

  const ctx = await chrome.newContext();
  const page = await ctx.newPage();
  const errors = watchErrors(page);
  await loginInbox(page, hub.url, DEMO.alice);
  await setPresenceUi(page, 'available');

  const caller = await sipp('caller.xml', ['-s', '100'], sipPort);
  const call = await eventually(async () => (await sup.get('/api/v1/interactions?channel=voice&limit=20')).items
    .find((i) => i.status === 'active'), 20000, 'the call answered by Alice\'s phone');
  const conv = `.conv-item[data-interaction-id="${call.id}"]`;
  await page.waitForSelector(conv, { timeout: 10000 });
  await page.click(conv);
  await page.waitForSelector('#voice-actions:not([hidden])', { timeout: 10000 });
  await page.screenshot({ path: screenshotPath('inbox-live-call.png') });

  const kinds = async () => (await sup.get(`/api/v1/interactions/${call.id}/events`)).map((e) => e.kind);
  await page.click('#btn-hold');
  await eventually(async () => (await kinds()).includes('call_hold'), 10000, 'call_hold recorded');
  await page.click('#btn-resume');
  await eventually(async () => (await kinds()).includes('call_resumed'), 10000, 'call_resumed recorded');
  // caller.xml listens for the hub's BYE once it has pressed 1 and started talking
  // (about a second after the answer); hang up after that.
  await sleep(1500);
  await page.click('#btn-hangup');
  await finished(caller, 'caller (hung up by the hub)');
  await finished(phone, 'alice\'s phone (hung up by the hub)');
  const ended = await eventually(async () => {
    const i = await sup.get(`/api/v1/interactions/${call.id}`);
    return ['wrap_up', 'closed'].includes(i.status) ? i : null;
  }, 15000, 'the call to end');
  assert.equal(ended.agent_id, (await page.evaluate(() => window.__sb.state.me.agent_id)));
  const order = await kinds();
  assert.ok(order.indexOf('call_hold') < order.indexOf('call_resumed') && order.indexOf('call_resumed') < order.indexOf('call_ended'),
    order.join(', '));
  await page.waitForSelector('#voice-actions[hidden]', { state: 'attached', timeout: 10000 });
  assert.deepEqual(errors, []);
  await ctx.close();
});

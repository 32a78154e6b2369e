// Shared helpers for the browser tests: start a real `switchboard demo` hub on a fresh
// PostgreSQL database and a free port, drive headless Chromium through playwright-core,
// sign in, call the API, and write screenshots to /work/main/artifacts (repo `artifacts/`).

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import net from 'node:net';
import { randomBytes } from 'node:crypto';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const ARTIFACTS = join(ROOT, 'artifacts');
export const CHROMIUM = process.env.SWITCHBOARD_CHROMIUM || '/usr/bin/chromium';
export const BIN = process.env.SWITCHBOARD_BIN || join(ROOT, 'target', 'debug', 'switchboard');
const PG_URL = process.env.SWITCHBOARD_TEST_DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/postgres';

export const DEMO = {
  admin: ['admin', 'admin-demo-pass'],
  sam: ['sam', 'supervisor-pass'],
  alice: ['alice', 'agent-pass-1'],
  bruno: ['bruno', 'agent-pass-2'],
  carla: ['carla', 'agent-pass-3'],
  ken: ['ken', 'kb-editor-pass'],
};

/** Why the browser tests cannot run here, or null. Only a missing Chromium skips. */
export function skipReason() {
  if (!existsSync(CHROMIUM)) return `headless Chromium not found at ${CHROMIUM} (apt-get install chromium)`;
  return null;
}

/** Fails loudly when the hub binary is missing (that is a broken setup, not a skip). */
function requireBin() {
  if (!existsSync(BIN)) {
    throw new Error(`switchboard binary not found at ${BIN}: build it (cargo build --bin switchboard) or set SWITCHBOARD_BIN`);
  }
}

export async function freePort() {
  return new Promise((res, rej) => {
    const s = net.createServer();
    s.unref();
    s.on('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

function dbUrl(name) {
  const u = new URL(PG_URL);
  u.pathname = `/${name}`;
  return u.toString();
}

function psql(sql) {
  const r = spawnSync('psql', [PG_URL, '-v', 'ON_ERROR_STOP=1', '-Atqc', sql], { encoding: 'utf8' });
  if (r.error) throw new Error(`psql failed to start: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`psql ${sql}: ${r.stderr}`);
  return r.stdout;
}

/**
 * Starts `switchboard demo` on a fresh database. Returns { url, db, stop(), output() }.
 * `stop()` kills the hub and drops the database.
 */
export async function startHub({ chat = true } = {}) {
  requireBin();
  const hub = await startHubWith(null);
  if (!chat) return hub;
  // The browser tests need a web chat channel. When the demo configuration has none,
  // restart once with a config file that adds one.
  const probe = await fetch(`${hub.url}/chat/v1/config`).catch(() => null);
  if (probe && probe.status !== 404) return hub;
  await hub.stop();
  return startHubWithConfig('[[channels]]\ntype = "webchat"\nname = "webchat"\n');
}

/** Starts `switchboard demo` with a configuration file holding `toml` (e.g. channels). */
export async function startHubWithConfig(toml) {
  requireBin();
  const dir = mkdtempSync(join(tmpdir(), 'sb-config-'));
  const file = join(dir, 'switchboard.toml');
  writeFileSync(file, toml);
  const hub = await startHubWith(file);
  const stop = hub.stop;
  hub.stop = async () => { await stop(); rmSync(dir, { recursive: true, force: true }); };
  return hub;
}

async function startHubWith(configFile) {
  const db = `sb_browser_${Date.now().toString(36)}_${randomBytes(3).toString('hex')}`;
  psql(`create database ${db}`);
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  let out = '';
  const args = ['demo', '--bind', `127.0.0.1:${port}`, '--database-url', dbUrl(db)];
  if (configFile) args.push('--config', configFile);
  const child = spawn(BIN, args, {
    cwd: ROOT,
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  let exited = null;
  child.on('exit', (code, sig) => { exited = `exit ${code ?? sig}`; });
  const stop = async () => {
    if (!exited) {
      child.kill('SIGTERM');
      await Promise.race([new Promise((r) => child.once('exit', r)), sleep(8000)]);
      if (!exited) child.kill('SIGKILL');
    }
    try {
      psql(`drop database if exists ${db} with (force)`);
    } catch (e) {
      console.error(String(e));
    }
  };
  const deadline = Date.now() + 60_000;
  // Wait for readiness and for the demo seed (the demo prints its banner after seeding).
  while (true) {
    if (exited) {
      await stop();
      throw new Error(`switchboard demo ${exited} before it was ready:\n${out}`);
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`switchboard demo not ready within 60 s:\n${out}`);
    }
    try {
      const r = await fetch(`${url}/readyz`);
      if (r.ok && out.includes('Demo accounts')) break;
    } catch (_) { /* not yet */ }
    await sleep(150);
  }
  return { url, db, stop, output: () => out };
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** Launches Chromium with a fresh profile. Returns { browser, newContext(), close() }. */
export async function launchBrowser() {
  const { chromium } = await import('playwright-core');
  const profile = mkdtempSync(join(tmpdir(), 'sb-chromium-'));
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    // playwright gives every launch a fresh temporary profile (--user-data-dir) of its own.
    env: { ...process.env, TMPDIR: profile },
  });
  const contexts = [];
  return {
    browser,
    async newContext(opts = {}) {
      const c = await browser.newContext({ viewport: { width: 1400, height: 860 }, ...opts });
      contexts.push(c);
      return c;
    },
    async close() {
      await browser.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Collects page errors and console errors so tests can assert there were none. */
export function watchErrors(page) {
  const errors = [];
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/Failed to load resource|WebSocket connection/.test(m.text())) errors.push(`console: ${m.text()}`);
  });
  return errors;
}

/** Opens the inbox and signs in through the form. */
export async function loginInbox(page, url, [user, pass]) {
  await page.goto(`${url}/`);
  await page.fill('#login-username', user);
  await page.fill('#login-password', pass);
  await page.click('#login-submit');
  await page.waitForSelector('#app:not([hidden])');
  await page.waitForFunction(() => document.body.dataset.stream === 'live');
}

export async function setPresenceUi(page, presence) {
  await page.selectOption('#presence', presence);
  await page.waitForFunction((p) => document.querySelector('#presence').dataset.presence === p, presence);
}

export function screenshotPath(name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  return join(ARTIFACTS, name);
}

/** A small API client with its own session (cookie + CSRF), for setup and assertions. */
export async function apiClient(url, [user, pass]) {
  const r = await fetch(`${url}/api/v1/auth/login`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: user, password: pass }),
  });
  if (!r.ok) throw new Error(`login ${user}: ${r.status} ${await r.text()}`);
  const cookie = (r.headers.get('set-cookie') || '').split(';')[0];
  const login = await r.json();
  const call = async (method, path, body) => {
    const res = await fetch(`${url}${path}`, {
      method,
      headers: { cookie, 'x-csrf-token': login.csrf_token, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    const data = text ? JSON.parse(text) : null;
    if (!res.ok) throw Object.assign(new Error(`${method} ${path}: ${res.status} ${text}`), { status: res.status, data });
    return data;
  };
  return {
    login,
    agentId: login.agent_id,
    get: (p) => call('GET', p),
    post: (p, b) => call('POST', p, b || {}),
    put: (p, b) => call('PUT', p, b),
    patch: (p, b) => call('PATCH', p, b),
  };
}

/**
 * Per-file environment: one hub and one browser, created by the first test that asks and
 * shared by the file's tests. Setup errors fail the asking test (a `before` hook failure
 * would only mark the tests skipped). Call `teardown` from `after`.
 */
export function sharedEnv(hubOptions) {
  let p = null;
  return {
    get: () => (p ||= (async () => ({ hub: await startHub(hubOptions), chrome: await launchBrowser() }))()),
    async teardown() {
      if (!p) return;
      let env;
      try { env = await p; } catch (_) { return; }
      await env.chrome.close();
      await env.hub.stop();
    },
  };
}

/** Polls `fn` until it returns a truthy value (or throws the last error) within `ms`. */
export async function eventually(fn, ms = 15000, what = 'condition') {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

/**
 * A chat visitor speaking the widget's HTTP endpoints (adapters/chat: POST /chat/v1/sessions,
 * POST/GET /chat/v1/messages with X-Chat-Token). Used where the test is about the inbox;
 * the widget itself is driven in the browser by widget.test.mjs.
 */
export async function chatVisitor(url, { name, email, language } = {}) {
  const r = await fetch(`${url}/chat/v1/sessions`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name, email, language }),
  });
  if (r.status === 404) throw new Error('POST /chat/v1/sessions is 404: is a [[channels]] type = "webchat" configured for `switchboard demo`?');
  if (!r.ok) throw new Error(`chat session: ${r.status} ${await r.text()}`);
  const session = await r.json();
  let n = 0;
  const headers = { 'content-type': 'application/json', 'x-chat-token': session.token };
  return {
    session,
    async say(body, clientMsgId) {
      const id = clientMsgId || `m-${Date.now()}-${++n}`;
      const res = await fetch(`${url}/chat/v1/messages`, { method: 'POST', headers, body: JSON.stringify({ client_msg_id: id, body }) });
      if (!res.ok) throw new Error(`visitor message: ${res.status} ${await res.text()}`);
      return res.json();
    },
    async transcript() {
      const res = await fetch(`${url}/chat/v1/messages?after_seq=0&limit=200`, { headers });
      if (!res.ok) throw new Error(`transcript: ${res.status} ${await res.text()}`);
      return (await res.json()).items;
    },
  };
}

/** Waits until the agent's API sees an interaction with a pending offer; returns {offer, interaction}. */
export async function waitOffer(api, match, ms = 15000) {
  return eventually(async () => {
    const offers = await api.get(`/api/v1/agents/${api.agentId}/offers`);
    for (const o of offers.filter((x) => x.state === 'pending')) {
      const i = await api.get(`/api/v1/interactions/${o.interaction_id}`);
      if (!match || match(i)) return { offer: o, interaction: i };
    }
    return null;
  }, ms, 'an offer');
}

/**
 * Init script letting a test cut a page's WebSockets: `cutNetwork(ctx, page)` goes offline,
 * closes every open socket and makes new ones fail until `restoreNetwork(ctx, page)`.
 * (Offline emulation alone does not reliably close established sockets.)
 */
export const WS_CUTTER = () => {
  const Native = window.WebSocket;
  window.__sockets = [];
  window.__blockWs = false;
  function Cuttable(url, protocols) {
    const ws = protocols === undefined
      ? new Native(window.__blockWs ? 'ws://127.0.0.1:9/blocked' : url)
      : new Native(window.__blockWs ? 'ws://127.0.0.1:9/blocked' : url, protocols);
    window.__sockets.push(ws);
    return ws;
  }
  Cuttable.prototype = Native.prototype;
  Object.assign(Cuttable, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });
  window.WebSocket = Cuttable;
};

export async function cutNetwork(ctx, page) {
  await ctx.setOffline(true);
  await page.evaluate(() => {
    window.__blockWs = true;
    for (const s of window.__sockets) if (s.readyState <= 1) s.close();
  });
  await page.waitForFunction(() => window.__sockets.every((s) => s.readyState >= 2));
}

export async function restoreNetwork(ctx, page) {
  await page.evaluate(() => { window.__blockWs = false; });
  await ctx.setOffline(false);
  await page.evaluate(() => window.dispatchEvent(new Event('online')));
}

export const openSockets = (page) => page.evaluate(() => window.__sockets.filter((s) => s.readyState === 1).length);

// Marketer pages: a marketer builds a broadcast in the editor (the audience count follows
// the tag filter, the preview counter switches to UCS-2 and two parts), saves and starts
// it, and reads the results page (totals, chart, recipients, CSV link). An agent is
// refused the page.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { skipReason, sharedEnv, apiClient, eventually, watchErrors, screenshotPath, DEMO } from './helpers.mjs';

const skip = skipReason() || false;
if (skip) console.log(`# SKIP browser tests: ${skip}`);

const env = sharedEnv({ chat: false });
after(() => env.teardown());

async function signIn(page, url, user, pass) {
  await page.goto(`${url}/campaigns.html`);
  await page.waitForSelector('#login-form');
  await page.fill('#login-username', user);
  await page.fill('#login-password', pass);
  await page.click('#login-submit');
}

test('a marketer builds, previews, starts and follows a broadcast', { skip }, async () => {
  const { hub, chrome } = await env.get();
  const admin = await apiClient(hub.url, DEMO.admin);
  await admin.post('/api/v1/users', { username: 'mara', password: 'marketer-pass-1', display_name: 'Mara', roles: ['marketer'] });
  for (let i = 1; i <= 3; i++) {
    await admin.post('/api/v1/customers', {
      name: `Spring Fan ${i}`, tags: ['spring'], consent_sms: i !== 3, time_zone: 'Europe/Berlin',
      identities: [{ kind: 'phone', address: `+491511234010${i}` }],
    });
  }
  const ctx = await chrome.newContext();
  const page = await ctx.newPage();
  const errors = watchErrors(page);
  await signIn(page, hub.url, 'mara', 'marketer-pass-1');
  await page.waitForSelector('#new-campaign');
  await page.click('#new-campaign');
  await page.waitForSelector('#f-name');
  await page.fill('#f-name', 'Spring sale');
  // The audience count follows the filter: two customers with the tag and SMS consent.
  await page.fill('#f-tags_any', 'spring');
  await eventually(async () => (await page.textContent('#audience-count')).startsWith('2 customers'), 10000, 'live count of 2');
  // The counter: GSM first, then UCS-2 and two parts once an emoji and length come in.
  await page.fill('#f-text', 'Hi {first_name|there}, spring sale starts now');
  // The preview follows the text (debounced): wait for this text's rendering, not an
  // earlier one of the empty template.
  await eventually(async () => /^Hi Alex, spring sale starts now$/.test(await page.textContent('#preview-text')), 10000, 'rendered preview');
  assert.match(await page.textContent('#counter-encoding'), /GSM/);
  await page.fill('#f-text', `Hi {first_name}, spring sale 🌷 ${'x'.repeat(70)}`);
  await eventually(async () => (await page.textContent('#counter-encoding')).includes('UCS-2'), 10000, 'UCS-2 counter');
  assert.match(await page.textContent('#counter-parts'), /^2 parts$/);
  await page.screenshot({ path: screenshotPath('campaign-editor.png'), fullPage: true });
  await page.uncheck('#f-quiet');
  await page.click('#save');
  await page.waitForSelector('#start');
  await page.click('#start');
  await page.waitForSelector('#campaign-status[data-status="running"]');
  // The campaign worker plans the two recipients; there is no SMS channel in the demo, so
  // they wait in the outbox (`sending`) — the results page shows them.
  await page.click('#results');
  await page.waitForSelector('#totals');
  await eventually(async () => (await page.textContent('[data-total="recipients"] b')) === '2', 15000, 'two recipients');
  await eventually(async () => (await page.$$('#recipient-rows tr[data-status]')).length === 2, 15000, 'recipient rows');
  assert.ok(await page.$('#chart svg.cmp-chart'), 'the delivery chart is drawn');
  assert.match(await page.getAttribute('#csv', 'href'), /recipients\.csv$/);
  await page.screenshot({ path: screenshotPath('campaign-results.png'), fullPage: true });
  // Back to the list: the campaign is there with its status.
  await page.click('text=← Campaigns');
  await page.waitForSelector('#campaign-rows tr[data-id]');
  assert.match(await page.textContent('#campaign-rows'), /Spring sale/);
  assert.deepEqual(errors, []);
  await ctx.close();
});

test('an agent cannot open the campaign pages', { skip }, async () => {
  const { hub, chrome } = await env.get();
  const ctx = await chrome.newContext();
  const page = await ctx.newPage();
  await signIn(page, hub.url, ...DEMO.alice);
  await page.waitForSelector('.form-error[role="alert"]');
  assert.match(await page.textContent('.form-error[role="alert"]'), /needs one of these roles/);
  assert.equal(await page.$('#new-campaign'), null);
  await ctx.close();
});

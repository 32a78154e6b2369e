// The agent reads an HTML email with an attachment in the inbox and replies: a real Dovecot
// (the support mailbox) and a real SMTP server (aiosmtpd writing a Maildir) beside
// `switchboard demo` with an email channel. The HTML is shown in a sandboxed iframe (nothing
// in it runs), the attachment is a download link, and the reply reaches the SMTP server
// with the threading headers.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, writeFileSync, mkdirSync, readdirSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  skipReason, startHubWithConfig, launchBrowser, loginInbox, setPresenceUi, apiClient, eventually, watchErrors, waitOffer, freePort, DEMO,
} from './helpers.mjs';

function peersMissing() {
  if (!existsSync('/usr/sbin/dovecot')) return 'dovecot is not installed (apt-get install dovecot-imapd)';
  if (spawnSync('python3', ['-c', 'import aiosmtpd']).status !== 0) return 'aiosmtpd is not installed (pip install aiosmtpd)';
  return null;
}

const skip = skipReason() || peersMissing() || false;
if (skip) console.log(`# SKIP email browser test: ${skip}`);

const cleanups = [];
after(async () => { for (const c of cleanups.reverse()) await c(); });

async function startPeers() {
  const dir = mkdtempSync(join(tmpdir(), 'sb-mail-browser-'));
  chmodSync(dir, 0o755); // Dovecot's auth process (user dovecot) reads the users file
  for (const s of ['run', 'state', 'mail', 'smtp']) mkdirSync(join(dir, s), { recursive: true });
  const uid = execFileSync('id', ['-u', 'dovecot']).toString().trim();
  const gid = execFileSync('id', ['-g', 'dovecot']).toString().trim();
  writeFileSync(join(dir, 'users'), `support:{PLAIN}secret:${uid}:${gid}::${dir}/mail/support\n`);
  const imapPort = await freePort();
  writeFileSync(join(dir, 'dovecot.conf'), `protocols = imap
listen = 127.0.0.1
base_dir = ${dir}/run
state_dir = ${dir}/state
instance_name = sb-${imapPort}
log_path = ${dir}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
first_valid_uid = 0
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%n ${dir}/users
}
userdb {
  driver = passwd-file
  args = username_format=%n ${dir}/users
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = ${imapPort}
  }
  inet_listener imaps {
    port = 0
  }
}
`);
  execFileSync('chown', ['-R', `${uid}:${gid}`, join(dir, 'mail')]);
  const dovecot = spawn('/usr/sbin/dovecot', ['-F', '-c', join(dir, 'dovecot.conf')], { stdio: 'ignore' });
  const smtpPort = await freePort();
  const smtp = spawn('python3', ['-m', 'aiosmtpd', '-n', '-l', `127.0.0.1:${smtpPort}`, '-c', 'aiosmtpd.handlers.Mailbox', join(dir, 'smtp', 'Maildir')], { stdio: 'ignore' });
  cleanups.push(async () => { dovecot.kill('SIGTERM'); smtp.kill('SIGTERM'); rmSync(dir, { recursive: true, force: true }); });
  let lastError = null;
  const append = (raw) => {
    const py = `import imaplib,sys\nm=imaplib.IMAP4('127.0.0.1',${imapPort})\nm.login('support','secret')\nm.append('INBOX',None,None,sys.stdin.buffer.read())\nm.logout()`;
    const r = spawnSync('python3', ['-c', py], { input: raw });
    if (r.status !== 0) throw new Error(`APPEND failed: ${r.stderr}`);
  };
  await eventually(async () => {
    try { append(Buffer.from('From: probe@x.test\r\nSubject: probe\r\nMessage-ID: <probe@x.test>\r\nAuto-Submitted: auto-generated\r\n\r\nprobe\r\n')); return true; } catch (e) { lastError = e; return null; }
  }, 20000, 'Dovecot to accept APPEND').catch((e) => {
    const log = existsSync(join(dir, 'dovecot.log')) ? readFileSync(join(dir, 'dovecot.log'), 'utf8') : '(no log)';
    throw new Error(`${e.message}: ${lastError && lastError.message}; dovecot.log: ${log}`);
  });
  const sent = () => {
    const out = [];
    for (const sub of ['new', 'cur']) {
      const d = join(dir, 'smtp', 'Maildir', sub);
      if (existsSync(d)) for (const f of readdirSync(d)) out.push(readFileSync(join(d, f), 'utf8'));
    }
    return out;
  };
  return { imapPort, smtpPort, append, sent };
}

test('the agent reads an HTML mail with an attachment and replies', { skip, timeout: 180000 }, async () => {
  const peers = await startPeers();
  const hub = await startHubWithConfig(`[[channels]]
type = "email"
name = "support-mail"
address = "support@shop.test"
display_name = "Shop Support"
queue = "billing"
[channels.imap]
host = "127.0.0.1"
port = ${peers.imapPort}
security = "plain"
username = "support"
password = "secret"
poll_secs = 2
[channels.smtp]
host = "127.0.0.1"
port = ${peers.smtpPort}
security = "plain"
`);
  cleanups.push(async () => hub.stop());
  const chrome = await launchBrowser();
  cleanups.push(async () => chrome.close());
  const ctx = await chrome.newContext();
  const page = await ctx.newPage();
  const errors = watchErrors(page);
  await loginInbox(page, hub.url, DEMO.alice);
  await setPresenceUi(page, 'available');
  const api = await apiClient(hub.url, DEMO.alice);

  const pdf = Buffer.from('%PDF-1.4\n% the invoice\n'.repeat(20)).toString('base64');
  peers.append(Buffer.from(
    'From: Maria Lopez <maria@customer.test>\r\nTo: support@shop.test\r\nSubject: Wrong invoice amount\r\nMessage-ID: <maria-1@customer.test>\r\n' +
    'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="M"\r\n\r\n--M\r\nContent-Type: text/html; charset=utf-8\r\n\r\n' +
    '<p>My invoice is <b>wrong</b>.</p><script>document.title = "pwned"</script><img src=x onerror="parent.document.title=\'pwned\'">\r\n' +
    `--M\r\nContent-Type: application/pdf; name=invoice.pdf\r\nContent-Disposition: attachment; filename=invoice.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n${pdf}\r\n--M--\r\n`));

  const { offer, interaction } = await waitOffer(api, (i) => i.channel === 'email' && i.subject === 'Wrong invoice amount', 30000);
  await page.click(`.offer[data-offer-id="${offer.id}"] .offer-accept`);
  await page.click(`.conv-item[data-interaction-id="${interaction.id}"]`);
  await page.waitForSelector('#messages .msg-in .msg-body');
  assert.match(await page.textContent('#messages .msg-in .msg-body'), /My invoice is wrong\./);
  // The attachment is a download link.
  const link = page.locator('#messages .msg-atts a', { hasText: 'invoice.pdf' });
  assert.match(await link.getAttribute('href'), /^\/api\/v1\/email\/support-mail\/attachments\//);
  // Shown as email: headers, and the HTML in a sandboxed iframe where nothing runs.
  await page.click('#messages .email-details summary');
  await page.waitForSelector('#messages iframe.email-html');
  assert.match(await page.textContent('#messages .email-head'), /maria@customer\.test/);
  const frame = page.locator('#messages iframe.email-html');
  assert.equal(await frame.getAttribute('sandbox'), '');
  assert.doesNotMatch(await frame.getAttribute('srcdoc'), /script|onerror/);
  assert.match(await page.frameLocator('#messages iframe.email-html').locator('b').textContent(), /wrong/);
  assert.notEqual(await page.title(), 'pwned');

  // The reply reaches the customer's mail server, threaded.
  await page.fill('#reply-input', 'Hello Maria, a corrected invoice is on its way.');
  await page.click('#reply-send');
  const mail = await eventually(async () => peers.sent().find((m) => m.includes('corrected invoice')) || null, 30000, 'the reply at the SMTP server');
  assert.match(mail, /^In-Reply-To: <maria-1@customer\.test>/m);
  assert.match(mail, /^To: maria@customer\.test/m);
  assert.match(mail, /^From: "?Shop Support"? <support\+[a-z2-9]{10}@shop\.test>/m);

  // Reply all with a file attached: uploaded when chosen, listed, sent with the reply.
  await page.setInputFiles('#email-files', { name: 'credit-note.txt', mimeType: 'text/plain', buffer: Buffer.from('Credit note 7: 12.50 EUR\n') });
  await page.waitForSelector('#email-attached li:has-text("credit-note.txt")');
  await page.check('#email-reply-all');
  await page.fill('#reply-input', 'Here is the credit note.');
  await page.click('#reply-send');
  const withFile = await eventually(async () => peers.sent().find((m) => m.includes('Here is the credit note.')) || null, 30000, 'the reply with the file');
  assert.match(withFile, /filename="?credit-note\.txt"?/);
  assert.match(withFile, /Credit note 7: 12\.50 EUR|Q3JlZGl0IG5vdGUgNzog/);
  await page.waitForFunction(() => !document.querySelector('#email-attached li'));

  // Forward the mail to a colleague's address, the original attached; it shows in the conversation.
  await page.click('#email-forward summary');
  await page.fill('#email-forward-to', 'accounting@shop-partner.test');
  await page.fill('#reply-input', 'Please correct this invoice.');
  await page.click('#email-forward-send');
  const fwd = await eventually(async () => peers.sent().find((m) => /^To: accounting@shop-partner\.test/m.test(m)) || null, 30000, 'the forward');
  assert.match(fwd, /^Subject: Fwd: Wrong invoice amount/m);
  assert.match(fwd, /Content-Type: message\/rfc822/);
  await page.waitForSelector('#messages .msg-out .msg-body:has-text("Forwarded to accounting@shop-partner.test")');
  assert.deepEqual(errors, []);
});

// Switchboard CRM page: search, profile (identities, tags, attributes, consent), timeline,
// notes, appointments, tasks, duplicates to merge, CSV import with progress.
// Plain ES module, no build step. All text is put into the DOM with textContent (never
// innerHTML), so customer data cannot inject markup.

const $ = (sel) => document.querySelector(sel);
let csrf = null;
let me = null;

/** Builds an element: h('p', {class: 'x'}, 'text', child). Strings become text nodes. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function say(text, error = false) {
  const s = $('#status');
  s.textContent = text;
  s.classList.toggle('error', error);
}

async function api(method, path, body, contentType) {
  const headers = {};
  if (csrf && method !== 'GET') headers['X-CSRF-Token'] = csrf;
  let payload;
  if (body !== undefined) {
    if (contentType) { headers['Content-Type'] = contentType; payload = body; }
    else { headers['Content-Type'] = 'application/json'; payload = JSON.stringify(body); }
  }
  const r = await fetch(path, { method, headers, body: payload, credentials: 'same-origin' });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!r.ok) {
    const msg = data && data.detail ? `${data.field ? data.field + ': ' : ''}${data.detail}` : `HTTP ${r.status}`;
    const err = new Error(msg);
    err.status = r.status;
    throw err;
  }
  return data;
}

const fmt = (t) => (t ? new Date(t).toLocaleString() : '');
const isSupervisor = () => me && me.roles && me.roles.some((r) => r === 'admin' || r === 'supervisor');
const isStaff = () => me && me.roles && me.roles.some((r) => ['admin', 'supervisor', 'agent'].includes(r));

function show(view) {
  for (const b of document.querySelectorAll('nav button')) b.setAttribute('aria-pressed', String(b.dataset.view === view));
  for (const p of document.querySelectorAll('[data-panel]')) p.hidden = p.dataset.panel !== view;
  if (view === 'tasks') loadTasks();
  if (view === 'duplicates') loadDuplicates();
}

// ------------------------------------------------------------------ sign-in

async function boot() {
  try {
    const m = await api('GET', '/api/v1/auth/me');
    csrf = m.csrf_token;
    me = { roles: m.roles || [], name: m.display_name || m.username || '' };
    $('#who').textContent = me.name;
    $('#login').hidden = true;
    for (const b of document.querySelectorAll('[data-role="supervisor"]')) b.hidden = !isSupervisor();
    for (const b of document.querySelectorAll('[data-role="staff"]')) b.hidden = !isStaff();
    $('#new-customer').hidden = !isStaff();
    show('search');
    openFromHash();
  } catch (e) {
    if (e.status === 401) { $('#login').hidden = false; for (const p of document.querySelectorAll('[data-panel]')) p.hidden = true; }
    else say(e.message, true);
  }
}

$('#login-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const f = new FormData(ev.target);
  try {
    await api('POST', '/api/v1/auth/login', { username: f.get('username'), password: f.get('password') });
    say('Signed in.');
    await boot();
  } catch (e) { say(e.message, true); }
});

for (const b of document.querySelectorAll('nav button')) b.addEventListener('click', () => show(b.dataset.view));

// ------------------------------------------------------------------ search and profile

$('#search-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const q = $('#q').value.trim();
  if (q.length < 3) { say('Type at least 3 characters.', true); return; }
  try {
    const r = await api('GET', `/api/v1/customers?q=${encodeURIComponent(q)}&limit=50`);
    const list = $('#results');
    list.replaceChildren(...r.items.map((c) => h('li', {},
      h('button', { type: 'button', onclick: () => openCustomer(c.id) },
        c.name || '(no name)', h('br'), h('small', {}, (c.identities || []).map((i) => i.split(':').slice(1).join(':')).join(', '))))));
    say(`${r.items.length} found.`);
  } catch (e) { say(e.message, true); }
});

$('#new-customer').addEventListener('click', () => {
  const p = $('#profile');
  const form = h('form', { class: 'inline' },
    h('label', {}, 'Name ', h('input', { name: 'name', required: true })),
    h('label', {}, 'Phone ', h('input', { name: 'phone', type: 'tel' })),
    h('label', {}, 'Email ', h('input', { name: 'email', type: 'email' })),
    h('button', { type: 'submit' }, 'Create'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const identities = [];
    if (f.get('phone')) identities.push({ kind: 'phone', address: f.get('phone') });
    if (f.get('email')) identities.push({ kind: 'email', address: f.get('email') });
    try {
      const c = await api('POST', '/api/v1/customers', { name: f.get('name'), identities });
      say('Customer created.');
      openCustomer(c.id);
    } catch (e) { say(e.message, true); }
  });
  p.replaceChildren(h('h2', {}, 'New customer'), form);
});

// Deep links (the inbox's "Open in CRM"): /crm.html#customer=<id>.
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
function openFromHash() {
  const id = new URLSearchParams(location.hash.slice(1)).get('customer');
  if (!id || !me) return;
  if (!UUID_RE.test(id)) { say('The link names no valid customer.', true); return; }
  show('search');
  openCustomer(id);
}
window.addEventListener('hashchange', openFromHash);

async function openCustomer(id) {
  try {
    const c = await api('GET', `/api/v1/customers/${id}`);
    if (c.merged_into) { say('This record was merged; showing the surviving customer.'); return openCustomer(c.merged_into); }
    renderProfile(c);
  } catch (e) { say(e.message, true); }
}

function renderProfile(c) {
  const p = $('#profile');
  const attrs = Object.entries(c.attributes || {});
  const parts = [
    h('h2', { tabindex: '-1', id: 'profile-h' }, c.name || '(no name)', c.erased_at ? ' (erased)' : ''),
    h('dl', { class: 'kv' },
      h('dt', {}, 'Company'), h('dd', {}, c.company || '—'),
      h('dt', {}, 'Language'), h('dd', {}, c.language || '—'),
      h('dt', {}, 'Time zone'), h('dd', {}, c.time_zone || '—'),
      h('dt', {}, 'Birthday'), h('dd', {}, c.birthday || '—'),
      h('dt', {}, 'Own manager'), h('dd', {}, c.own_manager ? c.own_manager.name : '—'),
      h('dt', {}, 'External id'), h('dd', {}, c.external_id || '—')),
    h('section', { 'aria-label': 'Tags' }, h('h3', {}, 'Tags'), c.tags.length ? c.tags.map((t) => h('span', { class: 'tag' }, t)) : h('span', { class: 'muted' }, 'none')),
    h('section', {}, h('h3', {}, 'Identities'),
      h('ul', {}, c.identities.map((i) => h('li', {}, `${i.kind}: `, h('span', {}, i.address))))),
    h('section', {}, h('h3', {}, 'Attributes'),
      attrs.length ? h('dl', { class: 'kv' }, attrs.map(([k, v]) => [h('dt', {}, k), h('dd', {}, typeof v === 'string' ? v : JSON.stringify(v))])) : h('p', { class: 'muted' }, 'none')),
    consentSection(c),
  ];
  if (isStaff()) parts.push(h('section', { id: 'timeline-sec' }), h('section', { id: 'notes-sec' }), h('section', { id: 'appt-sec' }));
  if (isSupervisor() && !c.erased_at) {
    parts.push(h('section', {}, h('h3', {}, 'Privacy'),
      h('a', { href: `/api/v1/customers/${encodeURIComponent(c.id)}/privacy-export`, download: `customer-${c.id}.json` }, 'Export all data (JSON)'), ' ',
      h('button', { type: 'button', onclick: () => eraseCustomer(c) }, 'Erase personal data…')));
  }
  p.replaceChildren(...parts);
  $('#profile-h').focus();
  if (isStaff()) { loadTimeline(c.id); loadNotes(c.id); loadAppointments(c); }
}

function consentSection(c) {
  const sec = h('section', {}, h('h3', {}, 'Marketing consent'));
  const form = h('form', { class: 'inline' },
    h('label', {}, h('input', { type: 'checkbox', name: 'sms', checked: c.consent_sms }), ' SMS'),
    h('label', {}, h('input', { type: 'checkbox', name: 'email', checked: c.consent_email }), ' Email'),
    h('label', {}, 'Source ', h('input', { name: 'source', required: true, placeholder: 'phone call, web form…' })),
    h('button', { type: 'submit' }, 'Record change'));
  const hist = h('ul', { class: 'muted' });
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const r = await api('POST', `/api/v1/customers/${c.id}/consent`, { sms: form.sms.checked, email: form.email.checked, source: form.source.value });
      renderHistory(hist, r.history);
      say('Consent recorded.');
    } catch (e) { say(e.message, true); }
  });
  api('GET', `/api/v1/customers/${c.id}/consent`).then((r) => renderHistory(hist, r.history)).catch(() => {});
  sec.append(form, hist);
  return sec;
}

function renderHistory(ul, history) {
  ul.replaceChildren(...history.map((e) => h('li', {}, `${fmt(e.at)}: ${e.kind} ${e.granted ? 'granted' : 'withdrawn'} (${e.source})`)));
}

async function loadTimeline(id) {
  const sec = $('#timeline-sec');
  try {
    const r = await api('GET', `/api/v1/customers/${id}/timeline?limit=100`);
    sec.replaceChildren(h('h3', {}, 'History'),
      r.items.length ? h('ol', { class: 'timeline' }, r.items.map((i) => h('li', {},
        h('strong', {}, `${i.channel} · ${i.status}`), i.disposition ? ` · ${i.disposition}` : '', ' ', h('span', { class: 'muted' }, fmt(i.created_at)),
        i.agent_name ? h('div', {}, `Agent: ${i.agent_name}`) : null,
        i.subject ? h('div', {}, `Subject: ${i.subject}`) : null,
        i.preview ? h('div', { class: 'muted' }, i.preview) : null,
        i.summary ? h('div', {}, `Summary: ${i.summary}`) : null,
        recordingLink(i.recording_url)))) : h('p', { class: 'muted' }, 'No interactions yet.'));
  } catch (e) { sec.replaceChildren(h('p', {}, e.message)); }
}

// The API gives the recording's HTTP endpoint (authorized per caller), never a file path.
function recordingLink(url) {
  if (typeof url !== 'string' || !url.startsWith('/api/v1/recordings/')) return null;
  return h('div', {}, h('audio', { controls: true, preload: 'none', src: url, 'aria-label': 'Call recording' }), ' ',
    h('a', { href: url, download: '' }, 'Download recording'));
}

async function loadNotes(id) {
  const sec = $('#notes-sec');
  const form = h('form', { class: 'inline' },
    h('label', {}, 'New note ', h('textarea', { name: 'body', rows: 2, cols: 40, required: true })),
    h('button', { type: 'submit' }, 'Add note'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try { await api('POST', `/api/v1/customers/${id}/notes`, { body: form.body.value }); loadNotes(id); say('Note added.'); } catch (e) { say(e.message, true); }
  });
  try {
    const r = await api('GET', `/api/v1/customers/${id}/notes`);
    sec.replaceChildren(h('h3', {}, 'Notes'), h('ul', {}, r.items.map((n) => h('li', {}, h('span', { class: 'muted' }, `${fmt(n.created_at)} ${n.author_name}: `), n.body))), form);
  } catch (e) { sec.replaceChildren(h('p', {}, e.message)); }
}

async function loadAppointments(c) {
  const sec = $('#appt-sec');
  const form = h('form', { class: 'inline' },
    h('label', {}, 'When ', h('input', { name: 'local_start', type: 'datetime-local', required: true })),
    h('label', {}, 'Time zone ', h('input', { name: 'time_zone', value: c.time_zone || Intl.DateTimeFormat().resolvedOptions().timeZone, required: true })),
    h('label', {}, 'Kind ', h('input', { name: 'kind', value: 'visit' })),
    h('label', {}, 'Location ', h('input', { name: 'location' })),
    h('button', { type: 'submit' }, 'Book'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      await api('POST', '/api/v1/appointments', { customer_id: c.id, local_start: form.local_start.value.slice(0, 16), time_zone: form.time_zone.value, kind: form.kind.value, location: form.location.value });
      say('Appointment booked.');
      loadAppointments(c);
    } catch (e) { say(e.message, true); }
  });
  try {
    const r = await api('GET', `/api/v1/appointments?customer_id=${c.id}`);
    const statuses = ['scheduled', 'confirmed', 'cancelled', 'done', 'no_show'];
    sec.replaceChildren(h('h3', {}, 'Appointments'), h('ul', {}, r.items.map((a) => {
      const sel = h('select', { 'aria-label': `Status of ${a.kind} on ${a.local_start}` }, statuses.map((s) => h('option', { value: s, selected: s === a.status }, s)));
      sel.addEventListener('change', async () => {
        try { await api('PATCH', `/api/v1/appointments/${a.id}`, { status: sel.value }); say('Appointment updated.'); } catch (e) { say(e.message, true); }
      });
      return h('li', {}, `${a.local_start} (${a.time_zone}) · ${a.kind}${a.location ? ' · ' + a.location : ''} `, sel);
    })), form);
  } catch (e) { sec.replaceChildren(h('p', {}, e.message)); }
}

async function eraseCustomer(c) {
  if (!window.confirm(`Erase all personal data of ${c.name || 'this customer'}? This cannot be undone.`)) return;
  try { await api('POST', `/api/v1/customers/${c.id}/erase`); say('Personal data erased.'); openCustomer(c.id); } catch (e) { say(e.message, true); }
}

// ------------------------------------------------------------------ tasks

async function loadTasks() {
  const body = $('#task-rows');
  try {
    const r = await api('GET', '/api/v1/tasks?agent_id=me');
    body.replaceChildren(...r.items.map((t) => h('tr', {},
      h('td', {}, fmt(t.due_at)), h('td', {}, t.kind.replace('_', ' ')), h('td', {}, t.title),
      h('td', {}, t.customer_id ? h('button', { type: 'button', onclick: () => { show('search'); openCustomer(t.customer_id); } }, t.customer_name || '(no name)') : '—'),
      h('td', {}, h('button', { type: 'button', onclick: async () => {
        try { await api('PATCH', `/api/v1/tasks/${t.id}`, { done: true }); say('Task done.'); loadTasks(); } catch (e) { say(e.message, true); }
      } }, 'Done')))));
    if (!r.items.length) body.replaceChildren(h('tr', {}, h('td', { colspan: 5 }, 'No open tasks.')));
  } catch (e) { say(e.message, true); }
}

// ------------------------------------------------------------------ duplicates

async function loadDuplicates() {
  const list = $('#dup-list');
  try {
    const r = await api('GET', '/api/v1/customers/duplicates');
    list.replaceChildren(...r.items.map((g) => {
      const [keep, ...others] = g.customers;
      return h('li', {}, h('strong', {}, g.reason), ` (${g.key}): `,
        g.customers.map((c) => `${c.name || '(no name)'} [${String(c.id).slice(0, 8)}]`).join(', '), ' ',
        others.map((o) => h('button', { type: 'button', onclick: () => mergeInto(keep, o) }, `Merge ${o.name || String(o.id).slice(0, 8)} into ${keep.name || String(keep.id).slice(0, 8)}`)));
    }));
    if (!r.items.length) list.replaceChildren(h('li', {}, 'No suggestions.'));
  } catch (e) { say(e.message, true); }
}

async function mergeInto(keep, other) {
  if (!window.confirm(`Merge "${other.name}" into "${keep.name}"? Identities, history, notes and appointments move to the survivor.`)) return;
  try { await api('POST', `/api/v1/customers/${keep.id}/merge`, { other_id: other.id }); say('Merged.'); loadDuplicates(); } catch (e) { say(e.message, true); }
}

// ------------------------------------------------------------------ import

$('#import-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const file = $('#import-file').files[0];
  if (!file) return;
  try {
    const r = await api('POST', '/api/v1/customers/import', await file.arrayBuffer(), 'text/csv');
    $('#import-progress').hidden = false;
    say('Import started.');
    pollImport(r.job_id);
  } catch (e) { say(e.message, true); }
});

async function pollImport(job) {
  try {
    const j = await api('GET', `/api/v1/customers/import/${job}`);
    $('#import-bar').value = j.percent;
    $('#import-text').textContent = `${j.done} / ${j.total} rows · ${j.created} created · ${j.updated} updated · ${j.rejected} rejected`;
    const table = $('#import-errors');
    table.hidden = !j.errors.length;
    table.tBodies[0].replaceChildren(...j.errors.map((e) => h('tr', {}, h('td', {}, e.line), h('td', {}, e.field || '—'), h('td', {}, e.reason))));
    if (j.status === 'running') setTimeout(() => pollImport(job), 500);
    else say(j.status === 'done' ? 'Import finished.' : `Import failed: ${j.failure || ''}`, j.status !== 'done');
  } catch (e) { say(e.message, true); }
}

boot();

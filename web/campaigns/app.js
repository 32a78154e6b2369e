// Marketer pages: the campaign list (status and progress), the editor (audience builder
// with a live count, template with locale variants, preview and the character/part
// counter, schedule, quiet hours, rate, test send) and the results view (totals, delivery
// rate, delivery chart, recipients, CSV export). Plain ES module, no build step; every
// piece of text goes into the DOM as text, never as HTML.

import { get, post, patch, ApiError } from '/app/api.js';
import { h, replace, toast } from '/app/dom.js';
import { startPage } from '/app/shell.js';

const KINDS = { broadcast: 'Broadcast', birthday: 'Birthday', reminder: 'Appointment reminder', follow_up: 'Follow-up' };
let main;
let canEdit = false;
let refresh = null;

const list = (s) => s.split(',').map((x) => x.trim()).filter(Boolean);
const fmt = (t) => (t ? new Date(t).toLocaleString() : '—');
const pct = (x) => (x === null || x === undefined ? '—' : `${(x * 100).toFixed(1)} %`);
function debounce(fn, ms) {
  let t;
  return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); };
}
function fail(e) {
  toast(e instanceof ApiError ? `${e.field ? e.field + ': ' : ''}${e.message}` : String(e), 'error');
}
function stopRefresh() {
  if (refresh) clearInterval(refresh);
  refresh = null;
}

// ------------------------------------------------------------------ list

async function showList() {
  stopRefresh();
  history.replaceState(null, '', '#');
  const rows = h('tbody', { id: 'campaign-rows' });
  replace(main,
    h('div', { class: 'page-head' }, h('h1', { id: 'page-title' }, 'Campaigns'),
      canEdit ? h('button', { type: 'button', class: 'btn btn-primary', id: 'new-campaign', onclick: () => showEditor(null) }, 'New campaign') : null),
    h('section', { class: 'card' },
      h('table', { class: 'cmp-table' },
        h('caption', { class: 'visually-hidden' }, 'Campaigns, newest first'),
        h('thead', null, h('tr', null, ['Name', 'Kind', 'Status', 'Progress', 'Delivered', 'Created', ''].map((c) => h('th', { scope: 'col' }, c)))),
        rows)));
  const draw = async () => {
    const page = await get('/api/v1/campaigns?limit=200');
    replace(rows, page.items.length ? page.items.map((c) => {
      const n = c.counts || {};
      const total = Object.values(n).reduce((a, b) => a + b, 0);
      const done = total - (n.planned || 0) - (n.deferred || 0);
      const share = total ? done / total : 0;
      return h('tr', { dataset: { id: c.id } },
        h('td', null, h('a', { href: `#edit/${c.id}`, onclick: (e) => { e.preventDefault(); showEditor(c.id); } }, c.name)),
        h('td', null, KINDS[c.kind] || c.kind),
        h('td', null, h('span', { class: 'cmp-status', dataset: { status: c.status } }, c.status)),
        h('td', null, h('span', { class: 'cmp-progress', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': total, 'aria-valuenow': done, 'aria-label': `${done} of ${total} handled` },
          h('span', { style: `width:${Math.round(share * 100)}%` })), ` ${done} / ${total}`),
        h('td', null, String(n.delivered || 0)),
        h('td', null, fmt(c.created_at)),
        h('td', null, h('button', { type: 'button', class: 'btn btn-small', onclick: () => showResults(c.id) }, 'Results')));
    }) : h('tr', null, h('td', { colspan: 7, class: 'empty-hint' }, 'No campaigns yet.')));
  };
  await draw().catch(fail);
  refresh = setInterval(() => draw().catch(() => {}), 5000);
}

// ------------------------------------------------------------------ editor

function field(label, input, hint) {
  return h('label', null, label, input, hint ? h('small', { class: 'muted' }, hint) : null);
}

function localInput(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  const p = (x) => String(x).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}

async function showEditor(id) {
  stopRefresh();
  history.replaceState(null, '', id ? `#edit/${id}` : '#new');
  const c = id ? await get(`/api/v1/campaigns/${id}`).catch(fail) : null;
  if (id && !c) return;
  const a = (c && c.audience) || {};
  const t = (c && c.template) || { default: '', variants: {}, fallbacks: {} };
  const inp = (name, value, attrs = {}) => h('input', { id: `f-${name}`, name, value: value ?? '', ...attrs });
  const f = {
    name: inp('name', c ? c.name : '', { required: true }),
    kind: h('select', { id: 'f-kind', disabled: !!c }, Object.entries(KINDS).map(([k, v]) => h('option', { value: k, selected: c && c.kind === k }, v))),
    tagsAny: inp('tags_any', (a.tags_any || []).join(', '), { placeholder: 'vip, newsletter' }),
    tagsAll: inp('tags_all', (a.tags_all || []).join(', ')),
    tagsNone: inp('tags_none', (a.tags_none || []).join(', ')),
    languages: inp('languages', (a.languages || []).join(', '), { placeholder: 'es, de' }),
    zones: inp('time_zones', (a.time_zones || []).join(', '), { placeholder: 'Europe/Madrid' }),
    attrName: inp('attr_name', a.attributes && a.attributes[0] ? a.attributes[0].name : ''),
    attrOp: h('select', { id: 'f-attr_op' }, ['eq', 'ne', 'gt', 'gte', 'lt', 'lte', 'exists', 'missing'].map((o) => h('option', { value: o, selected: a.attributes && a.attributes[0] && a.attributes[0].op === o }, o))),
    attrValue: inp('attr_value', a.attributes && a.attributes[0] ? JSON.stringify(a.attributes[0].value ?? '') : ''),
    contactWithin: inp('contact_within', a.last_contact && a.last_contact.within_days, { type: 'number', min: 0 }),
    contactNot: inp('contact_not', a.last_contact && a.last_contact.not_within_days, { type: 'number', min: 0 }),
    apptDays: inp('appt_days', a.appointment && a.appointment.upcoming_within_days, { type: 'number', min: 0 }),
    text: h('textarea', { id: 'f-text', 'aria-describedby': 'counter' }, t.default),
    fallbackName: inp('fallback_first_name', (t.fallbacks || {}).first_name || '', { placeholder: 'there' }),
    startsAt: inp('starts_at', localInput(c && c.starts_at), { type: 'datetime-local' }),
    endsAt: inp('ends_at', localInput(c && c.ends_at), { type: 'datetime-local' }),
    sendTime: inp('send_time', c ? c.send_time.slice(0, 5) : '09:00', { type: 'time' }),
    offset: inp('offset_hours', c ? c.offset_minutes / 60 : 24, { type: 'number', min: 0, step: '0.25' }),
    grace: inp('grace', c ? c.grace_minutes : 180, { type: 'number', min: 0 }),
    late: h('select', { id: 'f-late' }, h('option', { value: 'send', selected: !c || c.late_policy === 'send' }, 'send at once'), h('option', { value: 'skip', selected: c && c.late_policy === 'skip' }, 'skip')),
    quiet: h('input', { id: 'f-quiet', type: 'checkbox', checked: !c || !!c.quiet_start }),
    quietStart: inp('quiet_start', c && c.quiet_start ? c.quiet_start.slice(0, 5) : '21:00', { type: 'time' }),
    quietEnd: inp('quiet_end', c && c.quiet_end ? c.quiet_end.slice(0, 5) : '08:00', { type: 'time' }),
    rate: inp('rate', c && c.rate_per_second, { type: 'number', min: 1, placeholder: 'channel throttle' }),
    testPhone: inp('test_phone', '', { type: 'tel', placeholder: '+49 151 …' }),
  };
  const variants = h('div', { id: 'variants' });
  const addVariant = (lang = '', text = '') => {
    const row = h('div', { class: 'cmp-variant' },
      h('input', { 'aria-label': 'Language', class: 'v-lang', value: lang, placeholder: 'es' }),
      h('textarea', { 'aria-label': 'Text in that language', class: 'v-text' }, text),
      h('button', { type: 'button', class: 'btn btn-small', onclick: () => { row.remove(); updatePreview(); } }, 'Remove'));
    row.addEventListener('input', () => updatePreview());
    variants.append(row);
  };
  for (const [k, v] of Object.entries(t.variants || {})) addVariant(k, v);

  const audience = () => {
    const x = {};
    if (list(f.tagsAny.value).length) x.tags_any = list(f.tagsAny.value);
    if (list(f.tagsAll.value).length) x.tags_all = list(f.tagsAll.value);
    if (list(f.tagsNone.value).length) x.tags_none = list(f.tagsNone.value);
    if (list(f.languages.value).length) x.languages = list(f.languages.value);
    if (list(f.zones.value).length) x.time_zones = list(f.zones.value);
    if (f.attrName.value.trim()) {
      let v = f.attrValue.value.trim();
      try { v = v === '' ? null : JSON.parse(v); } catch { /* a bare word is a string */ }
      x.attributes = [{ name: f.attrName.value.trim(), op: f.attrOp.value, value: v }];
    }
    const lc = {};
    if (f.contactWithin.value !== '') lc.within_days = Number(f.contactWithin.value);
    if (f.contactNot.value !== '') lc.not_within_days = Number(f.contactNot.value);
    if (Object.keys(lc).length) x.last_contact = lc;
    if (f.apptDays.value !== '') x.appointment = { upcoming_within_days: Number(f.apptDays.value) };
    if (c && c.audience && c.audience.customer_ids && c.audience.customer_ids.length) x.customer_ids = c.audience.customer_ids;
    return x;
  };
  const template = () => {
    const v = {};
    for (const row of variants.querySelectorAll('.cmp-variant')) {
      const lang = row.querySelector('.v-lang').value.trim();
      if (lang) v[lang] = row.querySelector('.v-text').value;
    }
    const fb = {};
    if (f.fallbackName.value.trim()) fb.first_name = f.fallbackName.value.trim();
    return { default: f.text.value, variants: v, fallbacks: fb };
  };

  const count = h('output', { id: 'audience-count', class: 'cmp-count', 'aria-live': 'polite' }, '…');
  const sample = h('p', { id: 'audience-sample', class: 'muted' });
  const updateCount = debounce(async () => {
    try {
      const r = await post('/api/v1/campaigns/audience/count', { audience: audience() });
      count.textContent = `${r.count.toLocaleString()} customers`;
      sample.textContent = r.sample.length ? `e.g. ${r.sample.map((s) => s.name || '(no name)').join(', ')}` : '';
    } catch (e) {
      count.textContent = '—';
      sample.textContent = e.message;
    }
  }, 250);
  const previewText = h('div', { id: 'preview-text', class: 'cmp-preview', 'aria-live': 'polite' });
  const counter = h('div', { id: 'counter', class: 'cmp-meter' });
  const previewLang = h('input', { id: 'f-preview-lang', placeholder: 'language (e.g. es)', 'aria-label': 'Preview language' });
  const updatePreview = debounce(async () => {
    try {
      const p = await post('/api/v1/campaigns/preview', { template: template(), language: previewLang.value.trim() || null });
      previewText.textContent = p.text;
      replace(counter,
        h('span', { id: 'counter-encoding' }, p.encoding === 'ucs2' ? 'UCS-2 (Unicode)' : 'GSM 7-bit'),
        h('span', { id: 'counter-chars' }, `${p.characters} characters`),
        h('span', { id: 'counter-parts' }, `${p.parts} ${p.parts === 1 ? 'part' : 'parts'}`),
        h('span', null, `${p.remaining} left in this part`),
        p.variant ? h('span', null, `variant: ${p.variant}`) : null,
        p.missing.length ? h('span', { class: 'form-error' }, `empty: ${p.missing.join(', ')}`) : null,
        p.error ? h('span', { class: 'form-error', role: 'alert' }, p.error) : null);
    } catch (e) {
      previewText.textContent = '';
      replace(counter, h('span', { class: 'form-error' }, e.message));
    }
  }, 200);

  const body = () => {
    const kind = c ? c.kind : f.kind.value;
    const b = {
      name: f.name.value,
      audience: audience(),
      template: template(),
      starts_at: f.startsAt.value ? new Date(f.startsAt.value).toISOString() : null,
      ends_at: f.endsAt.value ? new Date(f.endsAt.value).toISOString() : null,
      send_time: f.sendTime.value || '09:00',
      offset_minutes: Math.round(Number(f.offset.value || 0) * 60),
      grace_minutes: Number(f.grace.value || 0),
      late_policy: f.late.value,
      quiet_start: f.quiet.checked ? f.quietStart.value : null,
      quiet_end: f.quiet.checked ? f.quietEnd.value : null,
      rate_per_second: f.rate.value ? Number(f.rate.value) : null,
    };
    if (!c) b.kind = kind;
    return b;
  };
  const save = async () => {
    try {
      const saved = c ? await patch(`/api/v1/campaigns/${c.id}`, body()) : await post('/api/v1/campaigns', body());
      toast('Campaign saved.');
      return saved;
    } catch (e) {
      fail(e);
      return null;
    }
  };
  const act = async (what) => {
    const saved = c && c.status === 'draft' && what === 'start' ? await save() : c;
    if (!saved) return;
    try {
      await post(`/api/v1/campaigns/${saved.id}/${what}`);
      toast(`Campaign ${what === 'start' ? 'started' : what === 'cancel' ? 'cancelled' : what + 'd'}.`);
      showEditor(saved.id);
    } catch (e) { fail(e); }
  };
  const kindOf = () => (c ? c.kind : f.kind.value);
  const schedule = h('div', { class: 'form-grid', id: 'schedule' });
  const drawSchedule = () => replace(schedule,
    field(kindOf() === 'broadcast' ? 'Start (empty: when started)' : 'Active from', f.startsAt),
    field('End (optional)', f.endsAt),
    kindOf() === 'birthday' ? field('Local send time', f.sendTime, "in each customer's time zone") : null,
    ['reminder', 'follow_up'].includes(kindOf()) ? field(kindOf() === 'reminder' ? 'Hours before the appointment' : 'Hours after the appointment', f.offset) : null,
    kindOf() === 'reminder' ? field('Booked inside the window', f.late) : null,
    ['birthday', 'follow_up'].includes(kindOf()) ? field('Grace period (minutes)', f.grace, 'later than this: skipped with a reason') : null);
  f.kind.addEventListener('change', drawSchedule);
  drawSchedule();

  const status = c ? c.status : 'draft';
  replace(main,
    h('div', { class: 'page-head' },
      h('button', { type: 'button', class: 'btn', onclick: showList }, '← Campaigns'),
      h('h1', { id: 'page-title' }, c ? c.name : 'New campaign'),
      c ? h('span', { class: 'cmp-status', id: 'campaign-status', dataset: { status } }, status) : null),
    h('div', { class: 'cmp-editor' },
      h('div', null,
        h('section', { class: 'card' }, h('h2', null, 'Campaign'),
          h('div', { class: 'form-grid' }, field('Name', f.name), field('Kind', f.kind))),
        h('section', { class: 'card', 'aria-labelledby': 'aud-h' }, h('h2', { id: 'aud-h' }, 'Audience'),
          h('p', { class: 'muted' }, 'Only customers with SMS marketing consent and a mobile number are ever sent to.'),
          h('div', { class: 'form-grid' },
            field('Any of these tags', f.tagsAny), field('All of these tags', f.tagsAll), field('None of these tags', f.tagsNone),
            field('Languages', f.languages), field('Time zones', f.zones),
            field('Attribute', f.attrName), field('Condition', f.attrOp), field('Value', f.attrValue),
            field('Contacted within (days)', f.contactWithin), field('Not contacted for (days)', f.contactNot),
            field('Appointment within (days)', f.apptDays))),
        h('section', { class: 'card', 'aria-labelledby': 'tpl-h' }, h('h2', { id: 'tpl-h' }, 'Message'),
          h('p', { class: 'muted' }, 'Variables: {first_name}, {last_name}, {name}, {company}, {appointment.date}, {appointment.time}, {appointment.location}, {attributes.<name>}; a fallback after a bar: {first_name|there}.'),
          h('label', { for: 'f-text' }, 'Default text'), f.text,
          h('div', { class: 'form-grid' }, field('Fallback for {first_name}', f.fallbackName)),
          h('h3', null, 'Language variants'), variants,
          h('button', { type: 'button', class: 'btn btn-small', id: 'add-variant', onclick: () => addVariant() }, 'Add a language')),
        h('section', { class: 'card', 'aria-labelledby': 'sch-h' }, h('h2', { id: 'sch-h' }, 'Schedule and delivery'), schedule,
          h('div', { class: 'form-grid' },
            h('label', null, h('span', null, f.quiet, ' Quiet hours (recipient’s local time)')),
            field('From', f.quietStart), field('Until', f.quietEnd), field('Messages per second', f.rate)))),
      h('div', null,
        h('section', { class: 'card', 'aria-labelledby': 'cnt-h' }, h('h2', { id: 'cnt-h' }, 'Audience size'), count, sample),
        h('section', { class: 'card', 'aria-labelledby': 'pre-h' }, h('h2', { id: 'pre-h' }, 'Preview'), previewLang, previewText, counter),
        canEdit ? h('section', { class: 'card' }, h('h2', null, 'Actions'),
          h('div', { class: 'cmp-actions' },
            h('button', { type: 'button', class: 'btn btn-primary', id: 'save', onclick: async () => { const s = await save(); if (s && !c) showEditor(s.id); } }, 'Save'),
            c && status === 'draft' ? h('button', { type: 'button', class: 'btn', id: 'start', onclick: () => act('start') }, 'Start') : null,
            c && status === 'running' ? h('button', { type: 'button', class: 'btn', id: 'pause', onclick: () => act('pause') }, 'Pause') : null,
            c && status === 'paused' ? h('button', { type: 'button', class: 'btn', id: 'resume', onclick: () => act('resume') }, 'Resume') : null,
            c && ['draft', 'running', 'paused'].includes(status) ? h('button', { type: 'button', class: 'btn btn-danger', id: 'cancel', onclick: () => { if (confirm('Cancel this campaign? Recipients not yet sent to will not be.')) act('cancel'); } }, 'Cancel campaign') : null,
            c ? h('button', { type: 'button', class: 'btn', id: 'results', onclick: () => showResults(c.id) }, 'Results') : null),
          c ? h('div', { class: 'form-grid', style: 'margin-top:10px' }, field('Test send to', f.testPhone),
            h('button', { type: 'button', class: 'btn', id: 'test-send', onclick: async () => {
              try { const r = await post(`/api/v1/campaigns/${c.id}/test-send`, { phone: f.testPhone.value }); toast(`Test message queued to ${r.phone}.`); } catch (e) { fail(e); }
            } }, 'Send test')) : null) : null)));
  for (const el of [f.tagsAny, f.tagsAll, f.tagsNone, f.languages, f.zones, f.attrName, f.attrOp, f.attrValue, f.contactWithin, f.contactNot, f.apptDays]) {
    el.addEventListener('input', updateCount);
    el.addEventListener('change', updateCount);
  }
  for (const el of [f.text, f.fallbackName, previewLang]) el.addEventListener('input', updatePreview);
  updateCount();
  updatePreview();
}

// ------------------------------------------------------------------ results

function chart(buckets) {
  const NS = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('class', 'cmp-chart');
  svg.setAttribute('viewBox', '0 0 600 180');
  svg.setAttribute('role', 'img');
  const total = buckets.reduce((a, b) => a + b.handed, 0);
  svg.setAttribute('aria-label', `Delivery chart: ${total} messages sent in ${buckets.length} intervals`);
  const max = Math.max(1, ...buckets.map((b) => b.handed));
  const w = 600 / Math.max(1, buckets.length);
  buckets.forEach((b, i) => {
    const bar = (cls, v, y0) => {
      const r = document.createElementNS(NS, 'rect');
      const hgt = (v / max) * 170;
      r.setAttribute('class', cls);
      r.setAttribute('x', String(i * w + 1));
      r.setAttribute('width', String(Math.max(1, w - 2)));
      r.setAttribute('y', String(175 - y0 - hgt));
      r.setAttribute('height', String(hgt));
      const title = document.createElementNS(NS, 'title');
      title.textContent = `${new Date(b.at).toLocaleTimeString()}: ${v} ${cls}`;
      r.append(title);
      svg.append(r);
      return hgt;
    };
    bar('handed', b.handed, 0);
    const d = bar('delivered', b.delivered, 0);
    bar('failed', b.failed, d);
  });
  return svg;
}

async function showResults(id) {
  stopRefresh();
  history.replaceState(null, '', `#results/${id}`);
  const head = h('div', { class: 'page-head' });
  const totals = h('div', { class: 'cmp-totals', id: 'totals' });
  const progress = h('p', { id: 'planning', role: 'status' });
  const chartBox = h('div', { id: 'chart' });
  const filter = h('select', { id: 'recipient-filter', 'aria-label': 'Show recipients' },
    ['', 'planned', 'deferred', 'sending', 'sent', 'delivered', 'failed', 'unknown', 'opted_out', 'skipped', 'cancelled'].map((s) => h('option', { value: s }, s || 'all')));
  const rows = h('tbody', { id: 'recipient-rows' });
  replace(main, head,
    h('section', { class: 'card', 'aria-labelledby': 'tot-h' }, h('h2', { id: 'tot-h' }, 'Totals'), progress, totals),
    h('section', { class: 'card', 'aria-labelledby': 'chart-h' }, h('h2', { id: 'chart-h' }, 'Delivery over time'),
      h('div', { class: 'cmp-legend' }, h('span', { style: '--c:#b8c7ee' }, 'sent'), h('span', { style: '--c:#2e8b57' }, 'delivered'), h('span', { style: '--c:#c0392b' }, 'failed / unknown / opted out')),
      chartBox),
    h('section', { class: 'card', 'aria-labelledby': 'rec-h' }, h('h2', { id: 'rec-h' }, 'Recipients'),
      h('div', { class: 'cmp-actions' }, filter, h('a', { class: 'btn', id: 'csv', href: `/api/v1/campaigns/${id}/recipients.csv`, download: '' }, 'Export CSV')),
      h('table', { class: 'cmp-table' },
        h('thead', null, h('tr', null, ['Customer', 'Phone', 'Occasion', 'Status', 'Reason', 'Due', 'Sent', 'Reply'].map((c) => h('th', { scope: 'col' }, c)))),
        rows)));
  const drawRows = async () => {
    const q = filter.value ? `&status=${encodeURIComponent(filter.value)}` : '';
    const page = await get(`/api/v1/campaigns/${id}/recipients?limit=200${q}`);
    replace(rows, page.items.length ? page.items.map((r) => h('tr', { dataset: { status: r.status } },
      h('td', null, r.name || '(no name)'), h('td', null, r.phone || ''), h('td', null, r.occurrence),
      h('td', null, h('span', { class: 'cmp-status', dataset: { status: r.status } }, r.status)),
      h('td', null, r.reason || ''), h('td', null, fmt(r.due_at)), h('td', null, fmt(r.handed_at)),
      h('td', null, r.reply_interaction_id ? 'replied' : r.stopped ? 'STOP' : ''))) : h('tr', null, h('td', { colspan: 8, class: 'empty-hint' }, 'No recipients.')));
  };
  filter.addEventListener('change', () => drawRows().catch(fail));
  const draw = async () => {
    const r = await get(`/api/v1/campaigns/${id}/results`);
    const c = r.campaign;
    replace(head,
      h('button', { type: 'button', class: 'btn', onclick: showList }, '← Campaigns'),
      h('h1', { id: 'page-title' }, `Results — ${c.name}`),
      h('span', { class: 'cmp-status', id: 'campaign-status', dataset: { status: c.status } }, c.status),
      h('button', { type: 'button', class: 'btn btn-small', onclick: () => showEditor(id) }, 'Edit'));
    const p = r.planning;
    progress.textContent = p.state === 'planning' ? `Planning recipients: ${p.planned.toLocaleString()} of about ${(p.estimate || 0).toLocaleString()}…`
      : p.state === 'failed' ? `Planning failed: ${p.error}` : '';
    const t = r.totals;
    replace(totals, [
      ['Recipients', t.total], ['Planned', t.planned], ['Deferred', t.deferred], ['In the outbox', t.sending], ['Sent', t.sent],
      ['Delivered', t.delivered], ['Failed', t.failed], ['Unknown', t.unknown], ['Opted out', t.opted_out], ['Skipped', t.skipped],
      ['Cancelled', t.cancelled], ['Replies', t.replies], ['STOPs', t.stops], ['Delivery rate', pct(t.delivery_rate)],
    ].map(([k, v]) => h('div', { dataset: { total: k.toLowerCase().replace(/ /g, '_') } }, h('b', null, String(v)), k)));
    replace(chartBox, r.timeline.length ? chart(r.timeline) : h('p', { class: 'empty-hint' }, 'Nothing sent yet.'));
    await drawRows();
  };
  await draw().catch(fail);
  refresh = setInterval(() => draw().catch(() => {}), 3000);
}

// ------------------------------------------------------------------ start

const page = await startPage({ title: 'Campaigns', roles: ['admin', 'marketer', 'supervisor'] });
if (page) {
  main = page.main;
  canEdit = (page.me.roles || []).some((r) => r === 'admin' || r === 'marketer');
  const [view, id] = location.hash.slice(1).split('/');
  if (view === 'edit' && id) showEditor(id);
  else if (view === 'results' && id) showResults(id);
  else if (view === 'new' && canEdit) showEditor(null);
  else showList();
}

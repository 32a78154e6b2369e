// Reports page: date range, interval and zone, queue/agent/channel filters, a table and
// a hand-written SVG chart per report, period-over-period comparison, CSV download, and
// the recordings list with an audio player. Figures are defined in docs/metrics.md.

import { get } from './app/api.js';
import { h, replace, showError } from './app/dom.js';
import { startPage } from './app/shell.js';

const KINDS = ['queues', 'agents', 'channels', 'dispositions', 'ivr', 'campaigns', 'recordings'];
const CHART_METRIC = {
  queues: 'offered', agents: 'handled', channels: 'offered', dispositions: 'total', ivr: 'visits', campaigns: 'replies',
};
const isoDay = (d) => d.toISOString().slice(0, 10);

function run({ main }) {
  const today = new Date();
  const weekAgo = new Date(today.getTime() - 6 * 86400000);
  const state = { kind: 'queues' };
  const tz = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
  const from = h('input', { type: 'date', id: 'from', value: isoDay(weekAgo) });
  const to = h('input', { type: 'date', id: 'to', value: isoDay(today) });
  const interval = h('select', { id: 'interval' }, ['15m', '30m', 'hour', 'day', 'week', 'month', 'total']
    .map((v) => h('option', { value: v, selected: v === 'day' ? '' : null }, v)));
  const zone = h('input', { id: 'tz', value: tz, size: 18 });
  const queueSel = h('select', { id: 'queue' }, h('option', { value: '' }, 'All queues'));
  const agentSel = h('select', { id: 'agent' }, h('option', { value: '' }, 'All agents'));
  const channelSel = h('select', { id: 'channel' }, ['', 'voice', 'chat', 'email', 'sms'].map((c) => h('option', { value: c }, c || 'All channels')));
  const compare = h('input', { type: 'checkbox', id: 'compare' });
  // Queue reports only: each queue's calendar (its business hours and holidays).
  const businessHours = h('input', { type: 'checkbox', id: 'business-hours' });
  const search = h('input', { id: 'search', type: 'search', placeholder: 'Customer, agent, queue…' });
  const run = h('button', { type: 'button', id: 'run', class: 'primary' }, 'Show');
  const csv = h('a', { id: 'csv', href: '#', download: '' }, 'Download CSV');
  const contactsCsv = h('a', { id: 'contacts-csv', href: '#', download: '' }, 'Contact records (CSV)');
  const tabs = h('div', { class: 'tabs', role: 'tablist' }, KINDS.map((k) =>
    h('button', { type: 'button', role: 'tab', id: `tab-${k}`, 'aria-selected': k === state.kind ? 'true' : 'false', onclick: () => { state.kind = k; show(); } }, k)));
  const chart = h('div', { id: 'chart' });
  const table = h('div', { class: 'table-wrap', id: 'report-table' });
  const player = h('div', { id: 'player' });
  const status = h('p', { class: 'muted small', id: 'status', 'aria-live': 'polite' });
  replace(main,
    h('h1', { id: 'page-title' }, 'Reports'),
    h('div', { class: 'filters' },
      h('label', null, 'From', from), h('label', null, 'To', to), h('label', null, 'Interval', interval),
      h('label', null, 'Time zone', zone), h('label', null, 'Queue', queueSel), h('label', null, 'Agent', agentSel),
      h('label', null, 'Channel', channelSel), h('label', null, 'Search (recordings)', search),
      h('label', { style: 'flex-direction:row;align-items:center;gap:4px' }, compare, 'Compare with previous period'),
      h('label', { style: 'flex-direction:row;align-items:center;gap:4px', title: 'Queue and disposition reports: only each queue\'s opening hours' }, businessHours, 'Business hours only'),
      run, csv, contactsCsv),
    tabs, status, chart, table, player);

  get('/api/v1/queues').then((qs) => (qs.items || qs).forEach((q) => queueSel.append(h('option', { value: q.id }, q.name)))).catch(() => {});
  get('/api/v1/agents').then((as) => (as.items || as).forEach((a) => agentSel.append(h('option', { value: a.id }, a.name)))).catch(() => {});

  function params(range, group) {
    const p = new URLSearchParams({ from: range[0], to: range[1], tz: zone.value.trim() || 'UTC', interval: interval.value });
    if (group) p.set('group', group);
    if (queueSel.value) p.set('queue', queueSel.value);
    if (agentSel.value) p.set('agent', agentSel.value);
    if (channelSel.value) p.set('channel', channelSel.value);
    if (businessHours.checked && (state.kind === 'queues' || state.kind === 'dispositions')) p.set('business_hours', 'true');
    return p;
  }
  // A report's rows come a page at a time (the API's `next` cursor); the tables and the
  // chart show the whole range, so the pages are followed (bounded: a range that needs
  // more asks for a CSV download instead). Totals come whole with every page.
  const MAX_PAGES = 20;
  async function getAll(url) {
    const first = await get(url);
    let rep = first;
    for (let n = 1; rep.next && n < MAX_PAGES; n++) {
      rep = await get(`${url}&cursor=${encodeURIComponent(rep.next)}`);
      first.rows.push(...(rep.rows || []));
    }
    first.truncated = Boolean(rep.next);
    delete first.next;
    return first;
  }
  function previous() {
    const a = new Date(from.value + 'T00:00:00Z'); const b = new Date(to.value + 'T00:00:00Z');
    const days = Math.round((b - a) / 86400000) + 1;
    return [isoDay(new Date(a.getTime() - days * 86400000)), isoDay(new Date(a.getTime() - 86400000))];
  }

  async function show() {
    for (const b of tabs.children) b.setAttribute('aria-selected', b.id === `tab-${state.kind}` ? 'true' : 'false');
    const range = [from.value, to.value];
    status.textContent = 'Loading…';
    contactsCsv.href = `/api/v1/reports/contacts/csv?${params(range)}`;
    try {
      if (state.kind === 'recordings') {
        const p = params(range); if (search.value.trim()) p.set('q', search.value.trim());
        csv.href = `/api/v1/reports/recordings/csv?${p}`;
        const r = await get(`/api/v1/reports/recordings?${p}&limit=200`);
        replace(chart);
        renderRecordings(r.items);
        status.textContent = `${r.items.length} recordings`;
        return;
      }
      csv.href = `/api/v1/reports/${state.kind}/csv?${params(range)}`;
      const [rows, series, prev] = await Promise.all([
        getAll(`/api/v1/reports/${state.kind}?${params(range, 'dimension')}`),
        getAll(`/api/v1/reports/${state.kind}?${params(range, 'interval')}`),
        compare.checked ? getAll(`/api/v1/reports/${state.kind}?${params(previous(), 'dimension')}`) : null,
      ]);
      renderTable(rows, prev);
      renderChart(series, CHART_METRIC[state.kind]);
      status.textContent = `${rows.time_zone}, ${rows.from} – ${rows.to}`
        + (rows.truncated || series.truncated ? ' (first rows only: download the CSV for the whole range)' : '');
    } catch (e) {
      status.textContent = '';
      showError(e, 'Report failed');
    }
  }

  function keyOf(r) { return r.queue_id || r.agent_id || r.channel || r.choice || r.campaign || ''; }

  function renderTable(rep, prev) {
    const rows = rep.rows || [];
    const cols = [];
    for (const k of ['start', 'queue', 'agent', 'channel', 'dimension', 'choice', 'campaign']) if (rows.some((r) => k in r)) cols.push(k);
    for (const r of rows) for (const k of Object.keys(r)) if (!cols.includes(k) && !k.endsWith('_id') && k !== 'end') cols.push(k);
    const prevBy = new Map(((prev && prev.rows) || []).map((r) => [keyOf(r), r]));
    const cell = (r, c) => {
      const v = r[c];
      const p = prevBy.get(keyOf(r));
      const text = v === null || v === undefined ? '–' : String(v);
      if (!p || typeof v !== 'number' || typeof p[c] !== 'number') return h('td', { class: typeof v === 'number' ? 'num' : null }, text);
      const d = v - p[c];
      return h('td', { class: 'num', title: `previous: ${p[c]}` }, text, ' ', h('span', { class: d > 0 ? 'delta-up' : d < 0 ? 'delta-down' : 'muted' }, d === 0 ? '(=)' : `(${d > 0 ? '+' : ''}${Math.round(d * 100) / 100})`));
    };
    replace(table, rows.length === 0 ? h('p', { class: 'empty-hint' }, 'No data in this range.') :
      h('table', { class: 'grid', id: 'report' },
        h('thead', null, h('tr', null, cols.map((c) => h('th', { scope: 'col' }, c.replace(/_/g, ' '))))),
        h('tbody', null, rows.map((r) => h('tr', { 'data-key': keyOf(r) }, cols.map((c) => cell(r, c)))))));
  }

  function renderChart(rep, metric) {
    const pts = (rep.rows || []).filter((r) => r.start).map((r) => ({ label: r.start, v: Number(r[metric] || 0) }));
    const W = 800, H = 220, pad = 30;
    const max = Math.max(1, ...pts.map((p) => p.v));
    const bw = pts.length ? (W - 2 * pad) / pts.length : 0;
    const NS = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(NS, 'svg');
    svg.setAttribute('viewBox', `0 0 ${W} ${H}`); svg.setAttribute('class', 'chart'); svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', `${metric} per interval`);
    const el = (tag, attrs, text) => { const e = document.createElementNS(NS, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); if (text) e.textContent = text; svg.append(e); return e; };
    el('line', { x1: pad, y1: H - pad, x2: W - pad, y2: H - pad, stroke: '#999' });
    el('text', { x: 2, y: 12 }, `${metric} (max ${max})`);
    pts.forEach((p, i) => {
      const bh = (p.v / max) * (H - 2 * pad);
      const r = el('rect', { x: pad + i * bw + 1, y: H - pad - bh, width: Math.max(1, bw - 2), height: bh, fill: '#3b6fd8' });
      const t = document.createElementNS(NS, 'title'); t.textContent = `${p.label}: ${p.v}`; r.append(t);
      if (pts.length <= 31 || i % Math.ceil(pts.length / 12) === 0) el('text', { x: pad + i * bw, y: H - pad + 12 }, p.label.slice(5, 16).replace('T', ' '));
    });
    replace(chart, svg);
  }

  function renderRecordings(items) {
    replace(table, items.length === 0 ? h('p', { class: 'empty-hint' }, 'No recordings in this range.') :
      h('table', { class: 'grid', id: 'recordings' },
        h('thead', null, h('tr', null, ['Date', 'Agent', 'Customer', 'Queue', 'Duration', 'Disposition', ''].map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', null, items.map((r) => h('tr', { 'data-id': r.interaction_id },
          h('td', null, r.date), h('td', null, r.agent || '–'),
          h('td', null, r.customer_id ? h('a', { href: `/crm.html#/customers/${r.customer_id}` }, r.customer || 'customer') : (r.customer || '–')),
          h('td', null, r.queue || '–'), h('td', { class: 'num' }, r.duration_secs == null ? '–' : `${r.duration_secs} s`),
          h('td', null, r.disposition || '–'),
          h('td', null, h('button', { type: 'button', class: 'play', onclick: () => play(r) }, 'Play')))))));
  }

  let objectUrl = null;
  async function play(r) {
    // The recording is fetched whole and played from memory: the seek bar then works
    // whether or not the server answers HTTP range requests.
    try {
      const res = await fetch(r.recording_url, { credentials: 'same-origin' });
      if (!res.ok) throw new Error(`recording: ${res.status}`);
      if (objectUrl) URL.revokeObjectURL(objectUrl);
      objectUrl = URL.createObjectURL(await res.blob());
    } catch (e) {
      showError(e, 'Cannot play the recording');
      return;
    }
    const audio = h('audio', { controls: '', preload: 'auto', id: 'recording-audio', src: objectUrl });
    replace(player, h('section', { class: 'card', 'aria-label': 'Recording' },
      h('h2', null, `Recording ${r.date} — ${r.agent || ''}`), audio));
    audio.play().catch(() => {});
  }

  run.addEventListener('click', show);
  show();
}

// Last: the page starts once every constant above is initialised.
const page = await startPage({ title: 'Reports', roles: ['admin', 'supervisor'] });
if (page) run(page);

// Supervisor dashboard: live queue figures, agents with presence and load, waiting
// interactions. Nothing is refetched on events:
// - queue figures and the agents' presence and contact counts come as pushed deltas from
//   the wallboard feed (/api/v1/wallboard/stream: a snapshot, then only the queues and
//   agents that changed, one frame per event batch, shared by every open screen);
// - the waiting list is patched one row at a time from the event stream: an event about
//   an interaction fetches that interaction (removals need no fetch);
// - an agent whose contact count changed is fetched alone for its per-channel load.
// Whole lists are read only when a stream (re)connects or the server says frames were
// missed. Wait clocks tick locally.

import { get, post, put } from './api.js';
import { h, replace, channelIcon, channelName, duration, showError, toast } from './dom.js';
import { EventStream } from './stream.js';
import { startPage, setConnState } from './shell.js';

const page = await startPage({ title: 'Supervisor dashboard', roles: ['admin', 'supervisor'], live: true });
if (page) run(page);

/** Interaction events after which the interaction is gone from the waiting list. */
const GONE = new Set(['accepted', 'abandoned', 'closed', 'voicemail']);
/** Interaction events after which its waiting row may have changed (fetched alone). */
const CHANGED = new Set(['enqueued', 'requeued', 'offered', 'offer_timeout', 'offer_declined', 'offer_expired', 'transferred', 'visitor_left', 'visitor_returned', 'status', 'reopened']);
/** More changed agents than this at once: read the whole list instead. */
const AGENT_BATCH = 20;

function run({ main }) {
  const kpis = h('section', { class: 'kpis', 'aria-label': 'Totals', id: 'kpis' });
  const queuesBody = h('tbody', { id: 'queue-rows' });
  const agentsBody = h('tbody', { id: 'agent-rows' });
  const waitingBody = h('tbody', { id: 'waiting-rows' });
  const updated = h('p', { class: 'muted small', 'aria-live': 'off', id: 'updated' });
  replace(main,
    h('div', { style: 'display:flex;align-items:baseline;gap:12px' }, h('h1', { id: 'page-title' }, 'Supervisor dashboard'), updated),
    kpis,
    h('section', { class: 'card', 'aria-labelledby': 'q-h' }, h('h2', { id: 'q-h' }, 'Queues'),
      h('table', { class: 'grid', id: 'queue-table' },
        h('thead', null, h('tr', null, ['Queue', 'Waiting', 'Oldest wait', 'In service', 'Answered today', 'Abandoned today', 'Service level', 'Target']
          .map((t, k) => h('th', { scope: 'col', class: k ? 'num' : null }, t)))),
        queuesBody)),
    h('div', { class: 'two-col' },
      h('section', { class: 'card', 'aria-labelledby': 'a-h' }, h('h2', { id: 'a-h' }, 'Agents'),
        h('table', { class: 'grid', id: 'agent-table' },
          h('thead', null, h('tr', null, ['Agent', 'Presence', 'Since', 'Load', 'Skills', ''].map((t) => h('th', { scope: 'col' }, t)))),
          agentsBody)),
      h('section', { class: 'card', 'aria-labelledby': 'w-h' }, h('h2', { id: 'w-h' }, 'Waiting interactions'),
        h('table', { class: 'grid', id: 'waiting-table' },
          h('thead', null, h('tr', null, ['Channel', 'Customer', 'Queue', 'Waiting'].map((t) => h('th', { scope: 'col' }, t)))),
          waitingBody))));

  /** Queue settings (name, SLA target) by id, from /api/v1/queues. */
  const queues = new Map();
  /** Live queue rows by id, from the wallboard feed. */
  const live = new Map();
  /** Agents by id: the REST view (skills, capacity, per-channel load). */
  const agents = new Map();
  /** Per agent, the wallboard's presence, since and contact count (newer than REST's). */
  const agentLive = new Map();
  const presenceOf = (a) => agentLive.get(a.id)?.presence ?? a.presence;
  const presenceSince = (a) => agentLive.get(a.id)?.since ?? a.presence_since;
  /** Waiting interactions by id. */
  const waiting = new Map();
  /** Per interaction with an event not yet settled, the number of its last event (from one
   * page-wide counter): a fetch answer older than the last event about its interaction is
   * dropped (a newer one is on its way). Entries go once settled, so the map stays small. */
  const version = new Map();
  let eventSeq = 0;
  let skew = 0; // server clock − browser clock, ms (from the wallboard frames)
  const now = () => Date.now() + skew;
  const since = (iso) => (iso ? Math.max(0, (now() - Date.parse(iso)) / 1000) : 0);

  // ---- rendering (from memory; cheap, coalesced to one frame) ----
  let frame = 0;
  function render() {
    if (frame) return;
    frame = requestAnimationFrame(() => {
      frame = 0;
      renderKpis();
      renderQueues();
      renderAgents();
      renderWaiting();
      updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    });
  }

  function renderKpis() {
    const rows = [...live.values()];
    const sum = (k) => rows.reduce((a, s) => a + (Number(s[k]) || 0), 0);
    const oldest = rows.map((s) => s.oldest_enqueued_at).filter(Boolean).sort()[0];
    const list = [...agents.values()].map(presenceOf);
    const avail = list.filter((p) => p === 'available').length;
    const online = list.filter((p) => p !== 'offline').length;
    const kpi = (label, value, id, at) => h('div', { class: 'kpi', id },
      h('div', { class: 'kpi-value', dataset: at ? { since: at } : null }, String(value)), h('div', { class: 'kpi-label' }, label));
    replace(kpis,
      kpi('Waiting now', sum('waiting'), 'kpi-waiting'),
      kpi('Longest wait', duration(since(oldest)), 'kpi-oldest', oldest),
      kpi('In service', sum('in_service'), 'kpi-inservice'),
      kpi('Agents available', `${avail} / ${online} online`, 'kpi-agents'),
      kpi('Answered today', sum('answered'), 'kpi-answered'),
      kpi('Abandoned today', sum('abandoned') + sum('abandoned_short'), 'kpi-abandoned'));
  }

  function renderQueues() {
    const offered = new Map();
    for (const i of waiting.values()) if (i.status === 'offered') offered.set(i.queue_id, (offered.get(i.queue_id) || 0) + 1);
    const rows = [...live.values()].sort((a, b) => a.name.localeCompare(b.name));
    replace(queuesBody, rows.map((s) => {
      const q = queues.get(s.queue_id) || {};
      const sl = s.service_level_pct;
      const target = q.sla_target_pct;
      const cls = sl === null || sl === undefined ? 'muted' : target === undefined || sl >= target ? 'sla-ok' : 'sla-bad';
      const off = offered.get(s.queue_id);
      return h('tr', { dataset: { queue: s.name } },
        h('th', { scope: 'row' }, s.name),
        h('td', { class: 'num q-waiting' }, String(s.waiting), off ? h('span', { class: 'muted small q-offered' }, ` (${off} offered)`) : null),
        h('td', { class: 'num', dataset: s.oldest_enqueued_at ? { since: s.oldest_enqueued_at } : null }, s.oldest_enqueued_at ? duration(since(s.oldest_enqueued_at)) : '—'),
        h('td', { class: 'num' }, String(s.in_service ?? 0)),
        h('td', { class: 'num' }, String(s.answered)),
        h('td', { class: 'num' }, String(s.abandoned + s.abandoned_short), s.abandoned_short ? h('span', { class: 'muted small' }, ` (${s.abandoned_short} short)`) : null),
        h('td', { class: `num ${cls}` }, sl === null || sl === undefined ? '—' : `${Math.round(sl)}%`),
        h('td', { class: 'num muted' }, target === undefined ? `${s.sl_target_secs}s` : `${target}% in ${s.sl_target_secs}s`));
    }));
  }

  function renderAgents() {
    const list = [...agents.values()].sort((a, b) => a.name.localeCompare(b.name));
    replace(agentsBody, list.map((a) => {
      const load = a.load && typeof a.load === 'object' ? a.load : {};
      const cap = a.capacity || {};
      const loadText = ['voice', 'sms', 'email', 'chat'].filter((c) => cap[c] || load[c])
        .map((c) => `${channelName(c)} ${load[c] || 0}/${cap[c] ?? '?'}`).join(' · ') || '—';
      const skills = Object.entries(a.skills || {}).map(([k, v]) => `${k}=${v}`).join(', ');
      const presence = presenceOf(a);
      const at = presenceSince(a);
      const sel = h('select', { 'aria-label': `Set presence of ${a.name}`, class: 'btn-small' },
        ['available', 'away', 'offline'].map((p) => h('option', { value: p, selected: p === presence }, p)));
      if (!['available', 'away', 'offline'].includes(presence)) sel.prepend(h('option', { value: presence, selected: true, disabled: true }, presence));
      sel.addEventListener('change', async () => {
        try {
          await put(`/api/v1/agents/${a.id}/presence`, { presence: sel.value });
          toast(`${a.name} is now ${sel.value}.`, 'success');
        } catch (e) {
          showError(e);
          render();
        }
      });
      return h('tr', { dataset: { agent: a.name } },
        h('th', { scope: 'row' }, a.name),
        h('td', null, h('span', { class: `pill pill-${presence} agent-presence` }, presence.replace('_', '-'))),
        h('td', { class: 'muted', dataset: at ? { since: at } : null }, duration(since(at))),
        h('td', { class: 'agent-load' }, loadText),
        h('td', { class: 'muted small' }, skills),
        h('td', null, sel));
    }));
  }

  function renderWaiting() {
    const items = [...waiting.values()].sort((a, b) => Date.parse(a.enqueued_at) - Date.parse(b.enqueued_at));
    if (!items.length) {
      replace(waitingBody, h('tr', null, h('td', { colspan: 4, class: 'muted' }, 'Nobody is waiting.')));
      return;
    }
    replace(waitingBody, items.map((i) => {
      const q = queues.get(i.queue_id);
      return h('tr', { dataset: { interactionId: i.id } },
        h('td', null, channelIcon(i.channel)),
        h('td', null, (i.customer_address && !/^[0-9a-f-]{36}$/i.test(i.customer_address) ? i.customer_address : null)
          || i.subject || (i.channel === 'chat' ? 'Web visitor' : 'Unknown')),
        h('td', null, q ? q.name : '—'),
        h('td', { class: 'num' }, h('span', { dataset: { since: i.enqueued_at } }, duration(since(i.enqueued_at))),
          i.status === 'offered' ? h('span', { class: 'muted small' }, ' · offered') : null,
          // The customer left (widget closed): nobody will answer; close it as abandoned.
          i.visitor_left_at ? h('span', { class: 'muted small visitor-left' }, ' · visitor left ') : null,
          i.visitor_left_at ? h('button', { type: 'button', class: 'btn btn-small', onclick: () => abandon(i), 'aria-label': 'Close as abandoned: the visitor left' }, 'Close') : null));
    }));
  }

  async function abandon(i) {
    try {
      await post(`/api/v1/interactions/${i.id}/abandon`);
      toast('Closed as abandoned.');
    } catch (e) {
      showError(e);
    }
  }

  // ---- whole lists, on (re)connection only ----
  async function loadLists() {
    try {
      const [qs, ags, w] = await Promise.all([
        get('/api/v1/queues'),
        get('/api/v1/agents'),
        // Offered but not yet accepted: the customer is still waiting.
        get('/api/v1/interactions?status=queued,offered&limit=200'),
      ]);
      queues.clear();
      for (const q of qs) queues.set(q.id, q);
      agents.clear();
      for (const a of ags) agents.set(a.id, a);
      waiting.clear();
      for (const i of w.items) waiting.set(i.id, i);
      render();
    } catch (e) {
      if (e.status !== 0) showError(e);
    }
  }

  // ---- one row at a time ----
  const pendingInteractions = new Set();
  const pendingAgents = new Set();
  let allAgents = false;
  let flushTimer = null;
  function later() {
    if (!flushTimer) flushTimer = setTimeout(flush, 100);
  }
  async function flush() {
    flushTimer = null;
    const ids = [...pendingInteractions];
    pendingInteractions.clear();
    const agentIds = [...pendingAgents];
    pendingAgents.clear();
    const whole = allAgents || agentIds.length > AGENT_BATCH;
    allAgents = false;
    const jobs = ids.map(async (id) => {
      const v = version.get(id);
      let i = null;
      try {
        i = await get(`/api/v1/interactions/${id}`);
      } catch (e) {
        if (e.status !== 404) return;
      }
      if (version.get(id) !== v) return;
      version.delete(id);
      if (i && (i.status === 'queued' || i.status === 'offered')) waiting.set(id, i);
      else waiting.delete(id);
    });
    if (whole) {
      jobs.push(get('/api/v1/agents').then((ags) => { agents.clear(); for (const a of ags) agents.set(a.id, a); }).catch(() => {}));
    } else {
      for (const id of agentIds) {
        jobs.push(get(`/api/v1/agents/${id}`).then((a) => agents.set(a.id, a)).catch((e) => { if (e.status === 404) agents.delete(id); }));
      }
    }
    await Promise.all(jobs);
    render();
  }

  function onEvent(ev) {
    if (ev.kind === 'queue_updated' || ev.kind === 'queue_deleted') {
      get('/api/v1/queues').then((qs) => { queues.clear(); for (const q of qs) queues.set(q.id, q); render(); }).catch(() => {});
      return;
    }
    if (ev.kind === 'agent_updated' || ev.kind === 'agent_deleted') {
      if (ev.agent_id) pendingAgents.add(ev.agent_id);
      else allAgents = true;
      later();
      return;
    }
    const id = ev.interaction_id;
    if (!id) return;
    if (GONE.has(ev.kind)) {
      version.delete(id); // a fetch still on its way finds no entry and is dropped
      pendingInteractions.delete(id);
      if (waiting.delete(id)) render();
    } else if (CHANGED.has(ev.kind)) {
      version.set(id, ++eventSeq);
      pendingInteractions.add(id);
      later();
    }
  }

  function onBoard(m) {
    if (m.now) skew = Date.parse(m.now) - Date.now();
    if (m.kind === 'snapshot') live.clear();
    for (const q of m.queues || []) {
      if (q.removed) live.delete(q.queue_id);
      else live.set(q.queue_id, q);
    }
    if (m.kind === 'snapshot') agentLive.clear();
    for (const a of m.agents || []) {
      if (a.removed) { agentLive.delete(a.agent_id); agents.delete(a.agent_id); continue; }
      const old = agentLive.get(a.agent_id);
      if (m.kind === 'delta' && (!agents.has(a.agent_id) || (old && old.contacts !== a.contacts))) {
        pendingAgents.add(a.agent_id); // new, or its per-channel load changed
        later();
      }
      agentLive.set(a.agent_id, { presence: a.presence, since: a.since, contacts: a.contacts });
    }
    document.body.dataset.boardFrames = String(Number(document.body.dataset.boardFrames || 0) + 1);
    render();
  }

  setInterval(() => {
    for (const el of document.querySelectorAll('#root [data-since]')) {
      if (el.dataset.since) el.textContent = duration(since(el.dataset.since));
    }
  }, 1000);

  const stream = new EventStream({ onEvent, onOpen: () => loadLists(), onState: setConnState });
  const board = new EventStream({ path: '/api/v1/wallboard/stream', onEvent: onBoard });
  window.__sb = { stream, board };
  stream.start();
  board.start();
}

// Supervisor dashboard: live queue figures, agents with presence and load, waiting
// interactions. Refreshes on stream events (debounced) and every few seconds for the
// wait clocks.

import { get, post, put } from './api.js';
import { h, replace, channelIcon, channelName, duration, showError, toast } from './dom.js';
import { EventStream } from './stream.js';
import { startPage, setConnState } from './shell.js';

const page = await startPage({ title: 'Supervisor dashboard', roles: ['admin', 'supervisor'], live: true });
if (page) run(page);

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

  let queues = [];
  let timer = null;
  let busy = false;

  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      const [stats, agents, waiting, qs] = await Promise.all([
        get('/api/v1/queues/stats'),
        get('/api/v1/agents'),
        // Offered but not yet accepted: the customer is still waiting.
        get('/api/v1/interactions?status=queued,offered&limit=200'),
        get('/api/v1/queues'),
      ]);
      queues = qs;
      renderKpis(stats, agents, waiting.items);
      renderQueues(stats);
      renderAgents(agents);
      renderWaiting(waiting.items);
      updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      if (e.status !== 0) showError(e);
    } finally {
      busy = false;
    }
  }

  function renderKpis(stats, agents, waiting) {
    const sum = (k) => stats.reduce((a, s) => a + (Number(s[k]) || 0), 0);
    const oldest = Math.max(0, ...stats.map((s) => Number(s.oldest_wait_secs) || 0));
    const avail = agents.filter((a) => a.presence === 'available').length;
    const online = agents.filter((a) => a.presence !== 'offline').length;
    const kpi = (label, value, id) => h('div', { class: 'kpi', id }, h('div', { class: 'kpi-value' }, String(value)), h('div', { class: 'kpi-label' }, label));
    replace(kpis,
      kpi('Waiting now', waiting.length, 'kpi-waiting'),
      kpi('Longest wait', duration(oldest), 'kpi-oldest'),
      kpi('In service', sum('in_service'), 'kpi-inservice'),
      kpi('Agents available', `${avail} / ${online} online`, 'kpi-agents'),
      kpi('Answered today', sum('answered_today'), 'kpi-answered'),
      kpi('Abandoned today', sum('abandoned_today'), 'kpi-abandoned'));
  }

  function renderQueues(stats) {
    replace(queuesBody, stats.map((s) => {
      const sl = s.service_level_pct;
      const cls = sl === null || sl === undefined ? 'muted' : sl >= s.sla_target_pct ? 'sla-ok' : 'sla-bad';
      return h('tr', { dataset: { queue: s.name } },
        h('th', { scope: 'row' }, s.name),
        h('td', { class: 'num q-waiting' }, String(s.waiting), s.offered ? h('span', { class: 'muted small q-offered' }, ` (${s.offered} offered)`) : null),
        h('td', { class: 'num' }, s.waiting ? duration(s.oldest_wait_secs) : '—'),
        h('td', { class: 'num' }, String(s.in_service)),
        h('td', { class: 'num' }, String(s.answered_today)),
        h('td', { class: 'num' }, String(s.abandoned_today)),
        h('td', { class: `num ${cls}` }, sl === null || sl === undefined ? '—' : `${Math.round(sl)}%`),
        h('td', { class: 'num muted' }, `${s.sla_target_pct}% in ${s.sla_target_secs}s`));
    }));
  }

  function renderAgents(agents) {
    replace(agentsBody, agents.map((a) => {
      const load = a.load && typeof a.load === 'object' ? a.load : {};
      const cap = a.capacity || {};
      const loadText = ['voice', 'sms', 'email', 'chat'].filter((c) => cap[c] || load[c])
        .map((c) => `${channelName(c)} ${load[c] || 0}/${cap[c] ?? '?'}`).join(' · ') || '—';
      const skills = Object.entries(a.skills || {}).map(([k, v]) => `${k}=${v}`).join(', ');
      const sel = h('select', { 'aria-label': `Set presence of ${a.name}`, class: 'btn-small' },
        ['available', 'away', 'offline'].map((p) => h('option', { value: p, selected: p === a.presence }, p)));
      if (!['available', 'away', 'offline'].includes(a.presence)) sel.prepend(h('option', { value: a.presence, selected: true, disabled: true }, a.presence));
      sel.addEventListener('change', async () => {
        try {
          await put(`/api/v1/agents/${a.id}/presence`, { presence: sel.value });
          toast(`${a.name} is now ${sel.value}.`, 'success');
        } catch (e) {
          showError(e);
        }
        schedule();
      });
      return h('tr', { dataset: { agent: a.name } },
        h('th', { scope: 'row' }, a.name),
        h('td', null, h('span', { class: `pill pill-${a.presence} agent-presence` }, a.presence.replace('_', '-'))),
        h('td', { class: 'muted' }, duration((Date.now() - new Date(a.presence_since)) / 1000)),
        h('td', { class: 'agent-load' }, loadText),
        h('td', { class: 'muted small' }, skills),
        h('td', null, sel));
    }));
  }

  function renderWaiting(items) {
    if (!items.length) {
      replace(waitingBody, h('tr', null, h('td', { colspan: 4, class: 'muted' }, 'Nobody is waiting.')));
      return;
    }
    replace(waitingBody, items.map((i) => {
      const q = queues.find((x) => x.id === i.queue_id);
      return h('tr', { dataset: { interactionId: i.id } },
        h('td', null, channelIcon(i.channel)),
        h('td', null, (i.customer_address && !/^[0-9a-f-]{36}$/i.test(i.customer_address) ? i.customer_address : null)
          || i.subject || (i.channel === 'chat' ? 'Web visitor' : 'Unknown')),
        h('td', null, q ? q.name : '—'),
        h('td', { class: 'num' }, duration((Date.now() - new Date(i.enqueued_at)) / 1000),
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
      schedule();
    } catch (e) {
      showError(e);
    }
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(refresh, 150);
  }

  const stream = new EventStream({ onEvent: (ev) => { if (ev.kind !== 'hello') schedule(); }, onOpen: () => refresh(), onState: setConnState });
  window.__sb = { stream };
  stream.start();
  refresh();
  setInterval(refresh, 5000);
}

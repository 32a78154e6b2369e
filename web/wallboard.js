// Live wallboard: one WebSocket (/api/v1/wallboard/stream) gives a snapshot, then deltas
// carrying only the queues and agents that changed; rows are patched in place by id, and
// a one-second clock ticks the longest waits and times in state locally — nothing is
// refetched.

import { h, replace, duration } from './app/dom.js';
import { startPage, setConnState } from './app/shell.js';
import { EventStream } from './app/stream.js';

const page = await startPage({ title: 'Wallboard', roles: ['admin', 'supervisor'], live: true });
if (page) run(page);

function run({ main }) {
  const queues = new Map();
  const agents = new Map();
  let skew = 0; // server now − browser now, ms
  const qGrid = h('div', { class: 'wb-queues', id: 'wb-queues' });
  const aBody = h('tbody', { id: 'wb-agents' });
  replace(main, h('h1', { id: 'page-title' }, 'Wallboard'), qGrid,
    h('section', { class: 'card' }, h('h2', null, 'Agents'),
      h('table', { class: 'grid' }, h('thead', null, h('tr', null, ['Agent', 'State', 'Time in state', 'Contacts'].map((t) => h('th', { scope: 'col' }, t)))), aBody)));

  const now = () => Date.now() + skew;
  const secsSince = (iso) => (iso ? Math.max(0, Math.floor((now() - Date.parse(iso)) / 1000)) : 0);
  const fmt = (v, unit = '') => (v === null || v === undefined ? '–' : `${v}${unit}`);

  function queueCard(q) {
    return h('article', { class: 'wb-queue', id: `q-${q.queue_id}`, 'data-name': q.name },
      h('h2', null, q.name),
      h('div', null, h('span', { class: 'big', 'data-f': 'waiting' }, String(q.waiting)), ' waiting'),
      h('dl', null,
        h('dt', null, 'Longest wait'), h('dd', { 'data-f': 'longest', 'data-since': q.oldest_enqueued_at || '' }, q.oldest_enqueued_at ? duration(secsSince(q.oldest_enqueued_at)) : '–'),
        h('dt', null, 'Answered today'), h('dd', { 'data-f': 'answered' }, String(q.answered)),
        h('dt', null, 'Abandoned today'), h('dd', { 'data-f': 'abandoned' }, `${q.abandoned} (+${q.abandoned_short} short)`),
        h('dt', null, `Service level (${q.sl_target_secs} s)`), h('dd', { 'data-f': 'sl' }, fmt(q.service_level_pct, ' %')),
        h('dt', null, 'ASA today'), h('dd', { 'data-f': 'asa' }, fmt(q.asa_secs, ' s'))));
  }
  function agentRow(a) {
    return h('tr', { id: `a-${a.agent_id}` }, h('td', null, a.name),
      h('td', { class: `presence-${a.presence}`, 'data-f': 'presence' }, a.presence),
      h('td', { 'data-f': 'since', 'data-since': a.since || '' }, a.since ? duration(secsSince(a.since)) : '–'),
      h('td', { 'data-f': 'contacts' }, String(a.contacts)));
  }
  function putQueue(q) {
    const old = document.getElementById(`q-${q.queue_id}`);
    if (q.removed) { queues.delete(q.queue_id); if (old) old.remove(); return; }
    queues.set(q.queue_id, q);
    const card = queueCard(q);
    if (old) old.replaceWith(card); else qGrid.append(card);
  }
  function putAgent(a) {
    const old = document.getElementById(`a-${a.agent_id}`);
    if (a.removed) { agents.delete(a.agent_id); if (old) old.remove(); return; }
    agents.set(a.agent_id, a);
    const row = agentRow(a);
    if (old) old.replaceWith(row); else aBody.append(row);
  }

  function onMessage(m) {
    if (!m || !m.kind) return;
    if (m.now) skew = Date.parse(m.now) - Date.now();
    if (m.kind === 'snapshot') {
      replace(qGrid); replace(aBody); queues.clear(); agents.clear();
    }
    (m.queues || []).forEach(putQueue);
    (m.agents || []).forEach(putAgent);
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  }

  setInterval(() => {
    for (const el of document.querySelectorAll('[data-since]')) {
      if (el.dataset.since) el.textContent = duration(secsSince(el.dataset.since));
    }
  }, 1000);

  new EventStream({ path: '/api/v1/wallboard/stream', onEvent: onMessage, onState: setConnState }).start();
}

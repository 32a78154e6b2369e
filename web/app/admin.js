// Administration: users (roles, password, disable), agents (skills, capacity, groups, SIP
// user, SIP phone password), queues (requirement, strategy, SLA, timeouts). Each section has a list and one
// form that creates, or edits the row chosen with "Edit".

import { get, post, put, patch } from './api.js';
import { h, replace, $, $$, toast } from './dom.js';
import { startPage } from './shell.js';

const ROLES = ['admin', 'supervisor', 'agent', 'marketer', 'kb_editor'];
const STRATEGIES = ['longest_idle', 'least_occupied', 'round_robin', 'best_skill', 'ring_all'];

const page = await startPage({ title: 'Administration', roles: ['admin'] });
if (page) run(page);

function input(id, label, attrs = {}) {
  return h('label', { for: id }, label, h('input', { id, name: id, ...attrs }));
}
function formError() {
  return h('p', { class: 'form-error', role: 'alert', hidden: true });
}
function fail(errEl, e) {
  errEl.textContent = e.message;
  errEl.hidden = false;
  // The field named by the problem, in the form that failed (several forms have a password).
  const scope = errEl.closest('form') || document;
  const f = e.field && scope.querySelector(`[data-field="${CSS.escape(e.field)}"]`);
  if (f) f.focus();
}

function run({ main }) {
  const tabs = [['users', 'Users'], ['agents', 'Agents'], ['queues', 'Queues']];
  const panels = {};
  const tablist = h('div', { class: 'tabs', role: 'tablist', 'aria-label': 'Sections' });
  for (const [key, label] of tabs) {
    const btn = h('button', { type: 'button', role: 'tab', id: `tab-${key}`, 'aria-controls': `panel-${key}`, 'aria-selected': 'false', tabindex: '-1' }, label);
    btn.addEventListener('click', () => show(key));
    btn.addEventListener('keydown', (e) => {
      const k = tabs.findIndex((t) => t[0] === key);
      if (e.key === 'ArrowRight' || e.key === 'ArrowLeft') {
        const next = tabs[(k + (e.key === 'ArrowRight' ? 1 : tabs.length - 1)) % tabs.length][0];
        show(next);
        $(`#tab-${next}`).focus();
      }
    });
    tablist.appendChild(btn);
    panels[key] = h('section', { id: `panel-${key}`, role: 'tabpanel', 'aria-labelledby': `tab-${key}`, hidden: true, class: 'page-panel' });
  }
  replace(main, h('h1', { id: 'page-title' }, 'Administration'), tablist, ...Object.values(panels));

  function show(key) {
    for (const [k] of tabs) {
      const sel = k === key;
      $(`#tab-${k}`).setAttribute('aria-selected', String(sel));
      $(`#tab-${k}`).tabIndex = sel ? 0 : -1;
      panels[k].hidden = !sel;
    }
    history.replaceState(null, '', `#${key}`);
    ({ users: loadUsers, agents: loadAgents, queues: loadQueues })[key]();
  }

  // ------------------------------------------------------------ users
  const usersBody = h('tbody', { id: 'user-rows' });
  const uErr = formError();
  let editingUser = null;
  const uForm = h('form', { id: 'user-form', class: 'card', novalidate: true },
    h('h2', { id: 'user-form-title' }, 'New user'),
    h('div', { class: 'form-grid' },
      input('user-username', 'Username', { autocomplete: 'off', 'data-field': 'username' }),
      input('user-display', 'Display name', { 'data-field': 'display_name' }),
      input('user-password', 'Password (8+ characters)', { type: 'password', autocomplete: 'new-password', 'data-field': 'password' }),
      h('fieldset', { class: 'checks', 'data-field': 'roles' }, h('legend', null, 'Roles'),
        ROLES.map((r) => h('label', null, h('input', { type: 'checkbox', name: 'role', value: r }), r))),
      h('label', { class: 'checks' }, h('input', { type: 'checkbox', id: 'user-disabled' }), 'Disabled')),
    uErr,
    h('div', { class: 'row-actions', style: 'margin-top:10px' },
      h('button', { type: 'submit', class: 'btn btn-primary', id: 'user-submit' }, 'Create user'),
      h('button', { type: 'button', class: 'btn', id: 'user-cancel', onclick: () => editUser(null) }, 'Cancel edit')));
  replace(panels.users,
    h('div', { class: 'card' }, h('h2', null, 'Users'),
      h('table', { class: 'grid', id: 'user-table' },
        h('thead', null, h('tr', null, ['Username', 'Display name', 'Roles', 'Status', ''].map((t) => h('th', { scope: 'col' }, t)))), usersBody)),
    uForm);
  let users = [];
  async function loadUsers() {
    try {
      users = (await get('/api/v1/users?limit=200')).items;
      replace(usersBody, users.map((u) => h('tr', { dataset: { username: u.username } },
        h('th', { scope: 'row' }, u.username), h('td', null, u.display_name), h('td', null, u.roles.join(', ')),
        h('td', null, h('span', { class: `pill ${u.disabled ? 'pill-abandoned' : 'pill-active'}` }, u.disabled ? 'disabled' : 'active')),
        h('td', null, h('button', { type: 'button', class: 'btn btn-small', onclick: () => editUser(u), 'aria-label': `Edit ${u.username}` }, 'Edit')))));
    } catch (e) {
      toast(e.message, 'error');
    }
  }
  function editUser(u, quiet) {
    editingUser = u;
    uErr.hidden = true;
    $('#user-form-title').textContent = u ? `Edit ${u.username}` : 'New user';
    $('#user-username').value = u ? u.username : '';
    $('#user-username').disabled = !!u;
    $('#user-display').value = u ? u.display_name : '';
    $('#user-password').value = '';
    $('#user-password').placeholder = u ? 'leave empty to keep' : '';
    for (const c of $$('input[name="role"]', uForm)) c.checked = !!u && u.roles.includes(c.value);
    $('#user-disabled').checked = !!(u && u.disabled);
    $('#user-submit').textContent = u ? 'Save changes' : 'Create user';
    $('#user-cancel').hidden = !u;
    if (!quiet) (u ? $('#user-display') : $('#user-username')).focus();
  }
  uForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    uErr.hidden = true;
    const roles = $$('input[name="role"]:checked', uForm).map((c) => c.value);
    const display = $('#user-display').value.trim();
    const password = $('#user-password').value;
    try {
      if (editingUser) {
        const body = { roles, disabled: $('#user-disabled').checked };
        if (display) body.display_name = display;
        if (password) body.password = password;
        await patch(`/api/v1/users/${editingUser.id}`, body);
        toast(`Saved ${editingUser.username}.`, 'success');
      } else {
        const body = { username: $('#user-username').value.trim(), password, roles };
        if (display) body.display_name = display;
        const u = await post('/api/v1/users', body);
        toast(`Created ${u.username}.`, 'success');
      }
      editUser(null, true);
      await loadUsers();
    } catch (ex) {
      fail(uErr, ex);
    }
  });

  // ------------------------------------------------------------ agents
  const agentsBody = h('tbody', { id: 'agent-rows' });
  const aErr = formError();
  let editingAgent = null;
  const userSelect = h('select', { id: 'agent-user', 'data-field': 'user_id' });
  const aForm = h('form', { id: 'agent-form', class: 'card', novalidate: true },
    h('h2', { id: 'agent-form-title' }, 'New agent'),
    h('div', { class: 'form-grid' },
      input('agent-name', 'Name', { 'data-field': 'name' }),
      h('label', { for: 'agent-user' }, 'User account', userSelect),
      input('agent-skills', 'Skills (e.g. language:en=5, billing=3)', { 'data-field': 'skills' }),
      input('agent-groups', 'Overflow groups (comma-separated)', { 'data-field': 'groups' }),
      input('agent-sip', 'SIP user', { 'data-field': 'sip_user' }),
      ...['voice', 'sms', 'email', 'chat'].map((c) => input(`agent-cap-${c}`, `Capacity: ${c}`, { type: 'number', min: 0, max: 100, 'data-field': 'capacity' }))),
    // The phone's SIP password is set on its own (admins only): the hub keeps only its
    // digest, so it is never shown again.
    h('fieldset', { id: 'agent-sip-password-box', class: 'checks', hidden: true },
      h('legend', null, 'SIP phone password'),
      input('agent-sip-password', 'New SIP password (8+ characters)', { type: 'password', autocomplete: 'new-password', 'data-field': 'password' }),
      h('button', { type: 'button', class: 'btn', id: 'agent-sip-password-set', onclick: () => setSipPassword() }, 'Set SIP password')),
    aErr,
    h('div', { class: 'row-actions', style: 'margin-top:10px' },
      h('button', { type: 'submit', class: 'btn btn-primary', id: 'agent-submit' }, 'Create agent'),
      h('button', { type: 'button', class: 'btn', id: 'agent-cancel', onclick: () => editAgent(null) }, 'Cancel edit')));
  replace(panels.agents,
    h('div', { class: 'card' }, h('h2', null, 'Agents'),
      h('table', { class: 'grid', id: 'agent-table' },
        h('thead', null, h('tr', null, ['Name', 'Skills', 'Capacity', 'Groups', 'SIP', 'Presence', ''].map((t) => h('th', { scope: 'col' }, t)))), agentsBody)),
    aForm);
  let agents = [];
  async function loadAgents() {
    try {
      agents = await get('/api/v1/agents');
      users = (await get('/api/v1/users?limit=200')).items;
      replace(userSelect, h('option', { value: '' }, '— none —'), users.map((u) => h('option', { value: u.id }, u.username)));
      replace(agentsBody, agents.map((a) => h('tr', { dataset: { agent: a.name } },
        h('th', { scope: 'row' }, a.name),
        h('td', null, skillsText(a.skills)),
        h('td', { class: 'small' }, ['voice', 'sms', 'email', 'chat'].map((c) => `${c} ${a.capacity[c]}`).join(' · ')),
        h('td', null, (a.groups || []).join(', ')),
        h('td', null, a.sip_user || ''),
        h('td', null, h('span', { class: `pill pill-${a.presence}` }, a.presence)),
        h('td', null, h('button', { type: 'button', class: 'btn btn-small', onclick: () => editAgent(a), 'aria-label': `Edit ${a.name}` }, 'Edit')))));
      if (!editingAgent) editAgent(null, true);
    } catch (e) {
      toast(e.message, 'error');
    }
  }
  function skillsText(s) {
    return Object.entries(s || {}).map(([k, v]) => `${k}=${v}`).join(', ');
  }
  function parseSkills(text) {
    const out = {};
    for (const part of text.split(',').map((x) => x.trim()).filter(Boolean)) {
      const m = /^([a-z0-9_.:-]+)\s*=\s*(\d{1,3})$/i.exec(part) || /^([a-z0-9_.:-]+)$/i.exec(part);
      if (!m) throw Object.assign(new Error(`Cannot read skill "${part}": use name=level, e.g. billing=3`), { field: 'skills' });
      out[m[1].toLowerCase()] = m[2] ? Number(m[2]) : 1;
    }
    return out;
  }
  function editAgent(a, quiet) {
    editingAgent = a;
    aErr.hidden = true;
    $('#agent-form-title').textContent = a ? `Edit ${a.name}` : 'New agent';
    $('#agent-name').value = a ? a.name : '';
    userSelect.value = a && a.user_id ? a.user_id : '';
    $('#agent-skills').value = a ? skillsText(a.skills) : '';
    $('#agent-groups').value = a ? (a.groups || []).join(', ') : '';
    $('#agent-sip').value = a && a.sip_user ? a.sip_user : '';
    const defaults = { voice: 1, sms: 3, email: 8, chat: 3 };
    for (const c of ['voice', 'sms', 'email', 'chat']) $(`#agent-cap-${c}`).value = a ? a.capacity[c] : defaults[c];
    $('#agent-sip-password').value = '';
    $('#agent-sip-password-box').hidden = !a;
    $('#agent-submit').textContent = a ? 'Save changes' : 'Create agent';
    $('#agent-cancel').hidden = !a;
    if (!quiet) $('#agent-name').focus();
  }
  async function setSipPassword() {
    aErr.hidden = true;
    if (!editingAgent) return;
    const field = $('#agent-sip-password');
    try {
      const r = await put(`/api/v1/agents/${editingAgent.id}/sip-password`, { password: field.value });
      field.value = '';
      toast(`SIP password set for ${editingAgent.name} (SIP user ${r.sip_user}).`, 'success');
    } catch (ex) {
      fail(aErr, ex);
    }
  }
  aForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    aErr.hidden = true;
    try {
      const body = {
        name: $('#agent-name').value.trim(),
        skills: parseSkills($('#agent-skills').value),
        groups: $('#agent-groups').value.split(',').map((x) => x.trim()).filter(Boolean),
        capacity: Object.fromEntries(['voice', 'sms', 'email', 'chat'].map((c) => [c, Number($(`#agent-cap-${c}`).value) || 0])),
      };
      const sip = $('#agent-sip').value.trim();
      if (sip) body.sip_user = sip;
      if (userSelect.value) body.user_id = userSelect.value;
      if (editingAgent) {
        await patch(`/api/v1/agents/${editingAgent.id}`, body);
        toast(`Saved ${body.name}.`, 'success');
      } else {
        await post('/api/v1/agents', body);
        toast(`Created agent ${body.name}.`, 'success');
      }
      editAgent(null, true);
      await loadAgents();
    } catch (ex) {
      fail(aErr, ex);
    }
  });

  // ------------------------------------------------------------ queues
  const queuesBody = h('tbody', { id: 'queue-rows' });
  const qErr = formError();
  let editingQueue = null;
  const qForm = h('form', { id: 'queue-form', class: 'card', novalidate: true },
    h('h2', { id: 'queue-form-title' }, 'New queue'),
    h('div', { class: 'form-grid' },
      input('queue-name', 'Name', { 'data-field': 'name' }),
      input('queue-requirement', 'Skill requirement (e.g. billing >= 2)', { 'data-field': 'requirement' }),
      h('label', { for: 'queue-strategy' }, 'Strategy', h('select', { id: 'queue-strategy', 'data-field': 'strategy' }, STRATEGIES.map((s) => h('option', { value: s }, s.replace(/_/g, ' '))))),
      input('queue-priority', 'Priority (-100..100)', { type: 'number', min: -100, max: 100, 'data-field': 'priority' }),
      input('queue-sla-pct', 'SLA target %', { type: 'number', min: 1, max: 100, 'data-field': 'sla_target_pct' }),
      input('queue-sla-secs', 'SLA target seconds', { type: 'number', min: 1, 'data-field': 'sla_target_secs' }),
      input('queue-accept', 'Offer timeout (s)', { type: 'number', min: 3, max: 600, 'data-field': 'accept_timeout_secs' }),
      input('queue-wrapup', 'Wrap-up time (s)', { type: 'number', min: 0, max: 3600, 'data-field': 'wrap_up_secs' }),
      input('queue-order', 'Rule order', { type: 'number', 'data-field': 'rule_order' }),
      input('queue-keywords', 'Entry keywords (comma-separated)', { 'data-field': 'entry_rules' })),
    qErr,
    h('div', { class: 'row-actions', style: 'margin-top:10px' },
      h('button', { type: 'submit', class: 'btn btn-primary', id: 'queue-submit' }, 'Create queue'),
      h('button', { type: 'button', class: 'btn', id: 'queue-cancel', onclick: () => editQueue(null) }, 'Cancel edit')));
  replace(panels.queues,
    h('div', { class: 'card' }, h('h2', null, 'Queues'),
      h('table', { class: 'grid', id: 'queue-table' },
        h('thead', null, h('tr', null, ['Name', 'Requirement', 'Strategy', 'Priority', 'SLA', 'Offer timeout', 'Order', ''].map((t) => h('th', { scope: 'col' }, t)))), queuesBody)),
    qForm);
  async function loadQueues() {
    try {
      const queues = await get('/api/v1/queues');
      replace(queuesBody, queues.map((q) => h('tr', { dataset: { queue: q.name } },
        h('th', { scope: 'row' }, q.name), h('td', null, h('code', null, q.requirement || '—')), h('td', null, q.strategy.replace(/_/g, ' ')),
        h('td', null, String(q.priority)), h('td', null, `${q.sla_target_pct}% in ${q.sla_target_secs}s`),
        h('td', null, `${q.accept_timeout_secs}s`), h('td', null, String(q.rule_order)),
        h('td', null, h('button', { type: 'button', class: 'btn btn-small', onclick: () => editQueue(q), 'aria-label': `Edit ${q.name}` }, 'Edit')))));
      if (!editingQueue) editQueue(null, true);
    } catch (e) {
      toast(e.message, 'error');
    }
  }
  function editQueue(q, quiet) {
    editingQueue = q;
    qErr.hidden = true;
    $('#queue-form-title').textContent = q ? `Edit ${q.name}` : 'New queue';
    $('#queue-name').value = q ? q.name : '';
    $('#queue-requirement').value = q ? q.requirement : '';
    $('#queue-strategy').value = q ? q.strategy : 'longest_idle';
    $('#queue-priority').value = q ? q.priority : 0;
    $('#queue-sla-pct').value = q ? q.sla_target_pct : 80;
    $('#queue-sla-secs').value = q ? q.sla_target_secs : 20;
    $('#queue-accept').value = q ? q.accept_timeout_secs : 20;
    $('#queue-wrapup').value = q ? q.wrap_up_secs : 0;
    $('#queue-order').value = q ? q.rule_order : 100;
    const kws = q ? (q.entry_rules || []).flatMap((r) => r.keywords || []) : [];
    $('#queue-keywords').value = kws.join(', ');
    $('#queue-submit').textContent = q ? 'Save changes' : 'Create queue';
    $('#queue-cancel').hidden = !q;
    if (!quiet) $('#queue-name').focus();
  }
  qForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    qErr.hidden = true;
    const num = (id) => Number($(id).value);
    const body = {
      name: $('#queue-name').value.trim(),
      requirement: $('#queue-requirement').value.trim(),
      strategy: $('#queue-strategy').value,
      priority: num('#queue-priority'),
      sla_target_pct: num('#queue-sla-pct'),
      sla_target_secs: num('#queue-sla-secs'),
      accept_timeout_secs: num('#queue-accept'),
      wrap_up_secs: num('#queue-wrapup'),
      rule_order: num('#queue-order'),
    };
    const kws = $('#queue-keywords').value.split(',').map((x) => x.trim()).filter(Boolean);
    // Entry rules: the keywords field edits the keyword rule; other rules are kept as they are.
    const oldRules = editingQueue ? editingQueue.entry_rules || [] : [];
    const oldKws = oldRules.flatMap((r) => r.keywords || []);
    if (!editingQueue || kws.join(',') !== oldKws.join(',')) {
      const others = oldRules.filter((r) => !(r.keywords || []).length);
      body.entry_rules = kws.length ? [...others, { keywords: kws }] : others;
    }
    try {
      if (editingQueue) {
        await patch(`/api/v1/queues/${editingQueue.id}`, body);
        toast(`Saved queue ${body.name}.`, 'success');
      } else {
        await post('/api/v1/queues', body);
        toast(`Created queue ${body.name}.`, 'success');
      }
      editQueue(null, true);
      await loadQueues();
    } catch (ex) {
      fail(qErr, ex);
    }
  });

  const first = (location.hash || '#users').slice(1);
  show(tabs.some((t) => t[0] === first) ? first : 'users');
  editUser(null, true);
}

// The agents' unified inbox: sign-in, presence, offers with countdown, conversations from
// every channel, history, replies, canned responses, notes, transfer, wrap-up, close,
// customer panel (screen-pop + CRM), knowledge-base suggestions, live updates.
//
// REST is the source of truth; WebSocket frames only tell us what to refetch. After a
// reconnect everything is refetched, and messages are keyed by id, so a dropped connection
// neither loses nor duplicates anything.

import { api, get, post, put, getOptional, whoami, login, logout, ApiError, upload } from './api.js';
import { h, replace, $, $$, channelIcon, channelName, ago, clock, toast, showError } from './dom.js';
import { updateSmsCounter, showSmsDeliveries } from './sms.js';
import { EventStream } from './stream.js';

const OPEN = ['offered', 'active', 'wrap_up'];
const STATUS_LABEL = {
  queued: 'Waiting', offered: 'Offered', active: 'Active', wrap_up: 'Wrap-up', closed: 'Closed',
  abandoned: 'Abandoned', voicemail: 'Voicemail', overflowed: 'Overflowed',
};

const state = {
  me: null,
  interactions: new Map(), // id -> interaction (open + recently closed)
  offers: new Map(), // offer id -> { offer, interaction }
  cards: new Map(), // interaction id -> customer_card from `offered` frames
  customers: new Map(), // customer id -> profile (or null when absent)
  unread: new Set(),
  selected: null,
  messages: [], // messages of the selected interaction, in transcript order
  messagesOf: null, // the interaction state.messages were loaded for
  rendered: [], // ids rendered in #messages, in order
  agents: [],
  queues: [],
  canned: [],
  signal: { supported: null, lastTyping: 0, lastRead: null },
  drafts: new Map(), // interaction id -> { text, key }
  seenAt: new Map(), // interaction id -> time of the visitor's latest read receipt
};

let stream = null;
let refreshTimer = null;
let countdownTimer = null;

// ---------------------------------------------------------------- boot & sign-in

async function boot() {
  let me;
  try {
    me = await whoami();
  } catch (e) {
    me = null;
    showError(e);
  }
  if (me) await enter(me);
  else showLogin();
}

function showLogin() {
  $('#app').hidden = true;
  $('#login-view').hidden = false;
  $('#login-username').focus();
}

$('#login-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const err = $('#login-error');
  err.hidden = true;
  const username = $('#login-username').value.trim();
  const password = $('#login-password').value;
  if (!username || !password) {
    err.textContent = 'Enter your username and password.';
    err.hidden = false;
    return;
  }
  const btn = $('#login-submit');
  btn.disabled = true;
  try {
    await login(username, password);
    const me = await whoami();
    $('#login-password').value = '';
    await enter(me);
  } catch (ex) {
    err.textContent = ex.status === 401 ? 'Wrong username or password.' : ex.message;
    err.hidden = false;
    $('#login-password').select();
  } finally {
    btn.disabled = false;
  }
});

$('#logout').addEventListener('click', async () => {
  try {
    if (state.me && state.me.agent_id) await setPresence('offline', true);
    await logout();
  } catch (e) {
    showError(e);
  }
  if (stream) stream.stop();
  location.reload();
});

async function enter(me) {
  state.me = me;
  $('#login-view').hidden = true;
  $('#app').hidden = false;
  const roles = me.roles || [];
  replace($('#me-name'), me.display_name || me.username);
  for (const a of $$('[data-role]')) {
    const need = a.dataset.role;
    a.hidden = !(roles.includes(need) || (need === 'supervisor' && roles.includes('admin')));
  }
  if (!roles.some((r) => STAFF_ROLES.includes(r))) {
    noInbox();
    return;
  }
  if (!me.agent_id) {
    $('#presence').disabled = true;
    toast('Your account has no agent record: you can read conversations but not receive offers.', 'info');
  }
  loadStatic();
  stream = new EventStream({ onEvent, onOpen: () => refreshAll(), onState: setConnState });
  window.__sb = { stream, state }; // for diagnostics and the browser tests
  stream.start();
  await refreshAll();
  $('#conversation').focus();
  countdownTimer = setInterval(tickCountdowns, 250);
}

/** Roles the inbox is for (the interaction API's staff). */
const STAFF_ROLES = ['admin', 'supervisor', 'agent'];

// Marketers and KB editors have no inbox: say so and point to their pages, without calling
// the staff-only APIs or opening the event stream.
function noInbox() {
  $('.inbox-grid').hidden = true;
  for (const sel of ['#conn-state', '#presence', '.presence-label']) $(sel).hidden = true;
  $('.skip-link').setAttribute('href', '#no-inbox');
  const main = h('main', { id: 'no-inbox', class: 'no-inbox', tabindex: '-1', 'aria-labelledby': 'no-inbox-title' },
    h('h1', { id: 'no-inbox-title' }, 'No inbox for your role'),
    h('p', null, 'The inbox is where agents and supervisors answer customers. Your work is here:'),
    h('ul', null,
      h('li', null, h('a', { href: '/crm.html' }, 'Customers')),
      h('li', null, h('a', { href: '/kb.html' }, 'Knowledge base'))));
  $('#app').appendChild(main);
  main.focus();
  document.body.dataset.stream = 'none';
}

function setConnState(s) {
  const el = $('#conn-state');
  el.className = `conn conn-${s}`;
  el.textContent = s === 'live' ? 'Live' : s === 'connecting' ? 'Connecting…' : 'Offline — reconnecting';
  document.body.dataset.stream = s;
}

async function loadStatic() {
  try {
    const [canned, queues, agents] = await Promise.all([
      get('/api/v1/canned-responses'), get('/api/v1/queues'), get('/api/v1/agents'),
    ]);
    state.canned = canned;
    state.queues = queues;
    state.agents = agents;
    const sel = $('#canned-select');
    replace(sel, h('option', { value: '' }, 'Canned responses…'),
      canned.map((c) => h('option', { value: c.id }, c.title)));
  } catch (e) {
    showError(e, 'Could not load canned responses and queues');
  }
}

// ---------------------------------------------------------------- presence

const presenceSel = $('#presence');
presenceSel.addEventListener('change', () => setPresence(presenceSel.value));

async function setPresence(p, quiet) {
  if (!state.me || !state.me.agent_id) return;
  try {
    await put(`/api/v1/agents/${state.me.agent_id}/presence`, { presence: p });
    showPresence(p);
    if (!quiet) announce(`Status: ${p}`);
  } catch (e) {
    showError(e, 'Could not change your status');
    await refreshPresence();
  }
}

function showPresence(p) {
  presenceSel.value = p;
  presenceSel.dataset.presence = p;
}

async function refreshPresence() {
  if (!state.me || !state.me.agent_id) return;
  try {
    const a = await get(`/api/v1/agents/${state.me.agent_id}`);
    showPresence(a.presence);
  } catch (_) { /* shown elsewhere */ }
}

// ---------------------------------------------------------------- live updates

function onEvent(ev) {
  if (!ev || !ev.kind || ev.kind === 'hello') return;
  const iid = ev.interaction_id;
  if (ev.kind === 'offered' && ev.customer_card && iid) state.cards.set(iid, ev.customer_card);
  if (ev.kind === 'presence' && state.me && ev.agent_id === state.me.agent_id && ev.data && ev.data.presence) {
    showPresence(ev.data.presence);
    return;
  }
  if (ev.kind === 'typing') {
    // Chat typing indicators: {by: "visitor"|"agent", active}. Our own echo is ignored.
    const d = ev.data || {};
    if (iid && iid === state.selected && d.by !== 'agent') {
      if (d.active === false) hideTyping();
      else showTyping();
    }
    return;
  }
  if (ev.kind === 'visitor_left') {
    if (iid && iid === state.selected) {
      const t = $('#typing');
      t.textContent = 'The visitor left the chat.';
      t.hidden = false;
      clearTimeout(typingTimer);
    }
    return;
  }
  if (ev.kind === 'read') {
    const d = ev.data || {};
    if (iid && d.by === 'visitor') {
      const prev = state.seenAt.get(iid);
      if (!prev || prev < ev.at) state.seenAt.set(iid, ev.at);
      if (iid === state.selected) renderSeen();
    }
    return;
  }
  if ((ev.kind === 'message' || ev.kind === 'note') && iid) {
    if (iid === state.selected) {
      // Only what is new: nothing when the message is already shown (our own reply).
      const mid = ev.data && ev.data.message_id;
      // Our own reply's event can outrun the answer to its POST: wait for that answer
      // (which adds the message) before deciding to fetch.
      const pending = ev.data && ev.data.direction === 'outbound' && state.sendingReply;
      if (pending) {
        pending.then(() => {
          if (state.selected === iid && (!mid || !state.messages.some((m) => m.id === mid))) loadMessages(iid, false, mid);
        });
      } else if (!mid || !state.messages.some((m) => m.id === mid)) loadMessages(iid, false, mid);
    } else if (ev.kind === 'note') {
      return;
    } else if (ev.data && ev.data.direction === 'inbound') {
      state.unread.add(iid);
      renderList();
      const i = state.interactions.get(iid);
      announce(`New message from ${i ? who(i) : 'a customer'}`);
    }
    if (ev.data && ev.data.direction === 'inbound' && iid === state.selected) hideTyping();
    return;
  }
  if (ev.kind === 'offered' && (!state.me || ev.agent_id === state.me.agent_id)) {
    announce(`New ${channelName(ev.data && ev.data.channel).toLowerCase()} offer`);
  }
  // An SMS's delivery state (receipt, `unknown`, failure) is shown on its message.
  if (ev.kind === 'sms_status' || (['delivered', 'delivery_failed'].includes(ev.kind) && iid && iid === state.selected)) {
    if (iid && iid === state.selected) smsDeliveries();
    return;
  }
  // Delivery receipts change nothing the transcript shows.
  if (['delivered', 'delivery_failed'].includes(ev.kind)) return;
  scheduleRefresh();
}

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refreshAll, 80);
}

let refreshing = null;
let refreshAgain = false;
async function refreshAll() {
  if (refreshing) {
    refreshAgain = true;
    return refreshing;
  }
  refreshing = (async () => {
    try {
      await Promise.all([refreshOffers(), refreshInteractions(), refreshPresence()]);
      if (state.selected) await loadSelected(false);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        if (stream) stream.stop();
        showLogin();
        return;
      }
      if (!(e instanceof ApiError && e.status === 0)) showError(e);
    }
  })();
  try {
    await refreshing;
  } finally {
    refreshing = null;
  }
  if (refreshAgain) {
    refreshAgain = false;
    return refreshAll();
  }
}

// ---------------------------------------------------------------- offers

async function refreshOffers() {
  if (!state.me || !state.me.agent_id) return;
  const offers = await get(`/api/v1/agents/${state.me.agent_id}/offers`);
  const pending = offers.filter((o) => o.state === 'pending');
  const next = new Map();
  for (const o of pending) {
    const old = state.offers.get(o.id);
    let interaction = old && old.interaction;
    let preview = old && old.preview;
    if (!interaction) {
      try {
        interaction = await get(`/api/v1/interactions/${o.interaction_id}`);
        const msgs = await get(`/api/v1/interactions/${o.interaction_id}/messages`);
        const last = msgs.filter((m) => m.direction === 'inbound').pop();
        preview = last ? last.body : null;
      } catch (_) {
        interaction = interaction || null;
      }
    }
    next.set(o.id, { offer: o, interaction, preview });
  }
  state.offers = next;
  renderOffers();
}

function renderOffers() {
  const box = $('#offers');
  const ids = new Set(state.offers.keys());
  for (const el of $$('.offer', box)) if (!ids.has(el.dataset.offerId)) el.remove();
  for (const [id, { offer, interaction, preview }] of state.offers) {
    if (box.querySelector(`[data-offer-id="${CSS.escape(id)}"]`)) continue;
    const card = state.cards.get(offer.interaction_id);
    const name = (card && (card.name || card.display_name)) || (interaction ? who(interaction) : 'Unknown customer');
    const subject = interaction && (interaction.subject || (interaction.metadata && interaction.metadata.preview));
    const total = Math.max(1, (new Date(offer.expires_at) - new Date(offer.created_at)) / 1000);
    const el = h('article', {
      class: 'offer', dataset: { offerId: id, interactionId: offer.interaction_id, channel: offer.channel },
      'aria-label': `${channelName(offer.channel)} offer from ${name}`,
    },
    h('div', { class: 'offer-head' }, channelIcon(offer.channel),
      h('div', { class: 'offer-who' }, h('strong', null, name), h('span', { class: 'muted' }, channelName(offer.channel))),
      h('span', { class: 'offer-countdown', 'aria-label': 'Seconds left', dataset: { expires: offer.expires_at, total } }, '')),
    subject ? h('p', { class: 'offer-subject' }, subject) : null,
    preview ? h('p', { class: 'offer-preview' }, preview.length > 140 ? `${preview.slice(0, 140)}…` : preview) : null,
    card && card.tags && Array.isArray(card.tags) && card.tags.length
      ? h('p', { class: 'tags' }, card.tags.slice(0, 5).map((t) => h('span', { class: 'tag' }, String(t)))) : null,
    h('div', { class: 'offer-bar', 'aria-hidden': 'true' }, h('span', { class: 'offer-bar-fill' })),
    h('div', { class: 'offer-buttons' },
      h('button', { type: 'button', class: 'btn btn-primary offer-accept', onclick: () => acceptOffer(id) }, 'Accept'),
      h('button', { type: 'button', class: 'btn offer-decline', onclick: () => declineOffer(id) }, 'Decline')));
    box.appendChild(el);
  }
  const n = state.offers.size;
  $('#offers-empty').hidden = n > 0;
  const count = $('#offer-count');
  count.hidden = n === 0;
  count.textContent = String(n);
  document.title = n ? `(${n}) Inbox · Switchboard` : 'Inbox · Switchboard';
  tickCountdowns();
}

function tickCountdowns() {
  const now = Date.now();
  let expired = false;
  for (const el of $$('.offer-countdown')) {
    const left = (new Date(el.dataset.expires).getTime() - now) / 1000;
    const secs = Math.max(0, Math.ceil(left));
    if (el.textContent !== `${secs}s`) el.textContent = `${secs}s`;
    const offer = el.closest('.offer');
    const fill = offer.querySelector('.offer-bar-fill');
    const pct = Math.max(0, Math.min(100, (left / Number(el.dataset.total)) * 100));
    fill.style.width = `${pct}%`;
    offer.classList.toggle('offer-urgent', left < 5);
    if (left <= 0 && !offer.dataset.expired) {
      offer.dataset.expired = '1';
      offer.classList.add('offer-expired');
      for (const b of $$('button', offer)) b.disabled = true;
      expired = true;
    }
  }
  if (expired) setTimeout(scheduleRefresh, 600);
}

async function acceptOffer(offerId) {
  const entry = state.offers.get(offerId);
  const el = $(`[data-offer-id="${CSS.escape(offerId)}"]`);
  if (el) for (const b of $$('button', el)) b.disabled = true;
  try {
    const i = await post(`/api/v1/offers/${offerId}/accept`);
    state.offers.delete(offerId);
    state.interactions.set(i.id, i);
    renderOffers();
    renderList();
    await select(i.id);
    announce(`Accepted ${channelName(i.channel).toLowerCase()} from ${who(i)}`);
    $('#reply-input').focus();
  } catch (e) {
    showError(e, 'Could not accept');
    if (el) for (const b of $$('button', el)) b.disabled = false;
    scheduleRefresh();
  }
  return entry;
}

async function declineOffer(offerId) {
  try {
    await post(`/api/v1/offers/${offerId}/decline`);
    state.offers.delete(offerId);
    renderOffers();
    announce('Offer declined');
  } catch (e) {
    showError(e, 'Could not decline');
    scheduleRefresh();
  }
}

// ---------------------------------------------------------------- conversation list

async function refreshInteractions() {
  const mine = state.me.agent_id ? `&agent_id=${state.me.agent_id}` : '';
  const [open, closed] = await Promise.all([
    get(`/api/v1/interactions?status=active,wrap_up&limit=100${mine}`),
    get(`/api/v1/interactions?status=closed,abandoned&limit=15${mine}`),
  ]);
  state.interactions = new Map();
  for (const i of [...open.items, ...closed.items]) state.interactions.set(i.id, i);
  if (state.selected && !state.interactions.has(state.selected)) {
    // Transferred away or otherwise no longer ours: keep showing it read-only if visible.
    try {
      state.interactions.set(state.selected, await get(`/api/v1/interactions/${state.selected}`));
    } catch (_) {
      deselect();
    }
  }
  renderList();
  loadNames();
}

// Customer names for the list (CRM profiles; cached, absent CRM = null).
let namesLoading = false;
async function loadNames() {
  if (namesLoading) return;
  namesLoading = true;
  let changed = false;
  try {
    for (const i of [...state.interactions.values()].slice(0, 40)) {
      if (!i.customer_id || state.customers.has(i.customer_id)) continue;
      let c = null;
      try {
        c = await getOptional(`/api/v1/customers/${i.customer_id}`);
      } catch (_) {
        c = null;
      }
      state.customers.set(i.customer_id, c);
      if (c) changed = true;
    }
  } finally {
    namesLoading = false;
  }
  if (changed) {
    renderList();
    const sel = state.selected && state.interactions.get(state.selected);
    if (sel) renderHeader(sel);
  }
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** The customer's address when it means something to a person (not a chat session id). */
function humanAddress(a) {
  return a && !UUID_RE.test(a) ? a : null;
}

function who(i) {
  const card = state.cards.get(i.id);
  const cust = i.customer_id ? state.customers.get(i.customer_id) : null;
  return (card && (card.name || card.display_name)) || (cust && (cust.name || cust.display_name))
    || humanAddress(i.customer_address) || i.subject || (i.channel === 'chat' ? 'Web visitor' : 'Unknown customer');
}

function renderList() {
  const open = [];
  const closed = [];
  const me = state.me && state.me.agent_id;
  for (const i of state.interactions.values()) {
    // The lists show only what is ours; a conversation transferred away stays viewable
    // (read-only) while selected, but leaves the lists.
    if (me && i.agent_id !== me && OPEN.includes(i.status)) continue;
    (OPEN.includes(i.status) ? open : closed).push(i);
  }
  open.sort((a, b) => (b.answered_at || b.created_at).localeCompare(a.answered_at || a.created_at));
  closed.sort((a, b) => (b.closed_at || b.created_at).localeCompare(a.closed_at || a.created_at));
  const item = (i) => {
    const unread = state.unread.has(i.id);
    const sel = i.id === state.selected;
    return h('li', { class: 'conv-item-wrap' },
      h('button', {
        type: 'button', class: `conv-item${sel ? ' selected' : ''}${unread ? ' unread' : ''}`,
        dataset: { interactionId: i.id, channel: i.channel, status: i.status },
        'aria-current': sel ? 'true' : null,
        onclick: () => select(i.id, true),
      },
      channelIcon(i.channel),
      h('span', { class: 'conv-item-main' },
        h('span', { class: 'conv-item-name' }, who(i)),
        h('span', { class: 'conv-item-sub' }, i.subject || channelName(i.channel))),
      h('span', { class: 'conv-item-meta' },
        h('span', { class: `pill pill-${i.status}` }, STATUS_LABEL[i.status] || i.status),
        h('span', { class: 'muted small' }, ago(i.closed_at || i.answered_at || i.created_at)),
        unread ? h('span', { class: 'unread-dot', 'aria-label': 'New messages' }) : null)));
  };
  replace($('#conv-list'), open.map(item));
  replace($('#closed-list'), closed.map(item));
  $('#conv-empty').hidden = open.length > 0;
}

// ---------------------------------------------------------------- conversation view

function deselect() {
  document.body.classList.remove('conv-open');
  state.selected = null;
  state.messages = [];
  state.rendered = [];
  $('#conv-view').hidden = true;
  $('#conv-placeholder').hidden = false;
  replace($('#customer-panel'), h('p', { class: 'empty-hint' }, 'No conversation selected.'));
  replace($('#customer-history'));
  replace($('#kb-suggestions'), h('p', { class: 'empty-hint' }, 'No conversation selected.'));
}

async function select(id, focusComposer) {
  saveDraft();
  const changed = state.selected !== id;
  state.selected = id;
  state.unread.delete(id);
  if (changed) {
    state.messages = [];
    state.messagesOf = null;
    state.rendered = [];
    replace($('#messages'));
    hideTyping();
    state.signal.lastRead = null;
  }
  $('#conv-placeholder').hidden = true;
  $('#conv-view').hidden = false;
  document.body.classList.add('conv-open');
  renderList();
  restoreDraft();
  await loadSelected(changed);
  if (focusComposer && !$('#reply-input').disabled) $('#reply-input').focus();
}

async function loadSelected(full) {
  const id = state.selected;
  if (!id) return;
  let i;
  try {
    i = await get(`/api/v1/interactions/${id}`);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      toast('That conversation is no longer visible to you.', 'info');
      deselect();
      return;
    }
    throw e;
  }
  if (state.selected !== id) return;
  state.interactions.set(id, i);
  renderHeader(i);
  await loadMessages(id, full);
  if (full) {
    loadCustomer(i);
    loadKb(i);
    loadReadState(i);
  }
}

/** A voice interaction whose call is up (controlled through the voice channel's API). */
function isLiveCall(i) {
  return !!i && i.channel === 'voice' && i.status === 'active';
}

function renderHeader(i) {
  replace($('#conv-channel'), channelIcon(i.channel));
  replace($('#conv-title'), who(i));
  const queue = state.queues.find((q) => q.id === i.queue_id);
  const bits = [channelName(i.channel)];
  if (humanAddress(i.customer_address) && i.customer_address !== who(i)) bits.push(i.customer_address);
  if (queue) bits.push(`queue ${queue.name}`);
  if (i.subject) bits.push(i.subject);
  bits.push(`started ${ago(i.created_at)}`);
  replace($('#conv-sub'), bits.join(' · '));
  const st = $('#conv-status');
  st.className = `pill pill-${i.status}`;
  st.textContent = STATUS_LABEL[i.status] || i.status;
  const open = OPEN.includes(i.status);
  const mine = state.me.agent_id && i.agent_id === state.me.agent_id;
  $('#btn-transfer').disabled = !(mine && ['offered', 'active'].includes(i.status));
  // Live call controls (voice): the agent on the call, or a supervisor.
  const roles = state.me.roles || [];
  const supervisor = roles.includes('supervisor') || roles.includes('admin');
  $('#voice-actions').hidden = !(isLiveCall(i) && (mine || supervisor));
  for (const b of ['#btn-listen', '#btn-barge']) $(b).hidden = !supervisor;
  $('#btn-wrapup').disabled = !(mine && i.status === 'active');
  $('#btn-close').disabled = !(mine && open);
  const canWrite = mine && ['active', 'wrap_up'].includes(i.status);
  $('#reply-input').disabled = !canWrite;
  $('#reply-send').disabled = !canWrite;
  $('#canned-select').disabled = !canWrite;
  $('#composer-hint').textContent = canWrite ? ''
    : i.status === 'closed' ? `Closed${i.disposition ? ` as ${i.disposition}` : ''}${i.summary ? ` — ${i.summary}` : ''}.`
      : mine ? '' : 'Read-only: this conversation is not assigned to you.';
  renderEmailTools(i, canWrite);
}

// The transcript is loaded once per selection; after that only the messages after the
// last one shown are fetched (`?after=`), and a sent reply is added from the POST answer.
// `want`: the message an event announced; should it not be among the newer ones (it was
// stamped before the last one shown but committed after it), the transcript is reloaded.
async function loadMessages(id, full, want) {
  const last = !full && state.messagesOf === id && state.messages.length ? state.messages[state.messages.length - 1].id : null;
  let msgs;
  try {
    msgs = await get(`/api/v1/interactions/${id}/messages${last ? `?after=${encodeURIComponent(last)}` : ''}`);
  } catch (e) {
    if (e instanceof ApiError && e.status === 0) return;
    // The anchor message is gone (erased): start over.
    if (last && e instanceof ApiError && e.status >= 400 && e.status < 500 && e.status !== 401 && e.status !== 404) return loadMessages(id, true);
    throw e;
  }
  if (state.selected !== id) return;
  if (last) {
    addMessages(msgs);
    if (want && !state.messages.some((m) => m.id === want)) return loadMessages(id, true);
  } else {
    state.messages = msgs;
    state.messagesOf = id;
  }
  renderMessages();
  markRead();
}

/** Sort key of an RFC 3339 UTC time with any number of fraction digits. */
function timeKey(t) {
  const m = /^(.*?:\d\d)(?:\.(\d+))?Z$/.exec(t || '');
  return m ? `${m[1]}.${(m[2] || '').padEnd(9, '0')}` : String(t);
}

/** Adds messages not shown yet, keeping the server's order (time, then id). */
function addMessages(msgs) {
  const known = new Set(state.messages.map((m) => m.id));
  const fresh = msgs.filter((m) => m && !known.has(m.id));
  if (!fresh.length) return;
  state.messages = [...state.messages, ...fresh].sort((a, b) => {
    const ka = timeKey(a.created_at);
    const kb = timeKey(b.created_at);
    return ka < kb ? -1 : ka > kb ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
  });
}

function renderMessages() {
  const list = $('#messages');
  const ids = state.messages.map((m) => m.id);
  const prefix = state.rendered.length <= ids.length && state.rendered.every((x, k) => ids[k] === x);
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 60;
  if (!prefix) {
    replace(list);
    state.rendered = [];
  }
  const i = state.interactions.get(state.selected);
  for (const m of state.messages.slice(state.rendered.length)) {
    list.appendChild(messageEl(m, i));
    state.rendered.push(m.id);
  }
  if (!state.messages.length) {
    if (!list.querySelector('.msg-empty')) {
      list.appendChild(h('li', { class: 'msg-empty muted' },
        i && i.channel === 'voice' ? 'Voice call — no written messages.' : 'No messages yet.'));
    }
  } else {
    const e = list.querySelector('.msg-empty');
    if (e) e.remove();
  }
  if (atBottom || !prefix) list.scrollTop = list.scrollHeight;
  renderSeen();
  if (i && i.channel === 'sms') smsDeliveries();
}

function smsDeliveries() {
  const i = state.interactions.get(state.selected);
  if (i) showSmsDeliveries(i, () => state.selected === i.id);
}
function smsCounter() {
  updateSmsCounter(state.selected && state.interactions.get(state.selected), $('#reply-input').value, mode() === 'reply');
}

// Read receipts: outbound messages up to the visitor's latest `read` event show "Seen".
function renderSeen() {
  const seen = state.seenAt.get(state.selected);
  for (const el of $$('#messages .msg-out')) {
    const m = state.messages.find((x) => x.id === el.dataset.messageId);
    const isSeen = !!(seen && m && m.created_at <= seen);
    let tag = el.querySelector('.msg-seen');
    if (isSeen && !tag) el.querySelector('.msg-meta').appendChild(h('span', { class: 'msg-seen' }, '✓ Seen'));
    else if (!isSeen && tag) tag.remove();
  }
}

async function loadReadState(i) {
  if (i.channel !== 'chat') return;
  try {
    const evs = await get(`/api/v1/interactions/${i.id}/events`);
    const last = evs.filter((e) => e.kind === 'read' && e.data && e.data.by === 'visitor').pop();
    if (last) state.seenAt.set(i.id, last.at);
    if (state.selected === i.id) renderSeen();
  } catch (_) { /* optional */ }
}

function agentName(id) {
  if (!id) return 'Agent';
  if (state.me && id === state.me.agent_id) return 'You';
  const a = state.agents.find((x) => x.id === id);
  return a ? a.name : 'Agent';
}

function messageEl(m, i) {
  const kind = m.direction === 'inbound' ? 'in' : m.direction === 'internal' ? 'note' : 'out';
  const author = kind === 'in' ? (i ? who(i) : 'Customer') : kind === 'note' ? `Internal note · ${agentName(m.author_agent_id)}` : agentName(m.author_agent_id);
  const atts = Array.isArray(m.attachments) ? m.attachments : [];
  return h('li', { class: `msg msg-${kind}`, dataset: { messageId: m.id, direction: m.direction } },
    h('div', { class: 'msg-meta' }, h('span', { class: 'msg-author' }, author), h('time', { datetime: m.created_at }, clock(m.created_at))),
    h('div', { class: 'msg-body' }, m.body),
    kind === 'in' ? emailDetails(m, i) : null,
    atts.length ? h('ul', { class: 'msg-atts' }, atts.map((a) => {
      const name = (a && (a.filename || a.name)) || 'attachment';
      const url = a && typeof a.url === 'string' && /^(https?:)?\//.test(a.url) ? a.url : null;
      return h('li', null, url ? h('a', { href: url, target: '_blank', rel: 'noopener' }, name) : name);
    })) : null);
}

/**
 * An inbound email shown as mail on demand: From/To/Cc and subject, the HTML in a
 * sandboxed iframe (sandbox="" — no scripts, no forms, no same-origin), the full text
 * with the quoted history, and the original message one click away.
 */
function emailDetails(m, i) {
  const mailbox = i && i.channel === 'email' && i.metadata && i.metadata.email && i.metadata.email.mailbox;
  if (!mailbox) return null;
  const base = `/api/v1/email/${encodeURIComponent(mailbox)}/messages/${m.id}`;
  const box = h('div', { class: 'email-view' });
  const det = h('details', { class: 'email-details', ontoggle: async () => {
    if (!det.open || box.dataset.loaded) return;
    box.dataset.loaded = '1';
    try {
      const v = await get(base);
      const addrs = (l) => (Array.isArray(l) ? l : l ? [l] : []).map((a) => (a.name ? `${a.name} <${a.address}>` : a.address)).join(', ');
      replace(box,
        h('dl', { class: 'email-head' },
          h('dt', null, 'From'), h('dd', null, addrs(v.from)),
          h('dt', null, 'To'), h('dd', null, addrs(v.to)),
          v.cc && v.cc.length ? [h('dt', null, 'Cc'), h('dd', null, addrs(v.cc))] : null,
          h('dt', null, 'Subject'), h('dd', null, v.subject || '')),
        v.html ? h('iframe', { class: 'email-html', sandbox: '', referrerpolicy: 'no-referrer', title: 'Email content', srcdoc: v.html, style: 'width:100%;min-height:240px;border:1px solid #ccc;background:#fff' }) : null,
        !v.html || v.collapsed ? h('pre', { class: 'email-text', style: 'white-space:pre-wrap' }, v.text || '') : null,
        h('a', { href: v.raw_url, download: 'original.eml' }, 'Original message (.eml)'));
    } catch (e) {
      replace(box, h('p', { class: 'muted' }, 'Could not load the email.'));
    }
  } }, h('summary', null, 'Show as email'), box);
  return det;
}

// ---------------------------------------------------------------- composer

function mode() {
  return $('#mode-note').checked ? 'note' : 'reply';
}
for (const r of $$('input[name="mode"]')) {
  r.addEventListener('change', () => {
    const note = mode() === 'note';
    $('#composer').classList.toggle('composer-note', note);
    $('#reply-label').textContent = note ? 'Internal note (not sent to the customer)' : 'Reply to customer';
    $('#reply-input').placeholder = note ? 'Write an internal note — only colleagues see it' : 'Write a reply…  (Ctrl+Enter to send)';
    $('#reply-send').textContent = note ? 'Add note' : 'Send';
    smsCounter();
  });
}

$('#canned-select').addEventListener('change', (e) => {
  const c = state.canned.find((x) => x.id === e.target.value);
  e.target.value = '';
  if (c) insertText(c.body);
});

function insertText(text) {
  const ta = $('#reply-input');
  if (ta.disabled) return;
  const start = ta.selectionStart ?? ta.value.length;
  const end = ta.selectionEnd ?? ta.value.length;
  const before = ta.value.slice(0, start);
  const sep = before && !/\s$/.test(before) ? ' ' : '';
  ta.value = before + sep + text + ta.value.slice(end);
  const pos = (before + sep + text).length;
  ta.focus();
  ta.setSelectionRange(pos, pos);
  smsCounter();
}

function draftFor(id) {
  if (!state.drafts.has(id)) state.drafts.set(id, { text: '', key: newKey() });
  return state.drafts.get(id);
}
function newKey() {
  return (crypto.randomUUID && crypto.randomUUID()) || `k-${Date.now()}-${Math.random().toString(16).slice(2)}`;
}
function saveDraft() {
  if (state.selected) draftFor(state.selected).text = $('#reply-input').value;
}
function restoreDraft() {
  $('#reply-input').value = state.selected ? draftFor(state.selected).text : '';
  smsCounter();
}
$('#reply-input').addEventListener('input', smsCounter);

$('#reply-input').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    $('#composer').requestSubmit();
  }
});
$('#reply-input').addEventListener('input', () => {
  const d = state.selected && draftFor(state.selected);
  if (d) {
    d.text = $('#reply-input').value;
    // Edited after a failed attempt: a different message, so a new idempotency key.
    if (d.attempted) {
      d.key = newKey();
      d.attempted = false;
    }
  }
  if (mode() === 'reply' && $('#reply-input').value) sendSignal('typing', { active: true });
});

$('#composer').addEventListener('submit', async (e) => {
  e.preventDefault();
  const id = state.selected;
  const ta = $('#reply-input');
  const body = ta.value.trim();
  if (!id || !body) {
    ta.focus();
    return;
  }
  const btn = $('#reply-send');
  btn.disabled = true;
  const d = draftFor(id);
  d.attempted = true;
  try {
    const mb = emailMailboxOf(state.interactions.get(id));
    const sent = mode() === 'note'
      ? post(`/api/v1/interactions/${id}/notes`, { body })
      : mb
        ? post(`/api/v1/email/${encodeURIComponent(mb)}/interactions/${id}/reply`, {
          body, idempotency_key: d.key, reply_all: $('#email-reply-all').checked, attachments: d.files || [],
        })
        : post(`/api/v1/interactions/${id}/messages`, { body, idempotency_key: d.key });
    const settled = sent.catch(() => null);
    state.sendingReply = settled;
    settled.then(() => { if (state.sendingReply === settled) state.sendingReply = null; });
    const m = await sent;
    state.drafts.set(id, { text: '', key: newKey() });
    if (state.selected === id && $('#email-attached')) renderAttached(draftFor(id));
    if (state.selected === id) ta.value = '';
    smsCounter();
    if (mode() === 'reply') sendSignal('typing', { active: false });
    if (state.selected === id && state.messagesOf === id && m && m.id) {
      addMessages([m]);
      renderMessages();
    }
  } catch (ex) {
    showError(ex, mode() === 'note' ? 'Note not saved' : 'Reply not sent');
  } finally {
    btn.disabled = false;
    ta.focus();
  }
});

// Phone width: back from the conversation to the lists (the conversation stays selected).
$('#btn-back').addEventListener('click', () => {
  document.body.classList.remove('conv-open');
  const item = state.selected && document.querySelector(`.conv-item[data-interaction-id="${state.selected}"]`);
  if (item) item.focus();
  else $('#conv-heading').scrollIntoView();
});

// Chat typing indicators and read receipts (POST /chat/v1/agent-signal), when the chat
// module offers them; a 404/405 switches the feature off for this page.
async function sendSignal(kind, extra) {
  const i = state.selected && state.interactions.get(state.selected);
  if (!i || i.channel !== 'chat' || state.signal.supported === false) return;
  if (kind === 'typing' && !(extra && extra.active === false)) {
    const now = Date.now();
    if (now - state.signal.lastTyping < 2500) return;
    state.signal.lastTyping = now;
  }
  try {
    await api('POST', '/chat/v1/agent-signal', { interaction_id: i.id, kind, ...(extra || {}) });
    if (kind === 'typing' && extra && extra.active === false) state.signal.lastTyping = 0;
    state.signal.supported = true;
  } catch (e) {
    if (e instanceof ApiError && [404, 405, 501].includes(e.status)) state.signal.supported = false;
  }
}

function markRead() {
  const i = state.selected && state.interactions.get(state.selected);
  if (!i || i.channel !== 'chat' || !OPEN.includes(i.status)) return;
  const lastIn = [...state.messages].reverse().find((m) => m.direction === 'inbound');
  if (!lastIn || state.signal.lastRead === lastIn.id || document.hidden) return;
  state.signal.lastRead = lastIn.id;
  sendSignal('read');
}
document.addEventListener('visibilitychange', markRead);

let typingTimer = null;
function showTyping() {
  const t = $('#typing');
  const i = state.interactions.get(state.selected);
  t.textContent = `${i ? who(i) : 'The customer'} is typing…`;
  t.hidden = false;
  clearTimeout(typingTimer);
  typingTimer = setTimeout(hideTyping, 6000);
}
function hideTyping() {
  $('#typing').hidden = true;
}

// ---------------------------------------------------------------- actions

function openDialog(dlg, trigger) {
  dlg.returnFocusTo = trigger;
  const err = dlg.querySelector('.form-error');
  if (err) err.hidden = true;
  dlg.showModal();
}
for (const dlg of $$('dialog')) {
  dlg.addEventListener('close', () => dlg.returnFocusTo && dlg.returnFocusTo.focus());
  for (const b of $$('[data-close]', dlg)) b.addEventListener('click', () => dlg.close());
}
function dialogError(dlg, e) {
  const err = dlg.querySelector('.form-error');
  err.textContent = e.message;
  err.hidden = false;
}

$('#btn-transfer').addEventListener('click', async (e) => {
  try {
    const [agents, queues] = await Promise.all([get('/api/v1/agents'), get('/api/v1/queues')]);
    state.agents = agents;
    state.queues = queues;
  } catch (ex) {
    showError(ex);
  }
  const others = state.agents.filter((a) => a.id !== state.me.agent_id);
  replace($('#transfer-agent'), others.map((a) => h('option', { value: a.id }, `${a.name} — ${a.presence}`)));
  replace($('#transfer-queue'), state.queues.map((q) => h('option', { value: q.id }, q.name)));
  openDialog($('#transfer-dialog'), e.currentTarget);
});
for (const r of $$('input[name="target"]')) {
  r.addEventListener('change', () => {
    const toAgent = $('input[name="target"]:checked').value === 'agent';
    $('#transfer-agent').disabled = !toAgent;
    $('#transfer-queue').disabled = toAgent;
  });
}
$('#transfer-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const dlg = $('#transfer-dialog');
  const id = state.selected;
  const toAgent = $('input[name="target"]:checked').value === 'agent';
  const body = toAgent ? { agent_id: $('#transfer-agent').value } : { queue_id: $('#transfer-queue').value };
  if (!Object.values(body)[0]) {
    dialogError(dlg, new Error(toAgent ? 'Choose an agent.' : 'Choose a queue.'));
    return;
  }
  try {
    // A live call is transferred by the voice channel (the target's phone rings); other
    // conversations by the core.
    await post(isLiveCall(state.interactions.get(id)) ? `/api/v1/voice/calls/${id}/transfer` : `/api/v1/interactions/${id}/transfer`, body);
    dlg.returnFocusTo = $('#conversation');
    dlg.close();
    toast('Conversation transferred.', 'success');
    await refreshAll();
  } catch (ex) {
    dialogError(dlg, ex);
  }
});

// Live call controls: each maps to the voice channel's call API for the selected call.
const CALL_ACTIONS = {
  '#btn-hold': ['hold', 'Call on hold — the caller hears music'],
  '#btn-resume': ['resume', 'Call resumed'],
  '#btn-hangup': ['hangup', 'Call ended'],
  '#btn-listen': ['listen', 'Your phone is ringing: you will hear the call'],
  '#btn-barge': ['barge', 'Your phone is ringing: caller and agent will hear you'],
};
for (const [sel, [action, done]] of Object.entries(CALL_ACTIONS)) {
  $(sel).addEventListener('click', async () => {
    try {
      await post(`/api/v1/voice/calls/${state.selected}/${action}`);
      toast(done, 'success');
      announce(done);
      await loadSelected(false);
    } catch (e) {
      showError(e, `Could not ${action === 'hangup' ? 'hang up' : action} the call`);
    }
  });
}

$('#btn-wrapup').addEventListener('click', async () => {
  try {
    await post(`/api/v1/interactions/${state.selected}/wrap-up`);
    await loadSelected(false);
    await refreshInteractions();
    announce('Wrap-up started');
  } catch (e) {
    showError(e, 'Could not start wrap-up');
  }
});

$('#btn-close').addEventListener('click', (e) => {
  $('#close-summary').value = '';
  openDialog($('#close-dialog'), e.currentTarget);
});
$('#close-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const dlg = $('#close-dialog');
  const id = state.selected;
  const disposition = $('input[name="disposition"]:checked').value;
  const summary = $('#close-summary').value.trim();
  try {
    await post(`/api/v1/interactions/${id}/close`, summary ? { disposition, summary } : { disposition });
    dlg.returnFocusTo = $('#conversation');
    dlg.close();
    toast(`Closed as ${disposition}.`, 'success');
    await refreshInteractions();
    await loadSelected(false);
  } catch (ex) {
    dialogError(dlg, ex);
  }
});

// ---------------------------------------------------------------- customer panel

function field(label, value) {
  if (value === null || value === undefined || value === '' || (Array.isArray(value) && !value.length)) return null;
  const text = Array.isArray(value)
    ? value.map((v) => (v && typeof v === 'object' ? (v.value || v.address || v.number || JSON.stringify(v)) : String(v))).join(', ')
    : typeof value === 'object' ? JSON.stringify(value) : String(value);
  return [h('dt', null, label), h('dd', null, text)];
}

async function loadCustomer(i) {
  const panel = $('#customer-panel');
  const hist = $('#customer-history');
  const card = state.cards.get(i.id) || null;
  let profile = null;
  let timeline = null;
  if (i.customer_id) {
    try {
      profile = await getOptional(`/api/v1/customers/${i.customer_id}`);
    } catch (_) { profile = null; }
    try {
      timeline = await getOptional(`/api/v1/customers/${i.customer_id}/timeline`);
    } catch (_) { timeline = null; }
    state.customers.set(i.customer_id, profile);
  }
  if (state.selected !== i.id) return;
  const p = { ...(card || {}), ...(profile || {}) };
  const name = p.name || p.display_name || [p.first_name, p.last_name].filter(Boolean).join(' ') || who(i);
  const known = !!(card || profile);
  const identities = Array.isArray(p.identities) ? p.identities : [];
  const ids = (kind) => {
    const l = identities.filter((x) => x && x.kind === kind).map((x) => x.address).filter(humanAddress);
    return l.length ? l : null;
  };
  replace(panel,
    h('div', { class: 'cust-head' },
      h('span', { class: 'avatar', 'aria-hidden': 'true' }, initials(name)),
      h('div', null, h('strong', { class: 'cust-name' }, name),
        h('div', { class: 'muted small' }, known ? (p.company || p.organization || 'Customer') : 'Not in the CRM yet'))),
    h('dl', { class: 'facts' },
      field('Address', humanAddress(i.customer_address)),
      field('Phone', ids('phone') || p.phones || p.phone),
      field('Email', ids('email') || p.emails || p.email),
      field('Chat', ids('chat')),
      field('Language', p.language || p.locale),
      field('Time zone', p.time_zone),
      field('Birthday', p.birthday),
      field('Own manager', (p.own_manager && p.own_manager.name) || p.own_manager_name),
      field('Tags', p.tags),
      field('Attributes', p.attributes && typeof p.attributes === 'object' && Object.keys(p.attributes).length
        ? Object.entries(p.attributes).map(([k, v]) => `${k}: ${typeof v === 'object' ? JSON.stringify(v) : v}`) : null),
      field('Customer since', p.created_at ? new Date(p.created_at).toLocaleDateString() : null)),
    i.customer_id ? h('a', { class: 'link small', href: `/crm.html#customer=${encodeURIComponent(i.customer_id)}` }, 'Open in CRM') : null);

  let items = null;
  if (timeline) items = Array.isArray(timeline) ? timeline : timeline.items || timeline.events || null;
  if (!items && card && Array.isArray(card.last_contacts)) items = card.last_contacts;
  if (items) items = items.filter((x) => x.id !== i.id);
  if (!items && i.customer_id) {
    try {
      const r = await get(`/api/v1/interactions?customer_id=${i.customer_id}&limit=20`);
      items = r.items.filter((x) => x.id !== i.id);
    } catch (_) { items = null; }
  }
  if (state.selected !== i.id) return;
  if (!items || !items.length) {
    replace(hist, h('li', { class: 'empty-hint' }, i.customer_id ? 'No earlier interactions.' : 'Unknown customer: no history.'));
    return;
  }
  replace(hist, items.slice(0, 20).map((t) => {
    const ch = t.channel || (t.kind && ['voice', 'sms', 'email', 'chat'].includes(t.kind) ? t.kind : null);
    const when = t.at || t.closed_at || t.created_at || t.occurred_at;
    const title = t.title || t.summary || t.subject || t.preview || t.description || (t.kind ? String(t.kind).replace(/_/g, ' ') : channelName(ch));
    return h('li', { class: 'history-item' }, ch ? channelIcon(ch) : h('span', { class: 'ch-icon ch-other', 'aria-hidden': 'true' }, '•'),
      h('div', null, h('div', { class: 'history-title' }, title),
        h('div', { class: 'muted small' }, [when ? new Date(when).toLocaleString() : '', t.status ? ` · ${STATUS_LABEL[t.status] || t.status}` : '',
          t.disposition ? ` · ${t.disposition}` : '', t.agent_name ? ` · ${t.agent_name}` : ''].join(''))));
  }));
}

function initials(name) {
  return String(name).split(/\s+/).filter(Boolean).slice(0, 2).map((w) => w[0].toUpperCase()).join('') || '?';
}

// ---------------------------------------------------------------- knowledge base

async function loadKb(i) {
  const box = $('#kb-suggestions');
  replace(box, h('p', { class: 'empty-hint' }, 'Looking for articles…'));
  let r = null;
  try {
    r = await getOptional(`/api/v1/kb/suggest?interaction_id=${encodeURIComponent(i.id)}`);
  } catch (_) {
    r = null;
  }
  if (state.selected !== i.id) return;
  const items = r ? (Array.isArray(r) ? r : r.items || r.suggestions || []) : null;
  if (items === null) {
    replace(box, h('p', { class: 'empty-hint' }, 'Knowledge-base suggestions are not available.'));
    return;
  }
  if (!items.length) {
    replace(box, h('p', { class: 'empty-hint' }, 'No matching articles.'));
    return;
  }
  replace(box, h('ul', { class: 'kb-list' }, items.slice(0, 6).map((a) => {
    const url = typeof a.url === 'string' && /^(https?:\/\/|\/)/.test(a.url) ? a.url : null;
    // The panel links to the staff view; the customer gets the public portal page.
    const pub = [a.public_url, a.portal_url].find((u) => typeof u === 'string' && /^(https?:\/\/|\/)/.test(u))
      || (a.id && url && url.startsWith('/kb.html') ? `/portal.html#/articles/${encodeURIComponent(a.id)}` : url);
    const abs = pub ? new URL(pub, location.origin).href : null;
    return h('li', { class: 'kb-item', dataset: { articleId: a.id } },
      url ? h('a', { class: 'kb-title', href: url, target: '_blank', rel: 'noopener' }, a.title || 'Untitled')
        : h('span', { class: 'kb-title' }, a.title || 'Untitled'),
      a.excerpt ? h('p', { class: 'kb-excerpt' }, a.excerpt) : null,
      h('div', { class: 'kb-buttons' },
        abs ? h('button', { type: 'button', class: 'btn btn-small kb-insert-link', onclick: () => insertText(`${a.title}: ${abs}`) }, 'Insert link') : null,
        a.excerpt ? h('button', { type: 'button', class: 'btn btn-small kb-insert-excerpt', onclick: () => insertText(a.excerpt) }, 'Insert excerpt') : null));
  })));
}

// ---------------------------------------------------------------- misc

function announce(text) {
  const a = $('#announcer');
  a.textContent = '';
  setTimeout(() => { a.textContent = text; }, 50);
}

window.addEventListener('beforeunload', () => {
  clearInterval(countdownTimer);
});

boot();

// ---------------------------------------------------------------- email composer tools
// Reply all, files attached to a reply (uploaded first, sent by checksum) and forward, for
// email conversations only. Built here so the composer markup stays channel-neutral.

function emailMailboxOf(i) {
  return i && i.channel === 'email' && i.metadata && i.metadata.email && i.metadata.email.mailbox;
}

function emailTools() {
  let box = $('#email-tools');
  if (box) return box;
  const files = h('input', { type: 'file', id: 'email-files', multiple: true, class: 'sr-only' });
  box = h('div', { id: 'email-tools', class: 'email-tools', hidden: true },
    h('label', null, h('input', { type: 'checkbox', id: 'email-reply-all' }), ' Reply all'),
    h('label', { class: 'btn', for: 'email-files' }, 'Attach files'), files,
    h('ul', { id: 'email-attached', class: 'msg-atts', 'aria-live': 'polite' }),
    h('details', { id: 'email-forward', class: 'email-forward' },
      h('summary', null, 'Forward…'),
      h('label', { for: 'email-forward-to' }, 'To '),
      h('input', { type: 'email', id: 'email-forward-to', placeholder: 'name@example.com' }),
      h('label', null, h('input', { type: 'checkbox', id: 'email-forward-inline' }), ' Original inline (else attached)'),
      h('button', { type: 'button', id: 'email-forward-send', class: 'btn' }, 'Forward')));
  $('#composer').insertBefore(box, $('#composer .composer-bottom'));
  files.addEventListener('change', async () => {
    const i = state.interactions.get(state.selected);
    const mb = emailMailboxOf(i);
    if (!mb) return;
    const d = draftFor(i.id);
    d.files = d.files || [];
    for (const f of [...files.files]) {
      try {
        const up = await upload(`/api/v1/email/${encodeURIComponent(mb)}/uploads?filename=${encodeURIComponent(f.name)}`, f);
        d.files.push({ sha256: up.sha256, filename: up.filename, content_type: up.content_type });
        d.key = newKey();
      } catch (ex) {
        showError(ex, `${f.name} not attached`);
      }
    }
    files.value = '';
    renderAttached(d);
  });
  $('#email-forward-send').addEventListener('click', async () => {
    const id = state.selected;
    const mb = emailMailboxOf(state.interactions.get(id));
    const to = $('#email-forward-to').value.trim();
    if (!mb || !to) {
      $('#email-forward-to').focus();
      return;
    }
    const d = draftFor(id);
    try {
      const m = await post(`/api/v1/email/${encodeURIComponent(mb)}/interactions/${id}/forward`, {
        to, body: $('#reply-input').value.trim(), inline: $('#email-forward-inline').checked, attachments: d.files || [],
        idempotency_key: `fwd-${d.key}`,
      });
      state.drafts.set(id, { text: '', key: newKey() });
      $('#reply-input').value = '';
      $('#email-forward-to').value = '';
      $('#email-forward').open = false;
      renderAttached(draftFor(id));
      toast(`Forwarded to ${to}`);
      if (state.selected === id && state.messagesOf === id && m && m.id) {
        addMessages([m]);
        renderMessages();
      }
    } catch (ex) {
      showError(ex, 'Not forwarded');
    }
  });
  return box;
}

function renderAttached(d) {
  replace($('#email-attached'), (d.files || []).map((f, n) => h('li', null, f.filename, ' ',
    h('button', { type: 'button', class: 'btn-link', 'aria-label': `Remove ${f.filename}`, onclick: () => {
      d.files.splice(n, 1);
      d.key = newKey();
      renderAttached(d);
    } }, '×'))));
}

function renderEmailTools(i, canWrite) {
  const box = emailTools();
  const show = !!emailMailboxOf(i) && canWrite;
  box.hidden = !show;
  if (!show) return;
  if (box.dataset.for !== i.id) {
    box.dataset.for = i.id;
    $('#email-reply-all').checked = false;
    renderAttached(draftFor(i.id));
  }
}

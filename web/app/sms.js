// SMS in the inbox: the reply box's counter (encoding, parts, characters left) and the
// delivery state of the texts sent in a conversation. One source of truth for the counting
// rules: the SMS channel's own `GET /sms/v1/<channel>/segments` (the same code that splits
// the text for sending: GSM 03.38 with extension characters counted twice, UCS-2 otherwise,
// 160/153 and 70/67 units per part), asked as the agent types (debounced, the newest answer
// wins).

import { get } from './api.js';
import { h, $, $$ } from './dom.js';

/** The SMS channel (adapter name) an interaction came through, or null. */
export function smsChannelOf(i) {
  if (!i || i.channel !== 'sms') return null;
  const m = i.metadata || {};
  return typeof m.sms_channel === 'string' && m.sms_channel ? m.sms_channel : null;
}

function counterEl() {
  let el = $('#sms-counter');
  if (!el) {
    el = h('span', { id: 'sms-counter', class: 'hint sms-counter', 'aria-live': 'polite', hidden: true });
    const send = $('#reply-send');
    send.parentNode.insertBefore(el, send);
  }
  return el;
}

let timer = null;
let asked = 0;

/**
 * Shows (or hides) the counter for the draft `text` of interaction `i`; `reply` is false
 * while the composer writes an internal note (nothing is sent by SMS then).
 */
export function updateSmsCounter(i, text, reply) {
  const el = counterEl();
  const channel = reply ? smsChannelOf(i) : null;
  clearTimeout(timer);
  if (!channel) {
    el.hidden = true;
    el.textContent = '';
    delete el.dataset.encoding;
    return;
  }
  el.hidden = false;
  const ticket = ++asked;
  timer = setTimeout(async () => {
    try {
      const s = await get(`/sms/v1/${encodeURIComponent(channel)}/segments?text=${encodeURIComponent(text)}`);
      if (ticket !== asked) return; // an older answer arriving late
      const enc = s.encoding === 'ucs2' ? 'UCS-2' : 'GSM-7';
      el.dataset.encoding = s.encoding;
      el.dataset.parts = String(s.parts);
      el.dataset.remaining = String(s.remaining);
      el.textContent = `${enc} · ${s.parts} ${s.parts === 1 ? 'part' : 'parts'} · ${s.remaining} characters left`;
      el.title = s.encoding === 'ucs2'
        ? 'A character outside the GSM alphabet makes the whole text UCS-2: 70 characters in one part, 67 per part when split.'
        : 'GSM 7-bit: 160 characters in one part, 153 per part when split; € [ ] { } \\ ~ ^ | count as two.';
    } catch (_) {
      if (ticket === asked) el.textContent = '';
    }
  }, 120);
}

const LABEL = {
  submitting: 'Sending…',
  submitted: 'Sent',
  accepted: 'Sent',
  enroute: 'On its way',
  delivered: 'Delivered',
  unknown: 'Delivery unknown',
  failed: 'Not delivered',
  undeliverable: 'Not delivered',
  rejected: 'Not delivered',
  expired: 'Not delivered',
  deleted: 'Not delivered',
};

/** Tags each outbound message of an SMS conversation with its delivery state. */
export async function showSmsDeliveries(i, isStillSelected) {
  const channel = smsChannelOf(i);
  if (!channel) return;
  let list;
  try {
    list = await get(`/sms/v1/${encodeURIComponent(channel)}/interactions/${i.id}/deliveries`);
  } catch (_) {
    return; // optional: the transcript is complete without it
  }
  if (!isStillSelected()) return;
  const byMessage = new Map(list.filter((d) => d.message_id).map((d) => [d.message_id, d]));
  for (const el of $$('#messages .msg-out')) {
    const d = byMessage.get(el.dataset.messageId);
    let tag = el.querySelector('.sms-delivery');
    if (!d) {
      if (tag) tag.remove();
      continue;
    }
    if (!tag) {
      tag = h('div', { class: 'sms-delivery' });
      el.appendChild(tag);
    }
    tag.dataset.status = d.status;
    tag.className = `sms-delivery sms-delivery-${d.status}`;
    if (d.status === 'unknown') {
      tag.setAttribute('role', 'status');
      tag.textContent = '⚠ Delivery unknown: the SMS provider never confirmed this text. It may or may not have reached the customer and is not resent automatically — check with the customer or send it again yourself.';
    } else {
      tag.removeAttribute('role');
      tag.textContent = `${LABEL[d.status] || d.status}${d.parts > 1 ? ` · ${d.parts} parts` : ''}${d.error && d.status !== 'delivered' ? ` — ${d.error}` : ''}`;
    }
  }
}

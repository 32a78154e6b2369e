// A scripted SMSC for the SMS end-to-end tests: the npm `smpp` package's server (not our
// code) accepts binds, answers submit_sm with message ids, sends delivery receipts and
// mobile-originated deliver_sm, and can be told to throttle, stay silent or drop the
// connection.
//
// Binds: transceiver, or a transmitter plus a receiver (each "bound" event names its kind;
// MOs and receipts go to a receiving session only).
// Start: node smsc.mjs            (env SMSC_SYSTEM_ID / SMSC_PASSWORD: the only account
//                                  accepted; SMSC_RECEIPTS=0 turns automatic receipts off)
// Stdout: one JSON object per line, {"event": ...}; the first is {"event":"listening","port":N}.
// Stdin: one JSON command per line:
//   {"cmd":"deliver","source":"4915…","dest":"4930…","text":"…","coding":"ucs2"|"gsm",
//    "concat":[ref,total,seq],"tag":"x"}  → deliver_sm; answered by {"event":"deliver_sm_resp","tag","status"}
//   {"cmd":"receipt","id":"…","stat":"ENROUTE"}       → a text receipt for that id
//   {"cmd":"throttle","count":N}                       → next N submit_sm get ESME_RTHROTTLED
//   {"cmd":"silent","count":N}                         → next N submit_sm get no response
//   {"cmd":"drop"}                                     → close every connection abruptly
//                                                        ("kind":"receiver"|"transmitter": only those)
//   {"cmd":"raw","hex":"…"}                            → write these bytes to the bound connection
//   {"cmd":"flood","count":N,"senders":S}              → N deliver_sm from S numbers as fast as the
//                                                        window allows; {"event":"flood_done","ok","ms"}
//   {"cmd":"stats","dests":bool}                       → {"event":"stats","submits","distinct","duplicated"
//                                                        [,"dests":{number: count}]} over every submit_sm
//                                                        answered so far (counted in quiet mode too)
import smpp from 'smpp';
import readline from 'node:readline';

const systemId = process.env.SMSC_SYSTEM_ID || 'switchboard';
const password = process.env.SMSC_PASSWORD || 'secret';
const autoReceipts = process.env.SMSC_RECEIPTS !== '0';

const quiet = process.env.SMSC_QUIET === '1'; // no per-submit events (benchmarks)
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const sessions = new Set();
let nextId = 0x3e7; // message ids are given in hex, receipts written in decimal
let throttle = 0;
let silent = 0;
const destCounts = new Map(); // destination → submit_sm answered with an id
let submitCount = 0;

// GSM 03.38 default alphabet (unpacked) for deliver_sm with data_coding 0.
const GSM = '@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !"#¤%&\'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà';
function gsm(text) {
  return Buffer.from([...text].map((c) => {
    const i = GSM.indexOf(c);
    if (i < 0) throw new Error(`not GSM: ${c}`);
    return i;
  }));
}
function ucs2(text) {
  const b = Buffer.alloc(text.length * 2);
  for (let i = 0; i < text.length; i++) b.writeUInt16BE(text.charCodeAt(i), i * 2);
  return b;
}

// A session that may receive deliver_sm: a transceiver or a receiver (never a transmitter).
function bound() {
  for (const s of sessions) if (s.bound && s.bindKind !== 'transmitter') return s;
  return null;
}

function sendReceipt(session, id, stat) {
  const dec = BigInt('0x' + id).toString(10);
  const text = `id:${dec} sub:001 dlvrd:001 submit date:2612031200 done date:2612031201 stat:${stat} err:000 text:`;
  session.deliver_sm({
    source_addr: '', destination_addr: '', esm_class: 0x04, data_coding: 1,
    short_message: Buffer.from(text, 'latin1'),
  }, (pdu) => out({ event: 'receipt_resp', id, stat, status: pdu.command_status, bind: session.bindKind }));
}

const server = smpp.createServer({ debug: false }, (session) => {
  sessions.add(session);
  session.on('error', (e) => out({ event: 'session_error', error: String(e && e.message) }));
  session.on('close', () => { sessions.delete(session); out({ event: 'closed' }); });
  // bind_transceiver, or separate bind_transmitter / bind_receiver connections (SMPP 3.4
  // §2.2): a transmitter may only submit, a receiver gets the deliver_sm (MOs and receipts).
  for (const kind of ['transceiver', 'transmitter', 'receiver']) {
    session.on(`bind_${kind}`, (pdu) => {
      if (pdu.system_id !== systemId || pdu.password !== password) {
        session.send(pdu.response({ command_status: smpp.ESME_RBINDFAIL }));
        out({ event: 'bind_refused', system_id: pdu.system_id, kind });
        session.close();
        return;
      }
      session.bound = true;
      session.bindKind = kind;
      session.send(pdu.response({ system_id: 'scripted-smsc' }));
      out({ event: 'bound', system_id: pdu.system_id, interface_version: pdu.interface_version, kind });
    });
  }
  session.on('enquire_link', (pdu) => { session.send(pdu.response()); out({ event: 'enquire_link' }); });
  session.on('unbind', (pdu) => {
    session.send(pdu.response());
    out({ event: 'unbind' });
    session.close();
  });
  session.on('generic_nack', (pdu) => out({ event: 'generic_nack', status: pdu.command_status, seq: pdu.sequence_number }));
  session.on('submit_sm', (pdu) => {
    if (session.bindKind === 'receiver') {
      // §4.1.2: a receiver may not submit.
      out({ event: 'submit_on_receiver' });
      session.send(pdu.response({ command_status: smpp.ESME_RINVBNDSTS }));
      return;
    }
    const sm = pdu.short_message || {};
    const udh = (sm.udh || []).map((b) => Buffer.from(b).toString('hex'));
    const ev = {
      event: 'submit_sm', source: pdu.source_addr, dest: pdu.destination_addr, data_coding: pdu.data_coding,
      esm_class: pdu.esm_class, registered_delivery: pdu.registered_delivery, udh, bind: session.bindKind,
      message: typeof sm.message === 'string' ? sm.message : Buffer.from(sm.message || []).toString('hex'),
    };
    if (pdu.message_payload) {
      const mp = pdu.message_payload;
      ev.payload = typeof mp.message === 'string' ? mp.message : mp;
    }
    if (pdu.sar_msg_ref_num !== undefined) ev.sar = [pdu.sar_msg_ref_num, pdu.sar_total_segments, pdu.sar_segment_seqnum];
    if (silent > 0) {
      silent--;
      ev.answered = 'silent';
      out(ev);
      return;
    }
    if (throttle > 0) {
      throttle--;
      ev.answered = 'throttled';
      out(ev);
      session.send(pdu.response({ command_status: smpp.ESME_RTHROTTLED }));
      return;
    }
    const id = (nextId++).toString(16).toUpperCase();
    ev.answered = id;
    submitCount++;
    destCounts.set(pdu.destination_addr, (destCounts.get(pdu.destination_addr) || 0) + 1);
    if (!quiet) out(ev);
    session.send(pdu.response({ message_id: id }));
    if (autoReceipts && (pdu.registered_delivery & 1)) {
      // A transmitter gets no deliver_sm: its receipt goes to the account's receiver.
      setTimeout(() => {
        const to = session.bindKind === 'transmitter' ? bound() : session;
        if (to) sendReceipt(to, id, 'DELIVRD');
        else out({ event: 'no_session', receipt: id });
      }, 20);
    }
  });
});

server.listen(Number(process.env.SMSC_PORT || 0), '127.0.0.1', () => out({ event: 'listening', port: server.address().port }));

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  let c;
  try { c = JSON.parse(line); } catch { out({ event: 'bad_command', line }); return; }
  const s = bound();
  switch (c.cmd) {
    case 'deliver': {
      if (!s) { out({ event: 'no_session', tag: c.tag }); return; }
      let body = c.coding === 'gsm' ? gsm(c.text) : ucs2(c.text);
      let esm = 0;
      if (c.concat) {
        body = Buffer.concat([Buffer.from([5, 0, 3, ...c.concat]), body]);
        esm = 0x40;
      }
      s.deliver_sm({
        source_addr_ton: 1, source_addr_npi: 1, source_addr: c.source,
        dest_addr_ton: 1, dest_addr_npi: 1, destination_addr: c.dest,
        esm_class: esm, data_coding: c.coding === 'gsm' ? 0 : 8, short_message: body,
      }, (pdu) => out({ event: 'deliver_sm_resp', tag: c.tag, status: pdu.command_status, bind: s.bindKind }));
      return;
    }
    case 'flood': {
      if (!s) { out({ event: 'no_session' }); return; }
      const start = process.hrtime.bigint();
      let answered = 0, ok = 0;
      for (let i = 0; i < c.count; i++) {
        const src = String(4915100000000 + (i % (c.senders || 100)));
        s.deliver_sm({
          source_addr_ton: 1, source_addr_npi: 1, source_addr: src, dest_addr_ton: 1, dest_addr_npi: 1,
          destination_addr: '4930123456', esm_class: 0, data_coding: 0, short_message: gsm(`flood message ${i}`),
        }, (pdu) => {
          answered++;
          if (pdu.command_status === 0) ok++;
          if (answered === c.count) {
            out({ event: 'flood_done', ok, ms: Number(process.hrtime.bigint() - start) / 1e6 });
          }
        });
      }
      return;
    }
    case 'receipt':
      if (s) sendReceipt(s, c.id, c.stat);
      return;
    case 'stats': {
      let duplicated = 0;
      for (const n of destCounts.values()) if (n > 1) duplicated++;
      const ev = { event: 'stats', submits: submitCount, distinct: destCounts.size, duplicated };
      if (c.dests) ev.dests = Object.fromEntries(destCounts);
      out(ev);
      return;
    }
    case 'throttle': throttle = c.count; out({ event: 'ok', cmd: c.cmd }); return;
    case 'silent': silent = c.count; out({ event: 'ok', cmd: c.cmd }); return;
    case 'drop':
      // {"cmd":"drop","kind":"receiver"} drops only the connections bound that way.
      for (const x of sessions) if (!c.kind || x.bindKind === c.kind) x.socket.destroy();
      out({ event: 'ok', cmd: c.cmd });
      return;
    case 'raw':
      if (s) s.socket.write(Buffer.from(c.hex, 'hex'));
      return;
    default:
      out({ event: 'bad_command', line });
  }
});
process.stdin.on('end', () => process.exit(0));

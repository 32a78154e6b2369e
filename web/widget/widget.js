/*!
 * Switchboard chat widget (protocol v1, see adapters/chat/PROTOCOL.md).
 *
 * Embed with one tag:
 *   <script src="https://hub.example.com/widget/widget.js" data-hub="https://hub.example.com" defer></script>
 * Optional attributes: data-title="Help" (overrides the hub's title), data-open="true"
 * (open at load).
 *
 * Stable DOM (for tests and site styling); all ids live under #sb-chat-root:
 *   #sb-chat-launcher        button that opens/closes the panel (aria-expanded)
 *   #sb-chat-panel           the chat dialog (role=dialog, hidden when closed)
 *   #sb-chat-close           close button in the panel header
 *   #sb-chat-status          status line (aria-live): connection, queue position and
 *                            estimated wait, agent joined/left
 *   #sb-chat-messages        the transcript (a live list)
 *     .sb-msg                one message; also .sb-msg-visitor or .sb-msg-agent,
 *                            .sb-msg-pending (not yet acknowledged), .sb-msg-failed,
 *                            .sb-msg-read (agent has read it); data-seq, data-client-msg-id
 *     .sb-msg-body           its text; .sb-msg-author the agent name; .sb-msg-attachment links
 *     .sb-sys                system lines (agent joined/left, chat ended)
 *   #sb-chat-typing          "agent is typing" indicator (hidden when not typing)
 *   #sb-chat-prechat         pre-chat form: #sb-chat-name, #sb-chat-email, #sb-chat-start
 *   #sb-chat-form            composer: #sb-chat-input (textarea), #sb-chat-file,
 *                            #sb-chat-send
 *   #sb-chat-offline         offline form: #sb-chat-offline-name, #sb-chat-offline-email,
 *                            #sb-chat-offline-message, #sb-chat-offline-send,
 *                            #sb-chat-offline-done (shown after sending)
 *
 * Guarantees: every message has a client id and is kept until the hub acknowledges it
 * (after storing it); unacknowledged messages are resent after a reconnect (stored once).
 * Messages from the hub carry a seq; the widget resumes from the highest seq it has
 * shown and ignores any seq it already has. User text is only ever set with textContent.
 */
(function () {
  "use strict";
  if (window.SwitchboardChat) return;

  var script = document.currentScript || (function () {
    var s = document.querySelectorAll("script[src*='widget.js']");
    return s[s.length - 1];
  })();
  var scriptUrl = new URL(script.getAttribute("src"), document.baseURI);
  var hub = (script.getAttribute("data-hub") || scriptUrl.origin).replace(/\/+$/, "");
  var storeKey = "sb-chat:" + hub;

  var state = {
    token: null,
    settings: null,
    ws: null,
    connected: false,
    lastSeq: 0,
    pending: [],          // [{client_msg_id, body, attachments, retryAt}]
    backoff: 500,
    reconnectTimer: null,
    typingSentAt: 0,
    typingStopTimer: null,
    agentTypingTimer: null,
    open: false,
    started: false,
    online: true,
    status: null,
    agentReadSeq: 0
  };

  // ---------- storage ----------
  function load() {
    try {
      var v = JSON.parse(localStorage.getItem(storeKey) || "{}");
      state.token = v.token || null;
      state.pending = Array.isArray(v.pending) ? v.pending : [];
    } catch (e) { /* storage unavailable: session-only */ }
  }
  function save() {
    try {
      localStorage.setItem(storeKey, JSON.stringify({ token: state.token, pending: state.pending }));
    } catch (e) { /* ignore */ }
  }

  // ---------- DOM ----------
  function el(tag, attrs, text) {
    var n = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) {
      if (k === "class") n.className = attrs[k]; else n.setAttribute(k, attrs[k]);
    });
    if (text != null) n.textContent = text;
    return n;
  }
  var css = el("link", { rel: "stylesheet", href: new URL("widget.css", scriptUrl).href });
  document.head.appendChild(css);

  var root = el("div", { id: "sb-chat-root" });
  var launcher = el("button", { id: "sb-chat-launcher", type: "button", "aria-label": "Open chat", "aria-expanded": "false", "aria-controls": "sb-chat-panel" }, "Chat");
  var panel = el("section", { id: "sb-chat-panel", role: "dialog", "aria-label": "Chat", hidden: "" });
  var header = el("header", { class: "sb-chat-header" });
  var titleEl = el("h2", { id: "sb-chat-title" }, script.getAttribute("data-title") || "Chat with us");
  var closeBtn = el("button", { id: "sb-chat-close", type: "button", "aria-label": "Close chat" }, "\u00d7");
  header.appendChild(titleEl); header.appendChild(closeBtn);
  var statusEl = el("p", { id: "sb-chat-status", role: "status", "aria-live": "polite" }, "");
  var log = el("ol", { id: "sb-chat-messages", "aria-live": "polite", "aria-relevant": "additions", "aria-label": "Messages" });
  var typingEl = el("p", { id: "sb-chat-typing", "aria-live": "polite", hidden: "" }, "Agent is typing\u2026");

  var prechat = el("form", { id: "sb-chat-prechat", "aria-label": "Before we start", hidden: "" });
  var nameIn = el("input", { id: "sb-chat-name", type: "text", autocomplete: "name", maxlength: "200", "aria-label": "Your name", placeholder: "Your name" });
  var emailIn = el("input", { id: "sb-chat-email", type: "email", autocomplete: "email", maxlength: "254", "aria-label": "Your email", placeholder: "Email (optional)" });
  var startBtn = el("button", { id: "sb-chat-start", type: "submit" }, "Start chat");
  prechat.appendChild(nameIn); prechat.appendChild(emailIn); prechat.appendChild(startBtn);

  var form = el("form", { id: "sb-chat-form", "aria-label": "Send a message", hidden: "" });
  var input = el("textarea", { id: "sb-chat-input", rows: "2", "aria-label": "Message", placeholder: "Type your message\u2026" });
  var fileLabel = el("label", { class: "sb-chat-file-label", for: "sb-chat-file", title: "Attach a file" }, "\ud83d\udcce");
  var fileIn = el("input", { id: "sb-chat-file", type: "file", "aria-label": "Attach a file" });
  var sendBtn = el("button", { id: "sb-chat-send", type: "submit", "aria-label": "Send message" }, "Send");
  form.appendChild(input); form.appendChild(fileLabel); form.appendChild(fileIn); form.appendChild(sendBtn);

  var offline = el("form", { id: "sb-chat-offline", "aria-label": "Leave a message", hidden: "" });
  var offIntro = el("p", { class: "sb-chat-offline-intro" }, "We are not online right now. Leave a message and we will answer by email.");
  var offName = el("input", { id: "sb-chat-offline-name", type: "text", maxlength: "200", "aria-label": "Your name", placeholder: "Your name" });
  var offEmail = el("input", { id: "sb-chat-offline-email", type: "email", required: "", maxlength: "254", "aria-label": "Your email", placeholder: "Your email" });
  var offMsg = el("textarea", { id: "sb-chat-offline-message", required: "", rows: "4", "aria-label": "Your message", placeholder: "Your message" });
  var offSend = el("button", { id: "sb-chat-offline-send", type: "submit" }, "Send message");
  var offDone = el("p", { id: "sb-chat-offline-done", role: "status", hidden: "" }, "Thank you! We will reply by email.");
  [offIntro, offName, offEmail, offMsg, offSend, offDone].forEach(function (n) { offline.appendChild(n); });

  [header, statusEl, log, typingEl, prechat, offline, form].forEach(function (n) { panel.appendChild(n); });
  root.appendChild(panel); root.appendChild(launcher);
  function mount() { document.body.appendChild(root); }
  if (document.body) mount(); else document.addEventListener("DOMContentLoaded", mount);

  function setStatus(t) { statusEl.textContent = t || ""; }
  function show(n, on) { if (on) n.removeAttribute("hidden"); else n.setAttribute("hidden", ""); }

  // ---------- HTTP ----------
  function api(method, path, body, headers) {
    var h = headers || {};
    var opts = { method: method, headers: h };
    if (body !== undefined && !(body instanceof Blob)) { h["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
    else if (body !== undefined) { opts.body = body; }
    if (state.token) h["X-Chat-Token"] = state.token;
    return fetch(hub + path, opts).then(function (r) {
      return r.text().then(function (t) {
        var j = null; try { j = t ? JSON.parse(t) : null; } catch (e) { j = { detail: t }; }
        if (!r.ok) { var err = new Error((j && j.detail) || r.statusText); err.status = r.status; err.body = j; throw err; }
        return j;
      });
    });
  }

  // ---------- rendering ----------
  function findBubble(cmid) {
    if (!cmid) return null;
    var all = log.querySelectorAll(".sb-msg-visitor");
    for (var i = 0; i < all.length; i++) if (all[i].getAttribute("data-client-msg-id") === cmid) return all[i];
    return null;
  }
  function renderAttachments(li, list) {
    (list || []).forEach(function (a) {
      if (!a || !a.url) return;
      var link = el("a", { class: "sb-msg-attachment", target: "_blank", rel: "noopener noreferrer",
        href: hub + a.url + "?token=" + encodeURIComponent(state.token || "") }, a.filename || "attachment");
      li.appendChild(link);
    });
  }
  function bubble(from, body, cmid, agentName) {
    var li = el("li", { class: "sb-msg sb-msg-" + from });
    if (cmid) li.setAttribute("data-client-msg-id", cmid);
    if (from === "agent" && agentName) li.appendChild(el("span", { class: "sb-msg-author" }, agentName));
    li.appendChild(el("span", { class: "sb-msg-body" }, body));
    log.appendChild(li);
    log.scrollTop = log.scrollHeight;
    return li;
  }
  function sys(text) {
    log.appendChild(el("li", { class: "sb-sys" }, text));
    log.scrollTop = log.scrollHeight;
  }
  function onEntry(m) {
    if (typeof m.seq !== "number" || m.seq <= state.lastSeq) return; // already shown
    state.lastSeq = m.seq;
    var li = m.from === "visitor" ? findBubble(m.client_msg_id) : null;
    if (!li) {
      li = bubble(m.from === "visitor" ? "visitor" : "agent", m.body, m.client_msg_id, m.agent_name);
      renderAttachments(li, m.attachments);
    }
    li.classList.remove("sb-msg-pending");
    li.setAttribute("data-seq", String(m.seq));
    if (m.from === "visitor" && m.seq <= state.agentReadSeq) li.classList.add("sb-msg-read");
    if (m.from === "agent") { show(typingEl, false); sendRead(); }
  }
  function markRead(upTo) {
    state.agentReadSeq = Math.max(state.agentReadSeq, upTo);
    var all = log.querySelectorAll(".sb-msg-visitor[data-seq]");
    for (var i = 0; i < all.length; i++) {
      if (Number(all[i].getAttribute("data-seq")) <= upTo) {
        all[i].classList.add("sb-msg-read");
        all[i].setAttribute("aria-label", "Read");
      }
    }
  }

  // ---------- socket ----------
  function wsUrl() { return hub.replace(/^http/, "ws") + "/chat/v1/ws"; }
  function send(frame) {
    if (state.ws && state.connected) { state.ws.send(JSON.stringify(frame)); return true; }
    return false;
  }
  function sendRead() {
    if (state.open && !document.hidden && state.lastSeq > 0) send({ type: "read", up_to_seq: state.lastSeq });
  }
  function connect() {
    if (!state.token || state.ws) return;
    var ws;
    try { ws = new WebSocket(wsUrl()); } catch (e) { scheduleReconnect(); return; }
    state.ws = ws;
    ws.onopen = function () { ws.send(JSON.stringify({ type: "hello", v: 1, token: state.token, last_seq: state.lastSeq })); };
    ws.onmessage = function (ev) {
      var f; try { f = JSON.parse(ev.data); } catch (e) { return; }
      handle(f);
    };
    ws.onclose = function (ev) {
      state.ws = null; state.connected = false;
      if (ev.code === 4401) { state.token = null; save(); start(); return; }
      setStatus("Reconnecting\u2026");
      scheduleReconnect();
    };
    ws.onerror = function () { /* onclose follows */ };
  }
  function scheduleReconnect() {
    if (state.reconnectTimer) return;
    var delay = state.backoff * (0.75 + Math.random() * 0.5);
    state.backoff = Math.min(state.backoff * 2, 10000);
    state.reconnectTimer = setTimeout(function () { state.reconnectTimer = null; connect(); }, delay);
  }
  function flushPending() {
    var now = Date.now();
    state.pending.forEach(function (p) {
      if (p.retryAt && p.retryAt > now) return;
      if (!send({ type: "message", client_msg_id: p.client_msg_id, body: p.body, attachments: p.attachments || [] })) {
        // HTTP fallback while the socket is down.
        api("POST", "/chat/v1/messages", { client_msg_id: p.client_msg_id, body: p.body, attachments: p.attachments || [] })
          .then(handle).catch(function (e) { if (e.body && e.body.code) handle({ type: "error", code: e.body.code, message: e.body.detail, client_msg_id: p.client_msg_id }); });
      }
    });
  }
  function handle(f) {
    switch (f.type) {
      case "welcome":
        state.connected = true; state.backoff = 500;
        state.status = f.status;
        var openChat = f.status && ["queued", "offered", "active", "wrap_up"].indexOf(f.status) >= 0;
        state.online = f.availability ? f.availability.online : true;
        setStatus(f.agent_name ? f.agent_name + " is chatting with you." : (openChat ? "Waiting for an agent\u2026" : "Connected."));
        showComposer(openChat || state.online);
        flushPending();
        break;
      case "ack":
        state.pending = state.pending.filter(function (p) { return p.client_msg_id !== f.client_msg_id; });
        save();
        var b = findBubble(f.client_msg_id);
        if (b) b.classList.remove("sb-msg-pending");
        break;
      case "message": onEntry(f); break;
      case "queue":
        var wait = f.estimated_wait_secs == null ? "" : " Estimated wait: about " + Math.max(1, Math.round(f.estimated_wait_secs / 60)) + " min.";
        setStatus("You are number " + f.position + " in line." + wait);
        break;
      case "agent_joined":
        setStatus((f.agent_name || "An agent") + " joined the chat.");
        sys((f.agent_name || "An agent") + " joined the chat.");
        break;
      case "agent_left":
        setStatus(f.reason === "transferred" ? "Transferring you to another agent\u2026" : "The agent left the chat.");
        sys(f.reason === "transferred" ? "You are being transferred." : "The agent left the chat.");
        show(typingEl, false);
        break;
      case "ended":
        setStatus("The chat has ended. Write again any time.");
        sys("Chat ended.");
        break;
      case "typing":
        show(typingEl, !!f.active);
        clearTimeout(state.agentTypingTimer);
        if (f.active) state.agentTypingTimer = setTimeout(function () { show(typingEl, false); }, 6000);
        break;
      case "read": markRead(f.up_to_seq); break;
      case "error":
        if (f.client_msg_id) {
          var p = state.pending.find(function (x) { return x.client_msg_id === f.client_msg_id; });
          if (f.code === "rate_limited" && p) {
            p.retryAt = Date.now() + (f.retry_after_ms || 1000);
            setTimeout(flushPending, (f.retry_after_ms || 1000) + 10);
            setStatus("You are sending messages quickly; retrying shortly.");
          } else if (f.code !== "internal") {
            state.pending = state.pending.filter(function (x) { return x.client_msg_id !== f.client_msg_id; });
            save();
            var fb = findBubble(f.client_msg_id);
            if (fb) { fb.classList.remove("sb-msg-pending"); fb.classList.add("sb-msg-failed"); fb.setAttribute("title", f.message || "Not sent"); }
          }
        }
        break;
      default: break;
    }
  }

  // ---------- flows ----------
  function showComposer(on) {
    show(form, !!on); show(offline, !on); show(prechat, false);
  }
  function newId() {
    var a = new Uint8Array(12);
    (window.crypto || window.msCrypto).getRandomValues(a);
    return Array.prototype.map.call(a, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }
  function start(details) {
    state.started = true;
    var body = details || {};
    if (state.token) body.token = state.token;
    if (!body.language && navigator.language) body.language = navigator.language.slice(0, 35);
    setStatus("Connecting\u2026");
    return api("POST", "/chat/v1/sessions", body).then(function (s) {
      state.token = s.token; save();
      state.online = s.availability.online;
      if (!s.resumed) { log.textContent = ""; state.lastSeq = 0; }
      if (!s.availability.online && !s.resumed) { showComposer(false); setStatus("We are offline right now."); }
      connect();
    }).catch(function (e) {
      setStatus(e.status === 429 ? "Too many attempts; please wait a moment." : "Chat is unavailable; retrying\u2026");
      state.started = false;
      setTimeout(function () { if (state.open) begin(); }, 3000);
    });
  }
  function begin() {
    if (state.started) return;
    if (state.token) { start(); return; }
    api("GET", "/chat/v1/config").then(function (c) {
      state.settings = c;
      if (!script.getAttribute("data-title") && c.title) titleEl.textContent = c.title;
      panel.setAttribute("aria-label", titleEl.textContent);
      if (!c.availability.online) { showComposer(false); setStatus("We are offline right now."); return; }
      if (c.prechat_form) { show(prechat, true); show(form, false); show(offline, false); nameIn.focus(); }
      else start();
    }).catch(function () { setStatus("Chat is unavailable right now."); });
  }
  function toggle(open) {
    state.open = open;
    launcher.setAttribute("aria-expanded", open ? "true" : "false");
    launcher.setAttribute("aria-label", open ? "Close chat" : "Open chat");
    show(panel, open);
    if (open) { begin(); sendRead(); if (!form.hidden) input.focus(); }
  }
  launcher.addEventListener("click", function () { toggle(!state.open); });
  closeBtn.addEventListener("click", function () { toggle(false); launcher.focus(); });
  prechat.addEventListener("submit", function (e) {
    e.preventDefault();
    var d = {};
    if (nameIn.value.trim()) d.name = nameIn.value.trim();
    if (emailIn.value.trim()) d.email = emailIn.value.trim();
    show(prechat, false);
    start(d);
  });
  function sendText(text, attachments) {
    var p = { client_msg_id: newId(), body: text, attachments: attachments || [] };
    state.pending.push(p); save();
    var li = bubble("visitor", text, p.client_msg_id);
    li.classList.add("sb-msg-pending");
    if (attachments && attachments.length) li.appendChild(el("span", { class: "sb-msg-attachment" }, "\ud83d\udcce " + attachments.length));
    flushPending();
  }
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var text = input.value;
    var file = fileIn.files && fileIn.files[0];
    if (!text.trim() && !file) return;
    input.value = "";
    stopTyping();
    if (file) {
      fileIn.value = "";
      api("POST", "/chat/v1/attachments?filename=" + encodeURIComponent(file.name), file, { "Content-Type": file.type || "application/octet-stream" })
        .then(function (a) { sendText(text, [a.id]); })
        .catch(function (err) { setStatus("Attachment refused: " + err.message); if (text.trim()) sendText(text); });
    } else {
      sendText(text);
    }
  });
  input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit ? form.requestSubmit() : sendBtn.click(); }
  });
  function stopTyping() {
    clearTimeout(state.typingStopTimer);
    if (state.typingSentAt) { send({ type: "typing", active: false }); state.typingSentAt = 0; }
  }
  input.addEventListener("input", function () {
    var now = Date.now();
    if (now - state.typingSentAt > 2000) { if (send({ type: "typing", active: true })) state.typingSentAt = now; }
    clearTimeout(state.typingStopTimer);
    state.typingStopTimer = setTimeout(stopTyping, 3000);
  });
  offline.addEventListener("submit", function (e) {
    e.preventDefault();
    var body = { client_msg_id: newId(), name: offName.value.trim() || null, email: offEmail.value.trim(), message: offMsg.value };
    offSend.disabled = true;
    api("POST", "/chat/v1/offline", body).then(function (r) {
      if (r.token) { state.token = r.token; save(); }
      show(offDone, true); offMsg.value = "";
      setStatus("Message sent.");
    }).catch(function (err) { setStatus("Could not send: " + err.message); })
      .then(function () { offSend.disabled = false; });
  });
  document.addEventListener("visibilitychange", sendRead);
  window.addEventListener("online", function () { if (!state.ws && state.token) connect(); });

  load();
  if (state.token) { state.started = true; start(); }
  if (script.getAttribute("data-open") === "true") toggle(true);

  window.SwitchboardChat = {
    open: function () { toggle(true); },
    close: function () { toggle(false); },
    state: function () { return { connected: state.connected, lastSeq: state.lastSeq, pending: state.pending.length, token: !!state.token }; }
  };
})();

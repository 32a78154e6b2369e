// A live WebSocket feed — the event stream (/api/v1/stream) by default, or another
// (`path`, e.g. the wallboard's /api/v1/wallboard/stream) — with reconnect and exponential
// backoff. After every (re)connection `onOpen(reconnected)` runs so the page can refetch
// its state: events missed while disconnected are never replayed by the server, so the
// REST state is the source of truth and frames are only hints to refresh.

export class EventStream {
  /**
   * @param {object} o
   * @param {string} [o.path]   the feed (default /api/v1/stream)
   * @param {(ev: object) => void} o.onEvent   every JSON frame
   * @param {(reconnected: boolean) => void} o.onOpen
   * @param {(state: 'connecting'|'live'|'offline') => void} o.onState
   */
  constructor({ path, onEvent, onOpen, onState }) {
    this.path = path || '/api/v1/stream';
    this.onEvent = onEvent;
    this.onOpen = onOpen || (() => {});
    this.onState = onState || (() => {});
    this.ws = null;
    this.attempt = 0;
    this.everOpen = false;
    this.stopped = false;
    this.timer = null;
    this.onOnline = () => this.reconnectNow();
    window.addEventListener('online', this.onOnline);
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    window.removeEventListener('online', this.onOnline);
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close();
      this.ws = null;
    }
    this.onState('offline');
  }

  /** Drops the current socket (used by tests and when the browser comes back online). */
  reconnectNow() {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.attempt = 0;
    if (this.ws && this.ws.readyState <= 1) {
      this.ws.close();
    } else {
      this.connect();
    }
  }

  connect() {
    if (this.stopped) return;
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    this.onState('connecting');
    let ws;
    try {
      ws = new WebSocket(`${proto}//${location.host}${this.path}`);
    } catch (_) {
      this.schedule();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      const reconnected = this.everOpen;
      this.everOpen = true;
      this.attempt = 0;
      this.onState('live');
      this.onOpen(reconnected);
    };
    ws.onmessage = (m) => {
      let ev;
      try {
        ev = JSON.parse(m.data);
      } catch (_) {
        return;
      }
      if (ev && ev.kind === 'resync') {
        this.onOpen(true);
        return;
      }
      this.onEvent(ev);
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.onState('offline');
      this.schedule();
    };
    ws.onerror = () => {
      // onclose follows.
    };
  }

  schedule() {
    if (this.stopped) return;
    clearTimeout(this.timer);
    // 0.5 s, 1 s, 2 s … capped at 15 s, with jitter.
    const base = Math.min(15000, 500 * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 10);
    const delay = base / 2 + Math.random() * (base / 2);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  get connected() {
    return !!this.ws && this.ws.readyState === 1;
  }
}

// Shared helpers for the knowledge base pages (staff and portal). Plain ES module, no
// dependencies. Every piece of text goes into the DOM as text; the only HTML taken from
// the server is (a) article bodies, already sanitized by ammonia on the server, and
// (b) highlighted snippets, re-parsed here so that nothing but <mark> survives.

/** Creates an element: el('a', { href: '#', class: 'x' }, 'text', child, ...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') node.addEventListener(k.slice(2), v);
    else if (k === 'class') node.className = v;
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

/** Debounces a function. */
export function debounce(fn, ms) {
  let t;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
}

/** Turns a server snippet (escaped text with <mark>) into DOM nodes: text and <mark> only. */
export function highlighted(html) {
  const doc = new DOMParser().parseFromString(`<div>${html || ''}</div>`, 'text/html');
  const frag = document.createDocumentFragment();
  const walk = (node, into) => {
    for (const child of node.childNodes) {
      if (child.nodeType === Node.TEXT_NODE) into.append(document.createTextNode(child.textContent));
      else if (child.nodeType === Node.ELEMENT_NODE) {
        if (child.tagName === 'MARK') {
          const m = document.createElement('mark');
          m.textContent = child.textContent;
          into.append(m);
        } else walk(child, into);
      }
    }
  };
  walk(doc.body.firstChild || doc.body, frag);
  return frag;
}

/** Puts server-sanitized article HTML into a container, stripping anything active again. */
export function setArticleHtml(container, html) {
  const doc = new DOMParser().parseFromString(html || '', 'text/html');
  doc.querySelectorAll('script,style,iframe,object,embed,form').forEach((n) => n.remove());
  doc.querySelectorAll('*').forEach((n) => {
    for (const a of [...n.attributes]) {
      if (a.name.startsWith('on') || /^\s*javascript:/i.test(a.value)) n.removeAttribute(a.name);
    }
  });
  container.replaceChildren(...doc.body.childNodes);
}

/** API client: JSON in/out, problem+json errors thrown as Error with .status/.problem. */
export function apiClient() {
  let csrf = null;
  async function call(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (csrf && method !== 'GET') headers['X-CSRF-Token'] = csrf;
    const resp = await fetch(path, {
      method, headers, credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await resp.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = text; }
    if (!resp.ok) {
      const err = new Error((data && (data.detail || data.title)) || `HTTP ${resp.status}`);
      err.status = resp.status;
      err.problem = data;
      throw err;
    }
    return data;
  }
  return {
    call,
    get: (p) => call('GET', p),
    setCsrf: (t) => { csrf = t; },
  };
}

/** Builds a query string from the non-empty entries of an object. */
export function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') u.set(k, v);
  const s = u.toString();
  return s ? `?${s}` : '';
}

/** Formats a timestamp for people. */
export function when(ts) {
  try { return new Date(ts).toLocaleString(); } catch { return String(ts); }
}

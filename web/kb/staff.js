// Staff knowledge base page: results as you type, article view, and the editor for
// kb_editor/admin (create, edit, publish, archive, delete, version history).
import { apiClient, debounce, el, highlighted, qs, setArticleHtml, when } from './common.js';

const api = apiClient();
const $ = (id) => document.getElementById(id);
let me = null;
let editor = false;
let offset = 0;
const PAGE = 10;

async function boot() {
  try {
    me = await api.get('/api/v1/auth/me');
  } catch (e) {
    if (e.status === 401) return showLogin();
    $('main').append(el('p', { class: 'error', role: 'alert' }, `Cannot load: ${e.message}`));
    return;
  }
  start();
}

function showLogin() {
  $('login').hidden = false;
  $('login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    try {
      await api.call('POST', '/api/v1/auth/login', { username: f.get('username'), password: f.get('password') });
      me = await api.get('/api/v1/auth/me');
      $('login').hidden = true;
      start();
    } catch (e) {
      $('login-error').textContent = e.status === 401 ? 'Wrong username or password.' : e.message;
    }
  });
}

function start() {
  api.setCsrf(me.csrf_token);
  const roles = me.roles || [];
  editor = roles.includes('kb_editor') || roles.includes('admin');
  $('who').textContent = me.display_name || me.username || '';
  $('app').hidden = false;
  $('new-link').hidden = !editor;
  $('status-label').hidden = !editor;
  const run = debounce(() => { offset = 0; search(); }, 200);
  $('search-form').addEventListener('input', run);
  $('search-form').addEventListener('submit', (ev) => { ev.preventDefault(); offset = 0; search(); });
  window.addEventListener('hashchange', route);
  route();
  search();
  if (editor || roles.includes('supervisor')) indexStatus();
}

let seq = 0;
async function search() {
  const f = new FormData($('search-form'));
  const params = Object.fromEntries(f.entries());
  const mine = ++seq;
  try {
    const r = await api.get(`/api/v1/kb/search${qs({ ...params, limit: PAGE, offset })}`);
    if (mine !== seq) return; // a newer keystroke won
    $('result-count').textContent = `${r.total} article${r.total === 1 ? '' : 's'}`;
    $('results').replaceChildren(...r.items.map(resultItem));
    const pager = [];
    if (offset > 0) pager.push(el('button', { type: 'button', onclick: () => { offset = Math.max(0, offset - PAGE); search(); } }, 'Previous'));
    if (r.next_offset !== null && r.next_offset !== undefined) pager.push(el('button', { type: 'button', onclick: () => { offset = r.next_offset; search(); } }, 'Next'));
    $('pager').replaceChildren(...pager);
  } catch (e) {
    if (mine === seq) $('result-count').textContent = `Search failed: ${e.message}`;
  }
}

function resultItem(it) {
  const h = el('h3', {}, el('a', { href: `#/articles/${it.id}` }, highlighted(it.title_html)));
  return el('li', {},
    h,
    el('p', { class: 'snippet' }, highlighted(it.snippet_html)),
    el('p', { class: 'meta' },
      it.status && it.status !== 'published' ? el('span', { class: `badge ${it.status}` }, it.status) : null,
      it.public ? el('span', { class: 'badge' }, 'public') : null,
      [it.category, it.locale, (it.tags || []).join(', ')].filter(Boolean).join(' · ')));
}

async function route() {
  const h = location.hash;
  const view = $('view');
  let m;
  if ((m = h.match(/^#\/articles\/([0-9a-f-]{36})$/))) return showArticle(m[1]);
  if ((m = h.match(/^#\/edit\/([0-9a-f-]{36})$/)) && editor) return showEditor(m[1]);
  if (h === '#/new' && editor) return showEditor(null);
  view.replaceChildren();
}

async function showArticle(id) {
  const view = $('view');
  try {
    const a = await api.get(`/api/v1/kb/articles/${id}`);
    const body = el('div', { class: 'body' });
    setArticleHtml(body, a.body_html);
    const tools = editor ? el('div', { class: 'toolbar' },
      el('a', { href: `#/edit/${a.id}` }, 'Edit'),
      a.status !== 'published' ? el('button', { type: 'button', onclick: () => setStatus(a, 'published') }, 'Publish') : null,
      a.status !== 'archived' ? el('button', { type: 'button', onclick: () => setStatus(a, 'archived') }, 'Archive') : null,
      el('button', { type: 'button', class: 'danger', onclick: () => remove(a) }, 'Delete')) : null;
    const atts = el('ul', {});
    api.get(`/api/v1/kb/articles/${id}/attachments`).then((r) => {
      atts.replaceChildren(...r.items.map((t) => el('li', {}, el('a', { href: `/api/v1/kb/attachments/${t.id}` }, t.filename), ` (${t.content_type}, ${t.size_bytes} bytes)`)));
    }).catch(() => {});
    const h2 = el('h2', { tabindex: '-1' }, a.title);
    view.replaceChildren(el('article', { class: 'view', 'aria-labelledby': 'art-h' },
      Object.assign(h2, { id: 'art-h' }),
      el('p', { class: 'meta' }, el('span', { class: `badge ${a.status}` }, a.status), a.public ? el('span', { class: 'badge' }, 'public') : null,
        `${a.category || 'uncategorized'} · ${a.locale} · v${a.version} · updated ${when(a.updated_at)}`),
      tools, body, el('h3', {}, 'Attachments'), atts));
    h2.focus();
  } catch (e) {
    view.replaceChildren(el('p', { class: 'error', role: 'alert' }, e.status === 404 ? 'Article not found.' : e.message));
  }
}

async function setStatus(a, status) {
  try {
    await api.call('PATCH', `/api/v1/kb/articles/${a.id}`, { status, expected_version: a.version });
    showArticle(a.id);
    search();
  } catch (e) { alert(e.message); }
}

async function remove(a) {
  if (!confirm(`Delete “${a.title}”? This cannot be undone.`)) return;
  try {
    await api.call('DELETE', `/api/v1/kb/articles/${a.id}`);
    location.hash = '#/';
    search();
  } catch (e) { alert(e.message); }
}

async function showEditor(id) {
  const view = $('view');
  let a = { title: '', body: '', category: '', tags: [], locale: 'en', status: 'draft', public: false, version: null };
  if (id) {
    try { a = await api.get(`/api/v1/kb/articles/${id}`); } catch (e) {
      view.replaceChildren(el('p', { class: 'error', role: 'alert' }, e.message));
      return;
    }
  }
  const err = el('p', { class: 'error', role: 'alert' });
  const status = el('select', { name: 'status' }, ...['draft', 'published', 'archived'].map((s) => el('option', { value: s, selected: s === a.status }, s)));
  const form = el('form', { class: 'editor', 'aria-labelledby': 'ed-h' },
    el('h2', { id: 'ed-h' }, id ? `Edit “${a.title}”` : 'New article'),
    el('div', { class: 'grid' },
      el('label', {}, 'Title', el('input', { name: 'title', required: true, maxlength: 300, value: a.title })),
      el('label', {}, 'Category', el('input', { name: 'category', value: a.category })),
      el('label', {}, 'Tags (comma separated)', el('input', { name: 'tags', value: (a.tags || []).join(', ') })),
      el('label', {}, 'Locale', el('input', { name: 'locale', value: a.locale, size: 6 })),
      el('label', {}, 'Status', status),
      el('label', {}, 'Public portal', el('input', { type: 'checkbox', name: 'public', checked: a.public }))),
    el('label', {}, 'Body (Markdown)', el('textarea', { name: 'body' }, a.body)),
    el('div', { class: 'toolbar' },
      el('button', { class: 'primary', type: 'submit' }, 'Save'),
      id ? el('a', { href: `#/articles/${id}` }, 'Cancel') : null),
    err);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const body = {
      title: f.get('title'), body: f.get('body'), category: f.get('category'), locale: f.get('locale'),
      tags: String(f.get('tags') || '').split(',').map((t) => t.trim()).filter(Boolean),
      status: f.get('status'), public: f.get('public') !== null,
    };
    try {
      const saved = id
        ? await api.call('PATCH', `/api/v1/kb/articles/${id}`, { ...body, expected_version: a.version })
        : await api.call('POST', '/api/v1/kb/articles', body);
      location.hash = `#/articles/${saved.id}`;
      search();
    } catch (e) {
      err.textContent = e.status === 409 ? 'Someone else changed this article meanwhile; reload to see their version.' : e.message;
    }
  });
  const history = el('section', { 'aria-labelledby': 'hist-h' }, el('h3', { id: 'hist-h' }, 'Version history'));
  if (id) {
    api.get(`/api/v1/kb/articles/${id}/versions`).then((r) => {
      history.append(el('table', {},
        el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'Version'), el('th', { scope: 'col' }, 'Author'), el('th', { scope: 'col' }, 'When'), el('th', { scope: 'col' }, 'Status'), el('th', { scope: 'col' }, 'Title'))),
        el('tbody', {}, ...r.items.map((v) => el('tr', {}, el('td', {}, `v${v.version}`), el('td', {}, v.author_name), el('td', {}, when(v.created_at)), el('td', {}, v.status), el('td', {}, v.title))))));
    }).catch(() => {});
    const upload = el('form', { 'aria-label': 'Upload attachment' },
      el('label', {}, 'Attachment', el('input', { type: 'file', name: 'file' })),
      el('button', { type: 'submit' }, 'Upload'));
    upload.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const file = upload.querySelector('input[type=file]').files[0];
      if (!file) return;
      const resp = await fetch(`/api/v1/kb/articles/${id}/attachments${qs({ filename: file.name })}`, {
        method: 'POST', credentials: 'same-origin',
        headers: { 'Content-Type': file.type || 'application/octet-stream', 'X-CSRF-Token': me.csrf_token }, body: file,
      });
      err.textContent = resp.ok ? `Uploaded ${file.name}.` : `Upload failed (${resp.status}).`;
    });
    view.replaceChildren(form, upload, history);
  } else {
    view.replaceChildren(form);
  }
  form.querySelector('input[name=title]').focus();
}

async function indexStatus() {
  try {
    const s = await api.get('/api/v1/kb/index/status');
    const lag = s.pending ? `${s.pending} change(s) waiting, oldest ${Math.round(s.oldest_pending_age_seconds)} s` : 'up to date';
    $('index-status').textContent = `Search index (${s.backend}): ${lag}${s.last_error ? ` · last error: ${s.last_error}` : ''}`;
  } catch { /* not allowed for this role */ }
  setTimeout(indexStatus, 15000);
}

boot();

// Public help center: lists and searches public published articles through the public
// endpoints; no sign-in.
import { apiClient, debounce, el, highlighted, qs, setArticleHtml, when } from './common.js';

const api = apiClient();
const $ = (id) => document.getElementById(id);
const PAGE = 10;
let offset = 0;
let seq = 0;

async function search() {
  const params = Object.fromEntries(new FormData($('search-form')).entries());
  const mine = ++seq;
  try {
    const r = await api.get(`/api/v1/kb/public/search${qs({ ...params, limit: PAGE, offset })}`);
    if (mine !== seq) return;
    $('result-count').textContent = params.q ? `${r.total} result${r.total === 1 ? '' : 's'}` : 'Latest articles';
    $('results').replaceChildren(...r.items.map((it) => el('li', {},
      el('h3', {}, el('a', { href: `#/articles/${it.id}` }, highlighted(it.title_html))),
      el('p', { class: 'snippet' }, highlighted(it.snippet_html)),
      el('p', { class: 'meta' }, [it.category, it.locale].filter(Boolean).join(' · ')))));
    const pager = [];
    if (offset > 0) pager.push(el('button', { type: 'button', onclick: () => { offset = Math.max(0, offset - PAGE); search(); } }, 'Previous'));
    if (r.next_offset !== null && r.next_offset !== undefined) pager.push(el('button', { type: 'button', onclick: () => { offset = r.next_offset; search(); } }, 'Next'));
    $('pager').replaceChildren(...pager);
  } catch (e) {
    if (mine === seq) $('result-count').textContent = 'Search is unavailable right now. Please try again shortly.';
  }
}

async function route() {
  const m = location.hash.match(/^#\/articles\/([0-9a-f-]{36})$/);
  const view = $('view');
  if (!m) { view.replaceChildren(); return; }
  try {
    const a = await api.get(`/api/v1/kb/public/articles/${m[1]}`);
    const body = el('div', { class: 'body' });
    setArticleHtml(body, a.body_html);
    const h2 = el('h2', { id: 'art-h', tabindex: '-1' }, a.title);
    view.replaceChildren(el('article', { class: 'view', 'aria-labelledby': 'art-h' },
      h2,
      el('p', { class: 'meta' }, `${a.category || ''} · updated ${when(a.updated_at)}`),
      body,
      a.attachments.length ? el('ul', {}, ...a.attachments.map((t) => el('li', {}, el('a', { href: t.url }, t.filename)))) : null));
    h2.focus();
  } catch (e) {
    view.replaceChildren(el('p', { class: 'error', role: 'alert' }, 'This article is not available.'));
  }
}

$('search-form').addEventListener('input', debounce(() => { offset = 0; search(); }, 200));
$('search-form').addEventListener('submit', (ev) => { ev.preventDefault(); offset = 0; search(); });
window.addEventListener('hashchange', route);
search();
route();

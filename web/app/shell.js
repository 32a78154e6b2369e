// Shared page shell for the dashboard and admin pages: sign-in form, top bar with
// navigation, role gate.

import { whoami, login, logout } from './api.js';
import { h, replace, $ } from './dom.js';

const NAV = [
  { href: '/', label: 'Inbox' },
  { href: '/dashboard.html', label: 'Dashboard', roles: ['admin', 'supervisor'] },
  { href: '/wallboard.html', label: 'Wallboard', roles: ['admin', 'supervisor'] },
  { href: '/reports.html', label: 'Reports', roles: ['admin', 'supervisor'] },
  { href: '/admin.html', label: 'Admin', roles: ['admin'] },
  { href: '/crm.html', label: 'Customers' },
  { href: '/kb.html', label: 'Knowledge base' },
  { href: '/campaigns.html', label: 'Campaigns', roles: ['admin', 'supervisor', 'marketer'] },
];

function topbar(me, live) {
  const roles = me.roles || [];
  const here = location.pathname === '/index.html' ? '/' : location.pathname;
  return h('header', { class: 'topbar', role: 'banner' },
    h('div', { class: 'brand' }, h('img', { src: '/assets/logo.svg', alt: '', width: 24, height: 24 }), 'Switchboard'),
    h('nav', { class: 'mainnav', 'aria-label': 'Main' },
      NAV.filter((n) => !n.roles || n.roles.some((r) => roles.includes(r)))
        .map((n) => h('a', { href: n.href, 'aria-current': n.href === here ? 'page' : null }, n.label))),
    h('div', { class: 'topbar-right' },
      live ? h('span', { id: 'conn-state', class: 'conn conn-connecting', role: 'status' }, 'Connecting…') : null,
      h('span', { class: 'me-name' }, me.display_name || me.username),
      h('button', {
        type: 'button', class: 'btn btn-ghost', id: 'logout',
        onclick: async () => { try { await logout(); } finally { location.reload(); } },
      }, 'Sign out')));
}

function loginForm(title, resolve) {
  const err = h('p', { class: 'form-error', role: 'alert', hidden: true });
  const user = h('input', { id: 'login-username', autocomplete: 'username', required: true });
  const pass = h('input', { id: 'login-password', type: 'password', autocomplete: 'current-password', required: true });
  const form = h('form', { id: 'login-form', class: 'login-card', novalidate: true },
    h('div', { class: 'brand brand-lg' }, h('img', { src: '/assets/logo.svg', alt: '', width: 32, height: 32 }), 'Switchboard'),
    h('h1', null, title),
    h('label', { for: 'login-username' }, 'Username'), user,
    h('label', { for: 'login-password' }, 'Password'), pass,
    err,
    h('button', { type: 'submit', id: 'login-submit', class: 'btn btn-primary btn-block' }, 'Sign in'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    err.hidden = true;
    try {
      await login(user.value.trim(), pass.value);
      resolve(await whoami());
    } catch (ex) {
      err.textContent = ex.status === 401 ? 'Wrong username or password.' : ex.message;
      err.hidden = false;
    }
  });
  setTimeout(() => user.focus(), 0);
  return h('main', { class: 'login-view', id: 'login-view' }, form);
}

/**
 * Signs the user in if needed, checks roles, draws the top bar and returns
 * { me, main } where `main` is the page's <main> element to fill.
 */
export async function startPage({ title, roles, live }) {
  const root = $('#root');
  let me = await whoami().catch(() => null);
  if (!me) {
    me = await new Promise((resolve) => replace(root, loginForm(`Sign in — ${title}`, resolve)));
  }
  const main = h('main', { class: 'page', id: 'main', tabindex: '-1', 'aria-labelledby': 'page-title' });
  replace(root, h('div', { class: 'shell' }, topbar(me, live), main));
  if (roles && !roles.some((r) => (me.roles || []).includes(r))) {
    replace(main, h('h1', { id: 'page-title' }, title),
      h('p', { class: 'form-error', role: 'alert' }, `This page needs one of these roles: ${roles.join(', ')}.`));
    return null;
  }
  main.focus();
  return { me, main };
}

export function setConnState(s) {
  const el = document.getElementById('conn-state');
  if (!el) return;
  el.className = `conn conn-${s}`;
  el.textContent = s === 'live' ? 'Live' : s === 'connecting' ? 'Connecting…' : 'Offline — reconnecting';
  document.body.dataset.stream = s;
}

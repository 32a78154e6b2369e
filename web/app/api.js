// HTTP client for the Switchboard API: JSON in and out, the session cookie, the
// X-CSRF-Token header on every unsafe method, and application/problem+json errors turned
// into ApiError (whose message is the server's `detail`).

let csrfToken = null;

/** Remembers the CSRF token from the login response or GET /api/v1/auth/me. */
export function setCsrf(token) {
  csrfToken = token || null;
}

/** An API failure: `status`, `code` and the server's `detail` as message. */
export class ApiError extends Error {
  constructor(status, detail, code, field) {
    super(detail || `Request failed (${status})`);
    this.status = status;
    this.code = code || null;
    this.field = field || null;
  }
}

const UNSAFE = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

/**
 * Calls the API. `body` is sent as JSON. Resolves to the parsed JSON (or null for 204).
 * Rejects with ApiError on any non-2xx answer and on network failures (status 0).
 */
export async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (UNSAFE.has(method) && csrfToken) headers['X-CSRF-Token'] = csrfToken;
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, 'The server cannot be reached. Check your connection.', 'network');
  }
  if (res.status === 204) return null;
  const type = res.headers.get('content-type') || '';
  let data = null;
  if (type.includes('json')) {
    try {
      data = await res.json();
    } catch (_) {
      data = null;
    }
  }
  if (!res.ok) {
    const detail = data && typeof data.detail === 'string' ? data.detail : `${res.status} ${res.statusText}`;
    throw new ApiError(res.status, detail, data && data.code, data && data.field);
  }
  return data;
}


/** Uploads a file's bytes as the request body (its type as Content-Type); resolves to the JSON answer. */
export async function upload(path, file) {
  const headers = { Accept: 'application/json', 'Content-Type': file.type || 'application/octet-stream' };
  if (csrfToken) headers['X-CSRF-Token'] = csrfToken;
  let res;
  try {
    res = await fetch(path, { method: 'POST', headers, credentials: 'same-origin', body: file });
  } catch (e) {
    throw new ApiError(0, 'The server cannot be reached. Check your connection.', 'network');
  }
  const data = (res.headers.get('content-type') || '').includes('json') ? await res.json().catch(() => null) : null;
  if (!res.ok) {
    const detail = data && typeof data.detail === 'string' ? data.detail : res.status === 413 ? 'The file is too large.' : `${res.status} ${res.statusText}`;
    throw new ApiError(res.status, detail, data && data.code, data && data.field);
  }
  return data;
}

export const get = (p) => api('GET', p);
export const post = (p, b) => api('POST', p, b === undefined ? {} : b);
export const put = (p, b) => api('PUT', p, b);
export const patch = (p, b) => api('PATCH', p, b);
export const del = (p) => api('DELETE', p);

/** GET that resolves to null instead of failing when the endpoint is absent (404/405/501). */
export async function getOptional(path) {
  try {
    return await get(path);
  } catch (e) {
    if (e instanceof ApiError && [404, 405, 501].includes(e.status)) return null;
    throw e;
  }
}

/** The signed-in caller (GET /api/v1/auth/me), or null when not signed in. */
export async function whoami() {
  try {
    const me = await get('/api/v1/auth/me');
    setCsrf(me.csrf_token);
    return me;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return null;
    throw e;
  }
}

/** Signs in; returns {user, agent_id, csrf_token}. */
export async function login(username, password) {
  const r = await post('/api/v1/auth/login', { username, password });
  setCsrf(r.csrf_token);
  return r;
}

export async function logout() {
  try {
    await post('/api/v1/auth/logout');
  } finally {
    setCsrf(null);
  }
}

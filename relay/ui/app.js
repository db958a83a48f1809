// NowConnect relay dashboard: plain ES2020 against /api/v1 on the same origin.
// Contract with the relay and the browser test: relay/ui/CONTRACT.md.
// Every value from the API is shown with textContent (agent ids, addresses and audit fields
// are attacker-influenced); no innerHTML, no inline style (the CSP forbids both anyway).
'use strict';

(() => {
  const REFRESH_MS = 5000;
  const PAGE_ROWS = 100;
  const PKCE_KEY = 'nowconnect.pkce';
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const MFA_TEXT = 'Your sign-in did not use a second factor; the MFA policy requires one.';
  const ADMIN_PAGES = ['overview', 'agents', 'connectors', 'sessions', 'audit', 'policies'];
  const SCOPED_PAGES = ['agents', 'sessions', 'audit'];
  const TITLES = {
    overview: 'Overview', agents: 'Agents', connectors: 'Connectors',
    sessions: 'Sessions', audit: 'Audit', policies: 'Policies',
  };
  // What turning a policy off exposes, said in the confirmation.
  const EXPOSES = {
    'pol-mfa-required': 'Portal tokens without a second factor will be accepted.',
    'pol-connector-scopes': 'Agents may export connectors their token does not grant.',
    'pol-pdp-enforce': 'New client connections will be allowed without asking the PDP.',
    'pol-cidr-allowlists': 'Clients from any address will reach the listeners: allowlists are not enforced.',
  };
  const AUDIT_ACTIONS = ['tunnel_auth', 'hello', 'open', 'agent_disconnected', 'duplicate_agent',
    'agent_blocked', 'agent_unblocked', 'session_terminated', 'policy_toggled', 'portal_auth',
    'source_cooldown', 'config_reload'];

  // The bearer token lives here only: never in storage or cookies.
  let token = null;
  let me = null;
  let config = null;
  let current = null; // { name, page }
  let timer = null;
  // Each load takes a number; only the newest draws (a page switch or an action's refresh
  // overtakes a timer's load in flight).
  let loads = 0;
  let toastTimer = null;

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(typeof c === 'string' || typeof c === 'number' ? String(c) : c);
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'text') node.textContent = String(v);
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? '' : String(v));
    }
  }

  class ApiError extends Error {
    constructor(status, code, reason) {
      super(reason);
      this.status = status;
      this.code = code;
    }
  }

  async function call(method, path, body, bearer) {
    const headers = {};
    const auth = bearer === undefined ? token : bearer;
    if (auth) headers.Authorization = 'Bearer ' + auth;
    const opts = { method, headers, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    let r;
    try {
      r = await fetch(path, opts);
    } catch (e) {
      throw new ApiError(0, 'network', 'the relay did not answer (' + (e && e.message) + ')');
    }
    let data = null;
    try {
      const text = await r.text();
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (!r.ok) {
      const code = (data && data.error) || 'http_' + r.status;
      const reason = (data && data.reason) || r.statusText || 'request refused';
      throw new ApiError(r.status, code, reason);
    }
    return data;
  }

  const api = (path) => call('GET', '/api/v1' + path);

  // ---- formatting

  function bytes(n) {
    const v = Number(n) || 0;
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    let x = v;
    while (x >= 1024 && i < units.length - 1) { x /= 1024; i += 1; }
    const shown = i === 0 && (x >= 10 || Number.isInteger(x)) ? Math.round(x) : x.toFixed(x < 10 ? 1 : 0);
    return shown + ' ' + units[i];
  }

  const rate = (n) => bytes(n) + '/s';

  function duration(sec) {
    let s = Math.max(0, Math.floor(Number(sec) || 0));
    const d = Math.floor(s / 86400); s -= d * 86400;
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    if (d > 0) return d + 'd ' + h + 'h';
    if (h > 0) return h + 'h ' + m + 'm';
    if (m > 0) return m + 'm ' + s + 's';
    return s + 's';
  }

  function since(iso) {
    const t = Date.parse(iso);
    return Number.isNaN(t) ? '' : duration((Date.now() - t) / 1000);
  }

  function when(iso) {
    const t = Date.parse(iso);
    return Number.isNaN(t) ? String(iso || '') : new Date(t).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
  }

  const plain = (v) => (v === null || v === undefined ? '' : typeof v === 'string' ? v : JSON.stringify(v));

  // ---- toast and confirmation

  function toast(text) {
    const t = $('toast');
    t.textContent = text;
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, 6000);
  }

  let confirmAction = null;

  function ask(text, action) {
    confirmAction = action;
    $('confirm-text').textContent = text;
    const d = $('confirm');
    if (!d.open) d.showModal();
  }

  function answer(yes) {
    const d = $('confirm');
    const action = confirmAction;
    confirmAction = null;
    if (d.open) d.close();
    if (yes && action) {
      action().then(() => refresh(), (e) => toast(describe(e)));
    }
  }

  function describe(e) {
    if (e instanceof ApiError) {
      if (e.code === 'mfa_required') return MFA_TEXT + ' ' + e.message;
      return (e.status ? e.status + ' ' : '') + e.code + ': ' + e.message;
    }
    return String((e && e.message) || e);
  }

  // ---- sign-in

  function b64url(buf) {
    let s = '';
    for (const b of new Uint8Array(buf)) s += String.fromCharCode(b);
    return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  function random(n) {
    const a = new Uint8Array(n);
    crypto.getRandomValues(a);
    return b64url(a);
  }

  const redirectUri = () => location.origin + '/ui/';

  async function startOidc() {
    const o = config && config.oidc;
    if (!o) return;
    const verifier = random(48);
    const state = random(24);
    const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier));
    sessionStorage.setItem(PKCE_KEY, JSON.stringify({ state, verifier, redirect: redirectUri() }));
    const u = new URL(o.authorization_endpoint);
    u.searchParams.set('response_type', 'code');
    u.searchParams.set('client_id', o.client_id);
    u.searchParams.set('redirect_uri', redirectUri());
    u.searchParams.set('scope', o.scopes);
    u.searchParams.set('state', state);
    u.searchParams.set('code_challenge', b64url(digest));
    u.searchParams.set('code_challenge_method', 'S256');
    location.assign(u.toString());
  }

  // The IdP's answer in the address bar: ?code=&state= or ?error=&error_description=.
  async function callback(params) {
    const saved = sessionStorage.getItem(PKCE_KEY);
    sessionStorage.removeItem(PKCE_KEY);
    history.replaceState(null, '', '/ui/');
    if (params.has('error')) {
      throw new ApiError(0, params.get('error'), params.get('error_description') || 'the identity provider refused the sign-in');
    }
    let pkce = null;
    try { pkce = saved ? JSON.parse(saved) : null; } catch (_) { pkce = null; }
    if (!pkce || pkce.state !== params.get('state')) {
      throw new ApiError(0, 'state_mismatch', 'the sign-in answer does not belong to a sign-in started in this tab; sign in again');
    }
    const got = await call('POST', '/ui/token', {
      code: params.get('code'), code_verifier: pkce.verifier, redirect_uri: pkce.redirect,
    }, null);
    if (!got || typeof got.token !== 'string') throw new ApiError(0, 'bad_answer', 'the relay gave no token');
    return got.token;
  }

  function showSignin(error) {
    token = null;
    me = null;
    stopTimer();
    current = null;
    $('nav').replaceChildren();
    $('whoami').textContent = '';
    $('signout').hidden = true;
    $('app').hidden = true;
    $('page').replaceChildren();
    $('page').removeAttribute('data-loaded');
    $('loading').hidden = true;
    $('signin').hidden = false;
    const err = $('signin-error');
    err.textContent = error ? describe(error) : '';
    err.hidden = !error;
    const btn = $('signin-oidc');
    const note = $('signin-oidc-note');
    let why = '';
    if (!config || !config.oidc) {
      why = config && config.oidc_error
        ? 'Sign-in with the identity provider is unavailable: ' + config.oidc_error
        : 'Sign-in with an identity provider is not configured (portal.oidc); paste a token below.';
    } else if (!window.crypto || !crypto.subtle) {
      why = 'This page is not a secure context (use https, or open it on localhost): sign-in needs it. Paste a token below instead.';
    }
    btn.disabled = Boolean(why);
    note.textContent = why;
    note.hidden = !why;
  }

  async function signIn(bearer) {
    let who;
    try {
      who = await call('GET', '/api/v1/me', undefined, bearer);
    } catch (e) {
      showSignin(e);
      return;
    }
    token = bearer;
    me = who;
    $('token-input').value = '';
    $('signin').hidden = true;
    $('loading').hidden = true;
    $('app').hidden = false;
    $('signout').hidden = false;
    $('whoami').textContent = me.subject + (me.admin ? ' \u00b7 admin' : ' \u00b7 agent ' + me.agent_id);
    const nav = $('nav');
    nav.replaceChildren(...pages().map((p) => el('a', { href: '#/' + p, 'data-nav': p, text: TITLES[p] })));
    route();
  }

  const pages = () => (me && me.admin ? ADMIN_PAGES : SCOPED_PAGES);

  // ---- routing and refresh

  function stopTimer() {
    clearTimeout(timer);
    timer = null;
  }

  function route() {
    if (!token) return;
    const wanted = location.hash.replace(/^#\/?/, '');
    const list = pages();
    if (!list.includes(wanted)) {
      history.replaceState(null, '', '/ui/#/' + list[0]);
    }
    const name = list.includes(wanted) ? wanted : list[0];
    for (const a of $('nav').querySelectorAll('a')) {
      a.classList.toggle('active', a.dataset.nav === name);
    }
    stopTimer();
    loads += 1;
    const root = $('page');
    root.removeAttribute('data-loaded');
    root.replaceChildren();
    const page = PAGES[name](root);
    current = { name, page };
    refresh();
  }

  async function refresh() {
    if (!current) return;
    stopTimer();
    loads += 1;
    const mine = loads;
    const { name, page } = current;
    try {
      await page.load();
      if (mine !== loads) return;
      page.render();
      $('page').dataset.loaded = name;
    } catch (e) {
      if (mine !== loads) return;
      if (e instanceof ApiError && e.status === 401) {
        showSignin(new ApiError(401, 'invalid_token', 'your session ended (' + e.message + '); sign in again'));
        return;
      }
      page.error(describe(e));
    }
    if (mine === loads) {
      stopTimer();
      timer = setTimeout(refresh, REFRESH_MS);
    }
  }

  // A page: load() fetches, render() draws from what was fetched, error() says what failed.
  function basePage(root, title) {
    const status = el('p', { class: 'error', hidden: true });
    root.append(el('h1', { text: title }), status);
    return {
      status,
      error(text) { status.textContent = text; status.hidden = false; },
      ok() { status.hidden = true; },
    };
  }

  function table(headers) {
    const body = el('tbody');
    const t = el('table', {}, el('thead', {}, el('tr', {}, ...headers.map((h) => {
      const [label, cls] = Array.isArray(h) ? h : [h, null];
      return el('th', { class: cls, text: label });
    }))), body);
    return { t, body };
  }

  function emptyRow(body, cols, text) {
    body.replaceChildren(el('tr', {}, el('td', { colspan: cols, class: 'muted', text })));
  }

  function actionButton(action, label, onclick, danger) {
    return el('button', { type: 'button', 'data-action': action, class: danger ? 'danger' : null, text: label, onclick });
  }

  // ---- charts

  function bucketRates(buckets, nowMs) {
    return buckets.map((b, i) => {
      const last = i === buckets.length - 1;
      const secs = last ? Math.max(1, (nowMs - b.t) / 1000) : 60;
      return { t: b.t, in: (b.bytes_c2a || 0) / secs, out: (b.bytes_a2c || 0) / secs };
    });
  }

  function points(series, key, x, y) {
    return series.map((p) => x(p.t).toFixed(1) + ',' + y(p[key]).toFixed(1)).join(' ');
  }

  function chart(id, history) {
    const W = 1200;
    const H = 200;
    const pad = { l: 70, r: 10, t: 10, b: 22 };
    const s = svg('svg', { id, class: 'chart', viewBox: '0 0 ' + W + ' ' + H, role: 'img', 'aria-label': 'Bytes per second, last hour' });
    const nowMs = history.now_ms;
    const from = nowMs - 60 * 60 * 1000;
    const series = bucketRates(history.buckets || [], nowMs);
    const max = Math.max(1, ...series.map((p) => Math.max(p.in, p.out)));
    const x = (t) => pad.l + ((t - from) / (nowMs - from)) * (W - pad.l - pad.r);
    const y = (v) => H - pad.b - (v / max) * (H - pad.t - pad.b);
    for (const f of [0, 0.5, 1]) {
      const yy = y(max * f);
      s.append(svg('line', { class: 'grid', x1: pad.l, x2: W - pad.r, y1: yy, y2: yy }));
      const label = svg('text', { class: 'axis', x: pad.l - 6, y: yy + 3, 'text-anchor': 'end' });
      label.textContent = rate(max * f);
      s.append(label);
    }
    for (const [min, anchor] of [[60, 'start'], [30, 'middle'], [0, 'end']]) {
      const label = svg('text', { class: 'axis', x: x(nowMs - min * 60000), y: H - 6, 'text-anchor': anchor });
      label.textContent = min === 0 ? 'now' : '-' + min + ' min';
      s.append(label);
    }
    if (series.length > 0) {
      s.append(svg('polyline', { class: 'in', points: points(series, 'in', x, y) }));
      s.append(svg('polyline', { class: 'out', points: points(series, 'out', x, y) }));
    }
    return s;
  }

  function spark(buckets, nowMs) {
    const W = 120;
    const H = 24;
    const s = svg('svg', { class: 'spark', viewBox: '0 0 ' + W + ' ' + H, role: 'img', 'aria-label': 'Traffic, last hour' });
    const series = bucketRates(buckets || [], nowMs).map((p) => ({ t: p.t, v: p.in + p.out }));
    const from = nowMs - 60 * 60 * 1000;
    const max = Math.max(1, ...series.map((p) => p.v));
    const x = (t) => ((t - from) / (nowMs - from)) * W;
    const y = (v) => H - 2 - (v / max) * (H - 4);
    s.append(svg('line', { class: 'grid', x1: 0, x2: W, y1: H - 2, y2: H - 2 }));
    if (series.length > 0) s.append(svg('polyline', { class: 'total', points: points(series, 'v', x, y) }));
    return s;
  }

  // ---- pages

  function overviewPage(root) {
    const base = basePage(root, 'Overview');
    const tile = (label, id) => el('div', { class: 'tile' }, el('div', { class: 'label', text: label }), el('div', { class: 'value', id }));
    const tiles = el('div', { class: 'tiles' },
      tile('Agents connected', 'ov-agents'), tile('Active sessions', 'ov-sessions'),
      tile('Refused sign-ins, last hour', 'ov-auth-failures'), tile('Relay version', 'ov-version'),
      tile('Uptime', 'ov-uptime'));
    const connectors = el('ul', { id: 'ov-connectors', class: 'plain' });
    const policies = el('ul', { id: 'ov-policies', class: 'plain' });
    const chartBox = el('div');
    root.append(tiles,
      el('div', { class: 'card' }, el('h2', { text: 'Traffic, last hour' }),
        el('div', { class: 'legend' }, el('span', { class: 'in', text: 'client \u2192 agent' }), el('span', { class: 'out', text: 'agent \u2192 client' })),
        chartBox),
      el('div', { class: 'card' }, el('h2', { text: 'Connectors' }), connectors),
      el('div', { class: 'card' }, el('h2', { text: 'Policies' }), policies));
    let status = null;
    let hist = null;
    return {
      ...base,
      async load() { [status, hist] = await Promise.all([api('/status'), api('/history')]); },
      render() {
        base.ok();
        $('ov-agents').textContent = String(status.agents_connected);
        $('ov-sessions').textContent = String(status.active_sessions);
        $('ov-auth-failures').textContent = String(status.auth_failures_last_hour);
        $('ov-version').textContent = status.version + (status.relay ? ' (' + status.relay + ')' : '');
        $('ov-version').classList.add('small');
        $('ov-uptime').textContent = duration(status.uptime_sec);
        connectors.replaceChildren(...(status.connectors.length === 0
          ? [el('li', { class: 'muted', text: 'No connectors configured.' })]
          : status.connectors.map((c) => el('li', { class: c.agents > 0 ? null : 'missing', 'data-connector': c.name },
            el('span', { class: 'dot' }), c.name + ': ',
            c.agents > 0 ? c.agents + (c.agents === 1 ? ' agent' : ' agents') : 'no agent: its clients are refused'))));
        policies.replaceChildren(...status.policies.map((p) => el('li', {},
          el('span', { class: p.enabled ? 'on' : 'off', text: p.enabled ? 'on' : 'off' }), ' ' + p.id)));
        chartBox.replaceChildren(chart('ov-chart', hist));
      },
    };
  }

  function agentsPage(root) {
    const base = basePage(root, 'Agents');
    const admin = me.admin;
    const cols = ['Agent', 'Connectors', 'Remote address', 'Connected', 'Version', 'Protocol',
      ['Streams', 'num'], ['Bytes in / out', 'num'], 'State'];
    if (admin) cols.push('');
    const { t, body } = table(cols);
    root.append(t);
    const blockedBox = el('div', { class: 'card', hidden: true });
    const blocked = table(['Blocked agent', '']);
    blockedBox.append(el('h2', { text: 'Block list' }), blocked.t);
    root.append(blockedBox);
    let agents = [];
    let blockList = [];
    return {
      ...base,
      async load() {
        if (admin) {
          const [a, s] = await Promise.all([api('/agents'), api('/status')]);
          agents = a;
          blockList = s.blocked_agents || [];
        } else {
          agents = await api('/agents');
        }
      },
      render() {
        base.ok();
        if (agents.length === 0) emptyRow(body, cols.length, 'No agent is connected.');
        else body.replaceChildren(...agents.map((a) => {
          const state = [];
          if (a.duplicate) state.push('duplicate');
          state.push(a.takes_new_streams ? 'active' : 'standby');
          const row = el('tr', { 'data-agent': a.agent_id, 'data-tunnel': a.tunnel_id },
            el('td', { class: 'name', text: a.agent_id }),
            el('td', { text: (a.connectors || []).join(', ') }),
            el('td', { text: a.remote_addr }),
            el('td', { title: when(a.connected_since), text: since(a.connected_since) + ' ago' }),
            el('td', { text: a.agent_version || '' }),
            el('td', { text: plain(a.protocol_version) }),
            el('td', { class: 'num', text: a.active_streams }),
            el('td', { class: 'num', text: bytes(a.bytes_c2a) + ' / ' + bytes(a.bytes_a2c) }),
            el('td', { text: state.join(', ') }));
          if (admin) {
            row.append(el('td', { class: 'actions' },
              actionButton('disconnect', 'Disconnect', () => ask(
                'Disconnect agent ' + a.agent_id + '? Its streams are reset; it will reconnect unless blocked.',
                () => call('DELETE', '/api/v1/agents/' + encodeURIComponent(a.agent_id))), true),
              actionButton('block', 'Disconnect + block', () => ask(
                'Disconnect and block agent ' + a.agent_id + '? Its streams are reset and its tunnels are refused until it is unblocked.',
                () => call('DELETE', '/api/v1/agents/' + encodeURIComponent(a.agent_id) + '?block=true')), true)));
          }
          return row;
        }));
        blockedBox.hidden = !admin || blockList.length === 0;
        blocked.body.replaceChildren(...blockList.map((id) => el('tr', { 'data-blocked': id },
          el('td', { text: id }),
          el('td', { class: 'actions' }, actionButton('unblock', 'Unblock', () => ask(
            'Unblock agent ' + id + '? Its tunnels will be accepted again.',
            () => call('POST', '/api/v1/agents/' + encodeURIComponent(id) + '/unblock')))))));
      },
    };
  }

  function connectorsPage(root) {
    const base = basePage(root, 'Connectors');
    const cols = ['Connector', 'Listeners', 'Allowlist', 'Agents', ['Streams', 'num'], ['Bytes, last hour', 'num'], 'Traffic, last hour'];
    const { t, body } = table(cols);
    root.append(t);
    let list = [];
    let hist = null;
    return {
      ...base,
      async load() { [list, hist] = await Promise.all([api('/connectors'), api('/history')]); },
      render() {
        base.ok();
        if (list.length === 0) { emptyRow(body, cols.length, 'No connectors configured.'); return; }
        body.replaceChildren(...list.map((c) => {
          const buckets = (hist.connectors || {})[c.name] || [];
          const total = buckets.reduce((n, b) => n + (b.bytes_c2a || 0) + (b.bytes_a2c || 0), 0);
          const listeners = c.listeners || [];
          const allow = listeners.map((l) => (l.allow_cidrs && l.allow_cidrs.length ? l.allow_cidrs.join(', ') : 'any')).join('; ');
          return el('tr', { 'data-connector': c.name, class: (c.agents || []).length ? null : 'missing' },
            el('td', { class: 'name', text: c.name }),
            el('td', { text: listeners.map((l) => l.name + ' ' + l.bind).join(', ') }),
            el('td', { text: allow }),
            el('td', { text: (c.agents || []).length ? c.agents.join(', ') : 'no agent' }),
            el('td', { class: 'num', text: c.active_streams }),
            el('td', { class: 'num', text: bytes(total) }),
            el('td', {}, spark(buckets, hist.now_ms)));
        }));
      },
    };
  }

  function sessionsPage(root) {
    const base = basePage(root, 'Sessions');
    const admin = me.admin;
    const filter = el('input', { type: 'text', id: 'sessions-filter', placeholder: 'Filter by connector, agent or client', 'aria-label': 'Filter sessions' });
    const countEl = el('span', { id: 'sessions-count' });
    const where = el('span', { class: 'muted' });
    const prev = el('button', { type: 'button', id: 'sessions-prev', text: '\u2190 Previous' });
    const next = el('button', { type: 'button', id: 'sessions-next', text: 'Next \u2192' });
    root.append(el('div', { class: 'toolbar' }, filter, countEl, el('span', { class: 'spacer' }), where, prev, next));
    const cols = ['Connector', 'Agent', 'Client', 'Age', ['Bytes in / out', 'num'], 'Session'];
    if (admin) cols.push('');
    const { t, body } = table(cols);
    root.append(t);
    let all = [];
    let pageNo = 0;
    const self = {
      ...base,
      async load() { all = await api('/sessions'); },
      render() {
        base.ok();
        const f = filter.value.trim().toLowerCase();
        const shown = f ? all.filter((s) => [s.connector, s.agent_id, s.client_addr]
          .some((v) => String(v || '').toLowerCase().includes(f))) : all;
        const pagesN = Math.max(1, Math.ceil(shown.length / PAGE_ROWS));
        pageNo = Math.min(pageNo, pagesN - 1);
        countEl.textContent = shown.length + (shown.length === 1 ? ' session' : ' sessions');
        where.textContent = 'page ' + (pageNo + 1) + ' of ' + pagesN;
        prev.disabled = pageNo === 0;
        next.disabled = pageNo >= pagesN - 1;
        const rows = shown.slice(pageNo * PAGE_ROWS, (pageNo + 1) * PAGE_ROWS);
        if (rows.length === 0) { emptyRow(body, cols.length, f ? 'No session matches the filter.' : 'No live session.'); return; }
        body.replaceChildren(...rows.map((s) => {
          const row = el('tr', { 'data-cid': s.cid },
            el('td', { text: s.connector }),
            el('td', { text: s.agent_id }),
            el('td', { text: s.client_addr }),
            el('td', { title: when(s.started), text: since(s.started) }),
            el('td', { class: 'num', text: bytes(s.bytes_c2a) + ' / ' + bytes(s.bytes_a2c) }),
            el('td', { class: 'muted', text: s.cid }));
          if (admin) {
            row.append(el('td', { class: 'actions' }, actionButton('terminate', 'Terminate', () => ask(
              'Terminate session ' + s.cid + ' (' + s.client_addr + ' to ' + s.connector + ')? The client connection is reset.',
              () => call('DELETE', '/api/v1/sessions/' + encodeURIComponent(s.cid))), true)));
          }
          return row;
        }));
      },
    };
    const redraw = () => { self.render(); root.dataset.loaded = 'sessions'; };
    filter.addEventListener('input', () => { pageNo = 0; redraw(); });
    prev.addEventListener('click', () => { pageNo = Math.max(0, pageNo - 1); redraw(); });
    next.addEventListener('click', () => { pageNo += 1; redraw(); });
    return self;
  }

  function auditPage(root) {
    const base = basePage(root, 'Audit');
    const failures = el('input', { type: 'checkbox', id: 'audit-failures' });
    const action = el('select', { id: 'audit-action', 'aria-label': 'Action' },
      el('option', { value: '', text: 'any action' }), ...AUDIT_ACTIONS.map((a) => el('option', { value: a, text: a })));
    const agent = el('input', { type: 'text', id: 'audit-agent', placeholder: 'agent_id', 'aria-label': 'Agent' });
    const sinceIn = el('input', { type: 'text', id: 'audit-since', placeholder: 'since (RFC 3339)', 'aria-label': 'Since' });
    const apply = el('button', { type: 'button', id: 'audit-apply', class: 'primary', text: 'Apply' });
    root.append(el('div', { class: 'toolbar' },
      el('label', {}, failures, ' failures only'), action, agent, sinceIn, apply));
    const cols = ['Time', 'Actor', 'Action', 'Resource', 'Result', 'Reason', 'Detail'];
    const { t, body } = table(cols);
    const older = el('button', { type: 'button', id: 'audit-older', text: 'Older records' });
    root.append(t, el('p', {}, older));
    let limit = PAGE_ROWS;
    let query = '';
    let records = [];
    const self = {
      ...base,
      async load() { records = await api('/audit?limit=' + Math.min(limit, 1000) + query); },
      render() {
        base.ok();
        older.disabled = records.length < limit || limit >= 1000;
        if (records.length === 0) { emptyRow(body, cols.length, 'No record matches.'); return; }
        body.replaceChildren(...records.map((r) => el('tr', { 'data-audit-id': r.id, class: r.success ? null : 'failure' },
          el('td', { class: 'time', text: when(r.time) }),
          el('td', { class: 'actor', text: plain(r.actor) }),
          el('td', { class: 'action', text: plain(r.action) }),
          el('td', { class: 'resource', text: plain(r.resource) }),
          el('td', { class: 'result ' + (r.success ? 'on' : 'off'), text: r.success ? 'ok' : 'refused' }),
          el('td', { class: 'reason', text: plain(r.reason) }),
          el('td', { class: 'detail', text: plain(r.detail) + (r.more ? ' (+' + r.more + ' more)' : '') }))));
      },
    };
    apply.addEventListener('click', () => {
      const q = new URLSearchParams();
      if (failures.checked) q.set('success', 'false');
      if (action.value) q.set('action', action.value);
      if (agent.value.trim()) q.set('agent_id', agent.value.trim());
      if (sinceIn.value.trim()) q.set('since', sinceIn.value.trim());
      const s = q.toString();
      query = s ? '&' + s : '';
      limit = PAGE_ROWS;
      refresh();
    });
    older.addEventListener('click', () => { limit += PAGE_ROWS; refresh(); });
    return self;
  }

  function policiesPage(root) {
    const base = basePage(root, 'Policies');
    const cols = ['Policy', 'State', 'Description', 'Rules', ''];
    const { t, body } = table(cols);
    root.append(t);
    let list = [];
    return {
      ...base,
      async load() { list = await api('/policies'); },
      render() {
        base.ok();
        body.replaceChildren(...list.map((p) => el('tr', { 'data-policy': p.id },
          el('td', {}, el('strong', { text: p.name || p.id }), el('div', { class: 'muted', text: p.id + ' \u00b7 ' + (p.type || '') })),
          el('td', { class: 'state ' + (p.enabled ? 'on' : 'off'), text: p.enabled ? 'on' : 'off' }),
          el('td', { text: p.description || '' }),
          el('td', {}, el('pre', { text: JSON.stringify(p.rules, null, 2) })),
          el('td', { class: 'actions' }, actionButton('toggle', p.enabled ? 'Turn off' : 'Turn on', () => ask(
            p.enabled
              ? 'Turn off ' + (p.name || p.id) + '? ' + (EXPOSES[p.id] || 'Its checks stop at once for new requests.')
              : 'Turn on ' + (p.name || p.id) + '? Its checks apply at once to new requests.',
            () => call('PATCH', '/api/v1/policies/' + encodeURIComponent(p.id), { enabled: !p.enabled })), p.enabled)))));
      },
    };
  }

  const PAGES = {
    overview: overviewPage, agents: agentsPage, connectors: connectorsPage,
    sessions: sessionsPage, audit: auditPage, policies: policiesPage,
  };

  // ---- start

  async function start() {
    $('confirm-yes').addEventListener('click', () => answer(true));
    $('confirm-no').addEventListener('click', () => answer(false));
    $('confirm').addEventListener('cancel', () => { confirmAction = null; });
    $('signout').addEventListener('click', () => showSignin(null));
    $('signin-oidc').addEventListener('click', () => { startOidc().catch((e) => showSignin(e)); });
    $('token-submit').addEventListener('click', () => {
      const t = $('token-input').value.trim();
      if (t) signIn(t);
      else showSignin(new ApiError(0, 'invalid_token', 'paste a token first'));
    });
    window.addEventListener('hashchange', () => { if (token) route(); });

    let fromFragment = null;
    const m = /^#token=([^&]+)/.exec(location.hash);
    if (m) {
      fromFragment = decodeURIComponent(m[1]);
      history.replaceState(null, '', '/ui/');
    }
    try {
      config = await call('GET', '/ui/config.json', undefined, null);
    } catch (_) {
      config = null;
    }
    const params = new URLSearchParams(location.search);
    if (params.has('code') || params.has('error')) {
      let got;
      try {
        got = await callback(params);
      } catch (e) {
        showSignin(e);
        return;
      }
      await signIn(got);
    } else if (fromFragment) {
      await signIn(fromFragment);
    } else {
      showSignin(null);
    }
  }

  start().catch((e) => showSignin(e));
})();

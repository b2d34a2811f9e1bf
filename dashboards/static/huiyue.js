// HuiYue pages: login, API calls and live sockets, shared by every screen. No inline scripts and
// nothing from the internet: everything the pages need is served by the platform itself.
'use strict';

const HY = (() => {
  const KEY = 'hy_token';
  const $ = (sel) => document.querySelector(sel);

  function token() { return sessionStorage.getItem(KEY); }
  function forget() { sessionStorage.removeItem(KEY); }

  async function api(path) {
    const r = await fetch(path, { headers: { authorization: 'Bearer ' + (token() || '') } });
    const body = await r.json().catch(() => ({}));
    if (r.status === 401) { forget(); showLogin('登录已失效，请重新登录'); throw new Error('not_authenticated'); }
    if (!r.ok) { throw new Error(body.title || ('请求失败（' + r.status + '）')); }
    return body;
  }

  function showLogin(message, onDone) {
    let box = $('#hy-login');
    if (!box) {
      box = document.createElement('div');
      box.id = 'hy-login';
      box.innerHTML = '<form class="hy-login-card"><h2>汇约 · 登录</h2>' +
        '<label>用户名<input name="username" autocomplete="username" required></label>' +
        '<label>密码<input name="password" type="password" autocomplete="current-password" required></label>' +
        '<p class="hy-login-msg"></p><button type="submit">登录</button></form>';
      document.body.appendChild(box);
    }
    box.hidden = false;
    box.querySelector('.hy-login-msg').textContent = message || '';
    const form = box.querySelector('form');
    form.onsubmit = async (ev) => {
      ev.preventDefault();
      const data = { username: form.username.value, password: form.password.value, terminal: 'web' };
      const r = await fetch('/api/v1/auth/login', {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(data),
      });
      const body = await r.json().catch(() => ({}));
      if (!r.ok) { box.querySelector('.hy-login-msg').textContent = body.title || '登录失败'; return; }
      sessionStorage.setItem(KEY, body.token);
      box.hidden = true;
      form.password.value = '';
      if (onDone) onDone(body); else location.reload();
    };
  }

  // Calls ready(me) once a session is known to be live, after a login if need be.
  async function requireLogin(ready) {
    if (token()) {
      try { ready(await api('/api/v1/auth/me')); return; } catch (e) { /* falls through to the form */ }
    }
    showLogin('', async () => ready(await api('/api/v1/auth/me')));
  }

  // A live screen: a snapshot then numbered deltas (realtime/stream.py). Reconnects by itself,
  // asks for a fresh snapshot when a number is skipped, and reports its state to onState:
  // 'live', 'reconnecting' or a Chinese error text. Returns {close()}. opts.onUnauthorized replaces
  // the login form (a display device has no one to log in).
  function live(path, onFrame, onState, opts) {
    let ws = null, last = -1, retry = 0, watchdog = null, stopped = false, unacked = 0;
    const proto = location.protocol === 'https:' ? 'wss://' : 'ws://';

    function arm() {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => { if (ws) ws.close(); }, 40000); // heartbeats come every 15 s
    }
    function connect() {
      ws = new WebSocket(proto + location.host + path);
      ws.onopen = () => { ws.send(JSON.stringify({ type: 'auth', token: token() || '' })); arm(); };
      ws.onmessage = (ev) => {
        arm();
        const parsed = JSON.parse(ev.data);
        for (const frame of Array.isArray(parsed) ? parsed : [parsed]) { // a burst comes as one array
          if (frame.type === 'heartbeat') continue;
          if (frame.type === 'delta' && last >= 0 && frame.seq !== last + 1) {
            if (frame.seq > last + 1) { ws.send(JSON.stringify({ type: 'resync' })); break; }
            continue;
          }
          last = frame.seq;
          retry = 0;
          onState('live');
          onFrame(frame);
          if (++unacked >= 16) { unacked = 0; ws.send(JSON.stringify({ type: 'ack', seq: last })); }
        }
      };
      ws.onclose = (ev) => {
        clearTimeout(watchdog);
        if (stopped) return;
        if (ev.code === 4401 && opts && opts.onUnauthorized) { opts.onUnauthorized(); return; }
        if (ev.code === 4401) { forget(); onState('请先登录'); showLogin('请先登录', () => connect()); return; }
        if (ev.code === 4403) { onState('您没有查看此页面的权限'); return; }
        if (ev.code === 4400) { onState('参数有误：' + (ev.reason || '')); return; }
        onState('reconnecting');
        last = -1;
        retry = Math.min(retry + 1, 6);
        setTimeout(connect, Math.min(10000, 500 * 2 ** retry));
      };
    }
    connect();
    return { close() { stopped = true; clearTimeout(watchdog); if (ws) ws.close(); } };
  }

  function setState(el, state) {
    el.classList.toggle('live', state === 'live');
    el.classList.toggle('down', state !== 'live');
    el.textContent = state === 'live' ? '● 实时' : state === 'reconnecting' ? '● 网络中断，重连中…' : state;
  }

  // Times are the hospital's (GET /api/v1/hospital), whatever zone the browser is set to.
  const clock = { tz: 'Asia/Shanghai', today: null };
  async function loadClock() {
    const c = await api('/api/v1/hospital');
    clock.tz = c.timezone;
    clock.today = c.today;
    return c;
  }
  function hm(epoch) {
    return new Date(epoch * 1000).toLocaleTimeString('zh-CN', { timeZone: clock.tz, hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
  }
  function clockTime(iso) {
    return new Date(iso).toLocaleTimeString('zh-CN', { timeZone: clock.tz, hourCycle: 'h23' });
  }
  function today() { return clock.today; }
  function param(name) { return new URLSearchParams(location.search).get(name); }
  // A DOM element with properties and children (text children are set as text, never as HTML).
  function el(tag, attrs, ...children) {
    const e = Object.assign(document.createElement(tag), attrs || {});
    for (const c of children) e.append(c);
    return e;
  }

  return { api, requireLogin, live, setState, loadClock, today, hm, clockTime, param, el, $ };
})();

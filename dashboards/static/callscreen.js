// The call screen of one room (waiting-room TV, 1920x1080): now calling, the next patients in
// order with their priority marks, names masked (张*三) or number only for sensitive departments.
// A snapshot, then the whole queue after every change (app/booking/lua/queue.lua), so it reflows
// at once. Authenticated by a display device's token, given once in the address's fragment
// (#token=hyd_...: a fragment never reaches the server's logs) and kept by the browser; while
// the network is gone it keeps the last queue and shows that it is reconnecting.
'use strict';
(() => {
  const { $, el, live, param } = HY;
  const NEXT = 8;
  const MARKS = { emergency: '急诊', green: '绿色通道', elderly: '老年', child: '儿童', military: '军人' };
  const DEVICE_KEY = 'hy_device_token';
  let room = { call_name: '', name: '' }, lastCall = '';

  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get('token')) {
    localStorage.setItem(DEVICE_KEY, fragment.get('token'));
    history.replaceState(null, '', location.pathname + location.search);
  }
  const device = localStorage.getItem(DEVICE_KEY);
  if (device) sessionStorage.setItem('hy_token', device);

  const ticket = (t) => String(t).padStart(4, '0');
  const sayLine = (e) => '请 ' + ticket(e.t) + ' 号 到 ' + room.call_name + ' 检查';

  function mark(e) {
    return e.mk ? el('span', { className: 'cs-mark ' + e.mk }, MARKS[e.mk] || e.mk) : '';
  }

  function speak(text) {
    if (!('speechSynthesis' in window)) return;
    try {
      const u = new SpeechSynthesisUtterance(text);
      u.lang = 'zh-CN';
      window.speechSynthesis.speak(u);
    } catch (e) { /* a screen without voices still shows the line */ }
  }

  function render(state) {
    const calling = state.calling || [], waiting = state.waiting || [];
    const now = calling[0];
    $('#now-ticket').textContent = now ? ticket(now.t) : '—';
    $('#now-name').textContent = now ? (now.nm || '') : '';
    $('#now-say').textContent = now ? sayLine(now) : '请耐心等候叫号';
    $('#also').replaceChildren(...calling.slice(1, 4).map((e) => el('span', {}, '已呼叫 ' + ticket(e.t))));
    const key = now ? now.id + ':' + now.calls : '';
    if (now && key !== lastCall) {
      lastCall = key;
      $('.cs-now').classList.remove('flash');
      void $('.cs-now').offsetWidth; // restart the animation
      $('.cs-now').classList.add('flash');
      speak(sayLine(now));
    }
    $('#next').replaceChildren(...waiting.slice(0, NEXT).map((e) =>
      el('li', { className: e.mk ? 'marked ' + e.mk : '' },
        el('span', { className: 'cs-t' }, ticket(e.t)),
        el('span', { className: 'cs-n' }, e.nm || ''),
        mark(e))));
    $('#count').textContent = '共 ' + waiting.length + ' 人候检' + ((state.deferred || []).length ? '，暂缓 ' + state.deferred.length + ' 人' : '');
    const inExam = state.in_exam || [];
    $('#in-exam').textContent = inExam.length ? '检查中：' + inExam.map((e) => ticket(e.t)).join('、') : '';
  }

  function onState(s) {
    const box = $('#state');
    box.classList.toggle('live', s === 'live');
    box.classList.toggle('down', s !== 'live');
    box.textContent = s === 'live' ? '● 实时' : s === 'reconnecting' ? '● 重连中…' : s;
    $('#offline').hidden = s === 'live';
    document.body.classList.toggle('offline', s !== 'live');
  }

  function tick() {
    $('#clock').textContent = new Date().toLocaleTimeString('zh-CN', { hourCycle: 'h23', hour: '2-digit', minute: '2-digit' });
  }

  const roomId = param('room');
  if (!roomId) { onState('地址缺少 ?room= 检查室'); return; }
  tick();
  setInterval(tick, 10000);
  const day = param('day');
  // A TV has a device token; staff may also open the screen with their own login.
  if (device) start(); else HY.requireLogin(() => start());

  function start() { live('/ws/queue?room=' + encodeURIComponent(roomId) + (day ? '&day=' + day : ''), (frame) => {
    if (frame.type === 'snapshot') {
      room = frame.room;
      $('#room').textContent = room.call_name + ' 候检叫号' + (room.location ? ' · ' + room.location.split(' ')[0] : '');
    }
    render(frame.state || {});
  }, onState, { onUnauthorized: () => onState('设备令牌无效或已吊销') }); }
})();

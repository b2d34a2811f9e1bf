// Modality staff at a room: check patients in by the slip's barcode, call the next one, recall,
// pass (过号), defer (暂缓), start and finish exams, and put an emergency or green-channel patient
// ahead. Every change goes through the room's queue script and reaches the call screens at once;
// this page follows the same live queue and reloads its detailed view on every change.
'use strict';
(() => {
  const { $, api, el, live, setState, requireLogin } = HY;
  let roomId = null, feed = null;

  async function send(path, body) {
    const r = await fetch(path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer ' + (sessionStorage.getItem('hy_token') || '') },
      body: JSON.stringify(body || {}),
    });
    const out = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(out.title || ('操作失败（' + r.status + '）'));
    return out;
  }

  function say(text, good) {
    const m = $('#msg');
    m.textContent = text;
    m.className = 'msg ' + (good ? 'ok' : 'bad');
  }

  function act(entry, action, body) {
    return async () => {
      try {
        const base = '/api/v1/queues/' + encodeURIComponent(roomId) + '/entries/' + entry.appointment_id + '/';
        await send(base + action, body);
        await refresh();
      } catch (e) { say(e.message, false); }
    };
  }

  function button(label, handler, cls) {
    return el('button', { type: 'button', className: 'secondary ' + (cls || ''), onclick: handler }, label);
  }

  function row(e, ...buttons) {
    return el('tr', {}, el('td', {}, e.ticket), el('td', {}, e.name || '（仅显示号码）'), el('td', {}, e.exam || ''),
      el('td', {}, e.mark_name || ''), el('td', {}, e.expected_at || ''), el('td', { className: 'actions' }, ...buttons));
  }

  function priority(e, level) {
    return async () => {
      const reason = prompt(level === 'emergency' ? '急诊插队原因' : '绿色通道原因');
      if (!reason) return;
      await act(e, 'priority', { priority: level, reason })();
    };
  }

  async function refresh() {
    const q = await api('/api/v1/queues/' + encodeURIComponent(roomId));
    $('#calling').replaceChildren(...q.calling.map((e) => row(e,
      button('重呼', act(e, 'recall')), button('开始检查', act(e, 'start'), 'go'),
      button('过号', act(e, 'pass', { places: 3 })), button('暂缓', act(e, 'defer')))));
    $('#in_exam').replaceChildren(...q.in_exam.map((e) => row(e,
      button('完成检查', act(e, 'finish'), 'go'),
      button('中止', async () => { const reason = prompt('中止原因'); if (reason) await act(e, 'abort', { reason })(); }))));
    $('#waiting').replaceChildren(...q.waiting.map((e) => row(e,
      button('叫号', async () => {
        try { await send('/api/v1/queues/' + encodeURIComponent(roomId) + '/call', { appointment_id: e.appointment_id }); await refresh(); } catch (x) { say(x.message, false); }
      }),
      button('急诊插队', priority(e, 'emergency')), button('绿色通道', priority(e, 'green')),
      button('暂缓', act(e, 'defer')))));
    $('#deferred').replaceChildren(...q.deferred.map((e) => row(e, button('恢复排队', act(e, 'resume')))));
    $('#count').textContent = '共 ' + q.waiting.length + ' 人';
  }

  function follow() {
    if (feed) feed.close();
    feed = live('/ws/queue?room=' + encodeURIComponent(roomId), () => { refresh().catch((e) => say(e.message, false)); },
      (s) => setState($('#state'), s));
  }

  $('#checkin').onsubmit = async (ev) => {
    ev.preventDefault();
    const code = ev.target.barcode.value.trim();
    try {
      const out = await send('/api/v1/checkin', { barcode: code });
      say(out.message + (out.mark_name ? '（' + out.mark_name + '）' : ''), true);
      ev.target.barcode.value = '';
    } catch (e) { say(e.message, false); }
    ev.target.barcode.focus();
  };
  $('#call').onclick = async () => {
    try {
      const out = await send('/api/v1/queues/' + encodeURIComponent(roomId) + '/call', {});
      say('已呼叫：' + out.entry.say, true);
      await refresh();
    } catch (e) { say(e.message, false); }
  };

  requireLogin(async (me) => {
    $('#who').textContent = me.username;
    const all = await api('/api/v1/resources');
    const mine = all.filter((r) => me.roles.includes('sys_admin') || !me.department_id || r.department_id === me.department_id);
    $('#room').replaceChildren(...mine.map((r) => el('option', { value: r.id }, r.name)));
    const wanted = new URLSearchParams(location.search).get('room');
    if (wanted && mine.some((r) => r.id === wanted)) $('#room').value = wanted;
    roomId = $('#room').value;
    $('#room').onchange = () => { roomId = $('#room').value; follow(); };
    follow();
  });
})();

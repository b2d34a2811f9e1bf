// Slot-pool administration for department admins: lock a window (its bookings are moved to the
// nearest allowed slot and the patients told), release locks, edit templates' capacity and quotas.
'use strict';
(() => {
  const { $, api, loadClock, today, hm, el } = HY;
  const WEEK = ['', '一', '二', '三', '四', '五', '六', '日'];
  const CHANNELS = { clinic: '诊间', desk: '预约中心', self: '自助', ward: '病区', emergency: '急诊', checkup: '体检' };
  let tz = 'Asia/Shanghai';
  const headers = () => ({ 'content-type': 'application/json', authorization: 'Bearer ' + (sessionStorage.getItem('hy_token') || '') });
  async function send(method, path, body) {
    const r = await fetch(path, { method, headers: headers(), body: JSON.stringify(body) });
    return { ok: r.ok, body: await r.json().catch(() => ({})) };
  }
  const rid = () => $('#resource').value;
  // A local wall-clock time in the hospital's zone, as an ISO string with the offset (+08:00).
  function at(day, hhmm) {
    const guess = new Date(day + 'T' + hhmm + ':00Z');
    const shown = new Date(guess.toLocaleString('en-US', { timeZone: tz }));
    const offset = Math.round((shown - new Date(guess.toLocaleString('en-US', { timeZone: 'UTC' }))) / 60000);
    const sign = offset >= 0 ? '+' : '-';
    const pad = (n) => String(Math.abs(n)).padStart(2, '0');
    return `${day}T${hhmm}:00${sign}${pad(Math.trunc(offset / 60))}:${pad(offset % 60)}`;
  }

  async function loadTemplates() {
    const rows = await api('/api/v1/admin/templates?resource_id=' + encodeURIComponent(rid()));
    $('#templates tbody').replaceChildren(...rows.map((t) => {
      const cap = el('input', { type: 'number', min: 0, max: 100, value: t.capacity, className: 'num' });
      const quotas = Object.keys(CHANNELS).map((ch) => el('label', { className: 'q' }, CHANNELS[ch],
        el('input', { type: 'number', min: 0, max: 100, value: t.quotas[ch] || 0, className: 'num', name: ch })));
      const save = el('button', { className: 'secondary' }, '保存');
      save.onclick = async () => {
        const q = {};
        for (const l of quotas) { const i = l.querySelector('input'); if (Number(i.value) > 0) q[i.name] = Number(i.value); }
        const r = await send('PUT', '/api/v1/admin/templates/' + t.id, { capacity: Number(cap.value), quotas: q, active: t.active });
        $('#msg').textContent = r.ok ? '' : (r.body.title || '保存失败');
        save.textContent = r.ok ? '已保存（未约号源已更新 ' + r.body.slots_updated + ' 个）' : '保存';
      };
      return el('tr', {}, el('td', {}, '周' + WEEK[t.weekday]), el('td', {}, t.start_time.slice(0, 5) + '–' + t.end_time.slice(0, 5) + ' 每' + t.window_min + '分钟'),
        el('td', {}, cap), el('td', {}, ...quotas), el('td', {}, save));
    }));
  }

  async function loadLocks() {
    const rows = await api('/api/v1/admin/locks?resource_id=' + encodeURIComponent(rid()));
    $('#locks').replaceChildren(...rows.map((l) => {
      const release = el('button', { className: 'secondary' }, '解除');
      release.onclick = async () => { const r = await send('POST', `/api/v1/admin/locks/${l.id}/release`, {}); if (r.ok) loadLocks(); };
      return el('li', { className: 'appt' }, el('span', {}, l.starts_at.slice(0, 10) + ' ' + hm(new Date(l.starts_at).getTime() / 1000) + '–' +
        hm(new Date(l.ends_at).getTime() / 1000) + ' ' + l.reason), release);
    }));
  }

  $('#lock').onsubmit = async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    const body = { resource_id: rid(), starts_at: at(f.day.value, f.from.value), ends_at: at(f.day.value, f.to.value), kind: f.kind.value, reason: f.reason.value };
    const r = await send('POST', '/api/v1/admin/locks', body);
    if (!r.ok) { $('#msg').textContent = r.body.title || '锁定失败'; return; }
    $('#msg').textContent = '';
    const moved = r.body.moves.filter((m) => m.moved).length;
    $('#lock-result').replaceChildren(el('p', { className: 'ok', id: 'lock-summary' }, `已锁定 ${r.body.slots} 个号源；其中预约 ${r.body.live_bookings} 个，已改约 ${moved} 个并通知患者。`),
      ...r.body.moves.filter((m) => !m.moved).map((m) => el('p', { className: 'bad' }, `预约 ${m.appointment_id}：${m.reason}`)));
    loadLocks();
  };

  HY.requireLogin(async (me) => {
    const clock = await loadClock();
    tz = clock.timezone;
    $('#who').textContent = me.username;
    const all = await api('/api/v1/resources');
    const mine = all.filter((r) => me.roles.includes('sys_admin') || r.department_id === me.department_id);
    $('#resource').replaceChildren(...mine.map((r) => new Option(r.name, r.id)));
    const want = new URLSearchParams(location.search).get('resource');
    if (want) $('#resource').value = want;
    $('#lock').day.value = today();
    $('#resource').onchange = () => { loadTemplates(); loadLocks(); };
    loadTemplates();
    loadLocks();
  });
})();

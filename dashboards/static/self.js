// Self-service on a kiosk or a phone (微信 H5): identity check, pending orders, one-tap plan,
// confirmation with the preparation, my appointments with reschedule (改约: another day and time
// offered for the exam, confirmed, then the new time with its preparation) and cancel. Changes
// stop some hours before the exam (HY_SELF_CHANGE_CUTOFF_H): past an appointment's
// `self_change_until` the page offers neither and says whom to ask; a refusal that comes anyway
// (the window closed while the page was open) is shown as it comes. Large touch targets.
'use strict';
(() => {
  const { $, hm, loadClock, el } = HY;
  let me = null, plan = null;
  const headers = () => ({ 'content-type': 'application/json', authorization: 'Bearer ' + (sessionStorage.getItem('hy_token') || '') });
  async function call(method, path, body) {
    const r = await fetch(path, { method, headers: headers(), body: body ? JSON.stringify(body) : undefined });
    return { ok: r.ok, status: r.status, body: await r.json().catch(() => ({})) };
  }
  const when = (iso) => iso.slice(5, 10).replace('-', '月') + '日 ' + hm(new Date(iso).getTime() / 1000);
  const startHm = (iso) => hm(new Date(iso).getTime() / 1000);
  const WEEKDAYS = '日一二三四五六';
  const dayLabel = (day) => {
    const d = new Date(day + 'T00:00:00Z');
    return (d.getUTCMonth() + 1) + '月' + d.getUTCDate() + '日 周' + WEEKDAYS[d.getUTCDay()];
  };
  const addDays = (day, n) => new Date(new Date(day + 'T00:00:00Z').getTime() + n * 86400000).toISOString().slice(0, 10);

  $('#id-form').onsubmit = async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    const r = await call('POST', '/api/v1/self/identify', { id_number: f.id_number.value.trim(), name: f.name.value.trim(), terminal: 'kiosk' });
    if (!r.ok) { $('#id-msg').textContent = r.body.title || '验证失败'; return; }
    sessionStorage.setItem('hy_token', r.body.token);
    me = r.body;
    f.reset();
    $('#who').textContent = me.name;
    $('#identify').hidden = true;
    // Suspended for no-shows: told at once, and where to go; the booking buttons stay away.
    $('#suspended').hidden = !me.suspended_message;
    $('#suspended-msg').textContent = me.suspended_message || '';
    await loadClock();
    refresh();
  };

  async function refresh() {
    const [orders, appts] = await Promise.all([
      call('GET', `/api/v1/patients/${me.patient_id}/orders`), call('GET', `/api/v1/patients/${me.patient_id}/appointments`)]);
    const pending = (orders.body.orders || orders.body || []).filter((o) => o.status === 'ordered' || o.status === 'no_show');
    $('#order-list').replaceChildren(...pending.map((o) => el('li', {}, o.exam_name)));
    $('#orders').hidden = !pending.length || !!me.suspended_message;
    const live = (appts.body.appointments || appts.body || []).filter((a) => a.status === 'booked');
    $('#mine-list').replaceChildren(...live.map((a) => {
      const cancel = el('button', { className: 'secondary cancel', type: 'button' }, '取消');
      cancel.onclick = async () => {
        const r = await call('POST', `/api/v1/appointments/${a.id}/cancel`, { channel: 'self', reason: '患者自助取消' });
        if (!r.ok) { cancel.textContent = r.body.title || '取消失败'; return; }
        refresh();
      };
      const move = el('button', { className: 'secondary option move', type: 'button' }, '改约');
      const picker = el('div', { className: 'picker', hidden: true });
      move.onclick = () => {
        picker.hidden = !picker.hidden;
        if (!picker.hidden) reschedulePicker(a, picker);
      };
      // Inside the hospital's change window the API would refuse both: say so instead of offering them.
      const late = a.self_change_until && new Date(a.self_change_until) <= new Date();
      const actions = late ? [el('span', { className: 'hint window' }, '临近检查时间，如需取消或改约请联系预约中心')] : [move, cancel];
      if (a.day === HY.today() && (a.order_status === 'booked' || a.order_status === 'paid')) {
        // On the day: check in here (the kiosk), instead of at the department's desk.
        const checkIn = el('button', { className: 'primary checkin', type: 'button' }, '签到');
        checkIn.onclick = async () => {
          const r = await call('POST', '/api/v1/checkin', { appointment_id: a.id });
          $('#checked-in').hidden = !r.ok;
          if (!r.ok) { checkIn.textContent = r.body.title || '签到失败'; return; }
          $('#checked-in-msg').textContent = r.body.message + (r.body.expected_at ? '，预计 ' + r.body.expected_at + ' 检查' : '');
          refresh();
        };
        actions.unshift(checkIn);
      } else if (a.order_status === 'checked_in') {
        actions.splice(0, actions.length, el('span', { className: 'ok' }, '已签到'));
      }
      return el('li', { className: 'appt', id: 'appt-' + a.id },
        el('span', { className: 'what' }, when(a.starts_at) + ' ' + a.exam_name + ' · ' + a.resource_name),
        el('span', { className: 'actions' }, ...actions), picker);
    }));
    $('#mine').hidden = !live.length;
    return live;
  }

  // 改约: the days of the horizon with places for this exam on the self-service channel, then the
  // times of the chosen day (one per start time: the room with the most places left), then a
  // confirmation. The rules and the change window are the API's: its refusal is shown as it is.
  async function reschedulePicker(a, picker) {
    const msg = el('p', { className: 'bad move-msg' });
    const days = el('div', { className: 'days' });
    const times = el('div', { className: 'times' });
    const confirm = el('div', { className: 'confirm-move', hidden: true });
    picker.replaceChildren(el('p', { className: 'hint' }, '请选择新的检查日期和时间：'), days, times, confirm, msg);
    const today = HY.today();
    const r = await call('GET', `/api/v1/availability?exam=${encodeURIComponent(a.exam_code)}&date_from=${today}&date_to=${addDays(today, 13)}&channel=self&only_open=true`);
    if (!r.ok) { msg.textContent = r.body.title || '查询号源失败'; return; }
    const byDay = new Map();
    for (const x of r.body.slots) {
      if (x.available <= 0 || x.slot_id === a.slot_id) continue;
      const t = startHm(x.starts_at);
      if (!byDay.has(x.day)) byDay.set(x.day, new Map());
      const best = byDay.get(x.day);
      if (!best.has(t) || best.get(t).available < x.available) best.set(t, x);
    }
    const order = [...byDay.keys()].sort();
    if (!order.length) { msg.textContent = '近期没有可改约的时段，请联系预约中心'; return; }

    function pickTime(x, button) {
      for (const b of times.querySelectorAll('.chosen')) b.classList.remove('chosen');
      button.classList.add('chosen');
      msg.textContent = '';
      const yes = el('button', { className: 'primary big-button confirm', type: 'button' }, '确认改约');
      const back = el('button', { className: 'secondary option back', type: 'button' }, '重新选择');
      confirm.replaceChildren(
        el('p', {}, '原时间：' + when(a.starts_at) + ' ' + a.resource_name),
        el('p', { className: 'new-time' }, '新时间：' + when(x.starts_at) + ' ' + x.resource_name + (x.location ? '（' + x.location + '）' : '')),
        yes, back);
      confirm.hidden = false;
      back.onclick = () => { confirm.hidden = true; button.classList.remove('chosen'); };
      yes.onclick = async () => {
        yes.disabled = true;
        const res = await call('POST', `/api/v1/appointments/${a.id}/reschedule`, { slot_id: x.slot_id, channel: 'self', reason: '患者自助改约' });
        yes.disabled = false;
        confirm.hidden = true;
        if (!res.ok) {
          const why = (res.body.violations || []).map((v) => v.message).join('；');
          if (res.status === 409) {  // the rules or a race: this time cannot be had, the others may
            msg.textContent = '该时段不能改约：' + (why || res.body.title || '号源已被占用');
            button.disabled = true;
            button.classList.remove('chosen');
            return;
          }
          msg.textContent = res.body.title || '改约失败';  // e.g. too close to the exam: no other time will do
          days.hidden = true;
          times.hidden = true;
          return;
        }
        moved(a, res.body.appointment, x);
      };
      confirm.scrollIntoView({ block: 'nearest' });
    }

    function showDay(day, chip) {
      for (const c of days.querySelectorAll('.chosen')) c.classList.remove('chosen');
      chip.classList.add('chosen');
      confirm.hidden = true;
      const slots = [...byDay.get(day).entries()].sort(([p], [q]) => p.localeCompare(q));
      times.replaceChildren(...slots.map(([t, x]) => {
        const b = el('button', { className: 'secondary option time', type: 'button' }, t);
        b.dataset.slot = x.slot_id;
        b.dataset.start = t;
        b.onclick = () => pickTime(x, b);
        return b;
      }));
    }
    days.replaceChildren(...order.map((day) => {
      const chip = el('button', { className: 'secondary option day', type: 'button' }, dayLabel(day));
      chip.dataset.day = day;
      chip.onclick = () => showDay(day, chip);
      return chip;
    }));
    showDay(order[0], days.firstChild);
  }

  // After a reschedule: the new time, where, and the preparation for the exam.
  async function moved(old, appt, slot) {
    $('#done').hidden = true;
    const live = await refresh();
    const now = (live || []).find((x) => x.id === appt.appointment_id) || {};
    const prep = (now.prep_text || '').split(/\n+/).map((t) => t.trim()).filter(Boolean);
    $('#moved-body').replaceChildren(
      el('p', {}, old.exam_name),
      el('p', { className: 'new-time big' }, when(appt.starts_at) + ' ' + slot.resource_name),
      el('p', {}, '地点：' + (now.location || slot.location || '')),
      el('p', { className: 'small' }, '原预约时间 ' + when(old.starts_at) + ' 已改约，原号源已释放。'),
      el('h3', {}, '检查前准备'),
      el('ul', { className: 'prep' }, ...(prep.length ? prep : ['无特殊准备']).map((p) => el('li', {}, p))),
      el('a', { className: 'primary', href: '/slips?ids=' + appt.appointment_id, target: '_blank' }, '查看/打印预约单'));
    $('#moved').hidden = false;
    $('#moved').scrollIntoView({ block: 'start' });
  }

  $('#plan').onclick = async () => {
    $('#plan').disabled = true;
    const r = await call('POST', '/api/v1/plans/propose', { patient_id: me.patient_id, channel: 'self', max_plans: 1 });
    $('#plan').disabled = false;
    if (!r.ok || !r.body.plans.length) { $('#plan-body').textContent = r.body.title || '暂无可用方案，请到人工窗口办理'; $('#proposal').hidden = false; return; }
    plan = r.body.plans[0];
    $('#plan-body').replaceChildren(
      ...plan.explanation.map((t) => el('p', {}, t)),
      el('ul', {}, ...plan.items.map((i) => el('li', {}, when(i.starts_at) + ' ' + i.exam_name + ' · ' + i.resource_name + (i.location ? '（' + i.location + '）' : '')))));
    $('#confirm').hidden = !plan.items.length;
    $('#proposal').hidden = false;
  };

  $('#confirm').onclick = async () => {
    $('#confirm').disabled = true;
    const items = plan.items.map((i) => ({ order_id: i.order_id, slot_id: i.slot_id }));
    const r = await call('POST', '/api/v1/plans/book', { patient_id: me.patient_id, channel: 'self', items });
    $('#confirm').disabled = false;
    if (!r.ok) { $('#plan-body').prepend(el('p', { className: 'bad' }, (r.body.title || '预约失败') + '，请重新安排')); return; }
    $('#proposal').hidden = true;
    const ids = r.body.appointments.map((a) => a.appointment_id);
    $('#done-body').replaceChildren(
      el('p', {}, '已为您预约 ' + ids.length + ' 项检查。'),
      el('h3', {}, '检查前准备'), el('ul', {}, ...plan.preparation.map((p) => el('li', {}, p))),
      el('a', { className: 'primary', href: '/slips?ids=' + ids.join(','), target: '_blank' }, '查看/打印预约单'));
    $('#done').hidden = false;
    refresh();
  };
})();

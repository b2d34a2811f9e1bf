// The booking centre desk (预约中心): find the patient by card, barcode or ID number, see every
// pending order across departments, take one of the planner's plans, book it, print the slips;
// cancel from the list. Rule warnings that a clerk may override are offered with a reason box.
'use strict';
(() => {
  const { $, api, hm, loadClock, el } = HY;
  let patient = null;
  const headers = () => ({ 'content-type': 'application/json', authorization: 'Bearer ' + (sessionStorage.getItem('hy_token') || '') });
  async function post(path, body) {
    const r = await fetch(path, { method: 'POST', headers: headers(), body: JSON.stringify(body) });
    return { ok: r.ok, status: r.status, body: await r.json().catch(() => ({})) };
  }
  const when = (iso) => iso.slice(5, 10).replace('-', '月') + '日 ' + hm(new Date(iso).getTime() / 1000);
  const startHm = (iso) => hm(new Date(iso).getTime() / 1000);
  const nextDay = (day) => new Date(new Date(day + 'T00:00:00Z').getTime() + 86400000).toISOString().slice(0, 10);

  // What the page says after a booking went through (show() redraws everything else).
  function notify(text, ids, overridden) {
    const box = $('#notice');
    box.replaceChildren(el('p', { className: 'ok booked' }, text + (overridden ? '（已记录越过规则的理由）' : '')));
    if (ids && ids.length) box.append(el('a', { className: 'primary', href: '/slips?ids=' + ids.join(','), target: '_blank' }, '打印预约单'));
    box.hidden = false;
  }

  // A booking request (a plan or one order). A 409 rule_violation is shown inside `box` with each
  // broken rule; when every one is a warning this account may override, a required reason and
  // 「仍然预约（需填写理由）」 send the same request again with the overrides. Hard blocks show
  // their reason only. done(reply, overridden) runs once the booking went through.
  async function submitBooking(path, body, box, done) {
    const r = await post(path, body);
    for (const old of box.querySelectorAll(':scope > .violations, :scope > .box-msg')) old.remove();
    if (r.ok) { done(r.body, (body.overrides || []).length > 0); return; }
    if (r.body.code === 'rule_violation' && (r.body.violations || []).length) {
      box.append(refusal(r.body.violations, (overrides) => submitBooking(path, { ...body, overrides }, box, done)));
      return;
    }
    box.append(el('p', { className: 'bad box-msg' }, r.body.title || '预约失败'));
  }

  function refusal(violations, retry) {
    const canOverride = violations.every((v) => v.overridable);
    const items = violations.map((v) => {
      const warn = v.severity === 'warn';
      const note = warn && !v.overridable ? '（当前账号无权越过，请联系开单医生）' : '';
      return el('li', { className: warn ? 'sev-warn' : 'sev-block' },
        el('span', { className: 'sev' }, warn ? '警告' : '禁止'), ' ' + v.message + note);
    });
    const panel = el('div', { className: 'violations ' + (canOverride ? 'can-override' : 'blocked') },
      el('p', { className: 'head' }, canOverride
        ? '该预约不符合以下检查规则（警告），确认患者情况后可以填写理由仍然预约：'
        : '该预约不符合以下检查规则，不能预约，请另选时段：'),
      el('ul', {}, ...items));
    if (!canOverride) return panel;
    const reason = el('textarea', { name: 'override_reason', rows: 2, maxLength: 500, required: true, placeholder: '例如：患者已知晓并同意，下午空腹检查' });
    const msg = el('p', { className: 'bad override-msg' });
    const go = el('button', { className: 'primary override', type: 'button' }, '仍然预约（需填写理由）');
    reason.oninput = () => { msg.textContent = ''; };
    go.onclick = async () => {
      const text = reason.value.trim();
      if (text.length < 2) { msg.textContent = '请填写越过规则的理由（至少2个字）'; reason.focus(); return; }
      go.disabled = true;
      const ids = [...new Set(violations.map((v) => v.rule_id))];
      try { await retry(ids.map((rule_id) => ({ rule_id, reason: text }))); } finally { go.disabled = false; }
    };
    panel.append(el('label', { className: 'override-reason' }, '越过理由（必填）', reason), msg, go);
    return panel;
  }

  // One pending order booked on its own: a day, then one button per start time (the room with
  // the most places left); the clerk may pick any time, the rules are checked on booking.
  function orderItem(o) {
    const li = el('li', { className: 'order', id: 'order-' + o.id });
    const open = el('button', { className: 'secondary option pick-slot', type: 'button' }, '选择时段');
    const picker = el('div', { className: 'picker', hidden: true });
    const day = el('input', { type: 'date', name: 'day' });
    const times = el('div', { className: 'options' });
    let loading = 0;  // a later day chosen while an earlier one loads wins
    async function load() {
      for (const old of li.querySelectorAll(':scope > .violations, :scope > .box-msg')) old.remove();
      if (!day.value) return;
      const mine = ++loading;
      times.replaceChildren(el('span', { className: 'loading' }, '正在查询号源…'));
      let found;
      try {
        found = await api(`/api/v1/availability?exam=${encodeURIComponent(o.exam_code)}&date_from=${day.value}&channel=desk&only_open=true`);
      } catch (e) { if (mine === loading) times.replaceChildren(el('span', { className: 'bad' }, e.message)); return; }
      if (mine !== loading) return;
      const best = new Map();
      for (const x of found.slots) {
        if (x.available <= 0) continue;
        const t = startHm(x.starts_at);
        if (!best.has(t) || best.get(t).available < x.available) best.set(t, x);
      }
      const slots = [...best.entries()].sort(([a], [b]) => a.localeCompare(b));
      times.replaceChildren(...(slots.length ? slots.map(([t, x]) => {
        const pick = el('button', { className: 'secondary option slot-option', type: 'button' }, t + ' ' + x.resource_name + '（余' + x.available + '）');
        pick.dataset.slot = x.slot_id;
        pick.dataset.start = t;
        pick.dataset.day = x.day;
        pick.onclick = () => {
          for (const b of times.querySelectorAll('.chosen')) b.classList.remove('chosen');
          pick.classList.add('chosen');
          const body = { patient_id: patient.id, channel: 'desk', items: [{ order_id: o.id, slot_id: x.slot_id }] };
          return submitBooking('/api/v1/appointments', body, li, async (reply, overridden) => {
            const ids = reply.appointments.map((a) => a.appointment_id);
            await show(patient);
            notify('已预约：' + o.exam_name + ' ' + when(x.starts_at) + ' ' + x.resource_name, ids, overridden);
          });
        };
        return pick;
      }) : [el('span', {}, '当天无可用号源，请换一天')]));
    }
    day.onchange = load;
    open.onclick = async () => {
      picker.hidden = !picker.hidden;
      if (picker.hidden) return;
      if (!HY.today()) await loadClock();
      day.min = HY.today();
      if (!day.value) day.value = nextDay(HY.today());  // tomorrow in the hospital's calendar, by default
      load();
    };
    picker.append(el('label', {}, '检查日期 ', day), times);
    li.append(el('span', {}, o.exam_name + '（' + o.ordering_department_id + '）'), open, picker);
    return li;
  }

  async function show(p) {
    patient = p;
    $('#msg').textContent = '';
    $('#notice').hidden = true;
    const gender = { M: '（男）', F: '（女）' }[p.gender] || '';
    $('#p-name').textContent = p.name_masked + gender;
    $('#p-ids').textContent = '就诊卡 ' + p.mrn + ' · 身份证 ' + (p.id_number_masked || '未登记');
    const [orders, appts] = await Promise.all([api(`/api/v1/patients/${p.id}/orders`), api(`/api/v1/patients/${p.id}/appointments`)]);
    const pending = orders.orders.filter((o) => o.status === 'ordered' || o.status === 'no_show');
    $('#orders').replaceChildren(...(pending.length ? pending.map(orderItem) : [el('li', {}, '无')]));
    $('#propose').hidden = !pending.length;
    const live = appts.appointments.filter((a) => a.status === 'booked');
    $('#appt-list').replaceChildren(...live.map((a) => {
      const cancel = el('button', { className: 'secondary' }, '取消');
      cancel.onclick = async () => {
        const reason = prompt('取消原因', '患者要求');
        if (!reason) return;
        const r = await post(`/api/v1/appointments/${a.id}/cancel`, { channel: 'desk', reason });
        if (!r.ok) { $('#msg').textContent = r.body.title || '取消失败'; return; }
        show(patient);
      };
      const move = el('button', { className: 'secondary move' }, '改约');
      const options = el('div', { className: 'options' });
      move.onclick = async () => {
        const from = a.starts_at.slice(0, 10);
        const to = new Date(new Date(from).getTime() + 6 * 86400000).toISOString().slice(0, 10);
        const found = await api(`/api/v1/availability?exam=${a.exam_code}&date_from=${from}&date_to=${to}&channel=desk&only_open=true`);
        const slots = found.slots.filter((x) => x.slot_id !== a.slot_id && x.available > 0).slice(0, 12);
        options.replaceChildren(...(slots.length ? slots.map((x) => {
          const pick = el('button', { className: 'secondary option' }, when(x.starts_at) + ' ' + x.resource_name);
          pick.onclick = async () => {
            const r = await post(`/api/v1/appointments/${a.id}/reschedule`, { slot_id: x.slot_id, channel: 'desk', reason: '患者要求改约' });
            if (!r.ok) {  // a rule or a race: say why, and leave the other options
              const why = (r.body.violations || []).map((v) => v.message).join('；') || r.body.title || '改约失败';
              $('#msg').textContent = '该时段不能改约：' + why;
              pick.disabled = true;
              pick.title = why;
              return;
            }
            show(patient);
          };
          return pick;
        }) : [el('span', {}, '7天内无其他可用号源')]));
      };
      return el('li', { className: 'appt' }, el('span', {}, when(a.starts_at) + ' ' + a.exam_name + ' · ' + a.resource_name), el('span', {}, move, cancel), options);
    }));
    $('#appts').hidden = !live.length;
    $('#patient').hidden = false;
    $('#plans').replaceChildren();
  }

  $('#find').onsubmit = async (ev) => {
    ev.preventDefault();
    const card = ev.target.card.value.trim();
    if (!card) return;
    // The card or ID number goes in the body: a URL ends up in proxies' and servers' logs.
    const r = await post('/api/v1/patients/lookup', { card });
    if (r.ok) { await show(r.body); ev.target.card.value = ''; return; }
    $('#msg').textContent = r.body.title || '查询失败';
    $('#patient').hidden = true;
  };

  $('#propose').onclick = async () => {
    const r = await post('/api/v1/plans/propose', { patient_id: patient.id, channel: 'desk', max_plans: 3 });
    if (!r.ok) { $('#msg').textContent = r.body.title || '安排失败'; return; }
    $('#plans').replaceChildren(...r.body.plans.map((plan, n) => {
      const book = el('button', { className: 'primary book' }, '预约此方案');
      const box = el('section', { className: 'panel plan-option', id: 'plan-' + n },
        el('h3', {}, '方案 ' + (n + 1) + '：来院 ' + plan.visit_days + ' 次，在院约 ' + plan.minutes_in_hospital + ' 分钟'),
        ...plan.explanation.map((t) => el('p', {}, t)),
        el('ul', {}, ...plan.items.map((i) => el('li', {}, when(i.starts_at) + ' ' + i.exam_name + ' · ' + i.resource_name))),
        book);
      book.onclick = async () => {
        const items = plan.items.map((i) => ({ order_id: i.order_id, slot_id: i.slot_id }));
        book.disabled = true;
        await submitBooking('/api/v1/plans/book', { patient_id: patient.id, channel: 'desk', items }, box, (reply, overridden) => {
          const ids = reply.appointments.map((a) => a.appointment_id);
          for (const old of box.querySelectorAll('.violations')) old.remove();
          box.append(el('p', { className: 'ok booked' }, '已预约 ' + ids.length + ' 项。' + (overridden ? '（已记录越过规则的理由）' : '')),
            el('a', { className: 'primary', href: '/slips?ids=' + ids.join(','), target: '_blank' }, '打印预约单'));
          book.hidden = true;
          show(patient).then(() => $('#plans').append(box));
        });
        book.disabled = false;
      };
      return box;
    }));
  };

  HY.requireLogin(async (me) => { await loadClock(); $('#who').textContent = me.username; });
})();

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

  async function show(p) {
    patient = p;
    $('#msg').textContent = '';
    const gender = { M: '（男）', F: '（女）' }[p.gender] || '';
    $('#p-name').textContent = p.name_masked + gender;
    $('#p-ids').textContent = '就诊卡 ' + p.mrn + ' · 身份证 ' + (p.id_number_masked || '未登记');
    const [orders, appts] = await Promise.all([api(`/api/v1/patients/${p.id}/orders`), api(`/api/v1/patients/${p.id}/appointments`)]);
    const pending = orders.orders.filter((o) => o.status === 'ordered');
    $('#orders').replaceChildren(...(pending.length ? pending.map((o) => el('li', {}, o.exam_name + '（' + o.ordering_department_id + '）')) : [el('li', {}, '无')]));
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
    try { await show(await api('/api/v1/patients/lookup?card=' + encodeURIComponent(card))); ev.target.card.value = ''; }
    catch (e) { $('#msg').textContent = e.message; $('#patient').hidden = true; }
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
        const res = await post('/api/v1/plans/book', { patient_id: patient.id, channel: 'desk', items });
        if (!res.ok) { $('#msg').textContent = res.body.title || '预约失败'; return; }
        const ids = res.body.appointments.map((a) => a.appointment_id);
        box.append(el('p', { className: 'ok booked' }, '已预约 ' + ids.length + ' 项。'),
          el('a', { className: 'primary', href: '/slips?ids=' + ids.join(','), target: '_blank' }, '打印预约单'));
        book.disabled = true;
        show(patient).then(() => $('#plans').append(box));
      };
      return box;
    }));
  };

  HY.requireLogin(async (me) => { await loadClock(); $('#who').textContent = me.username; });
})();

// The clinic workstation page (embedded in the HIS doctor workstation): the orders just written,
// today's plan booked in one click, or a clear "send the patient to the booking centre" panel.
'use strict';
(() => {
  const { $, param, hm, loadClock, el } = HY;
  const patientId = Number(param('patient_id'));
  const orderIds = (param('orders') || '').split(',').filter(Boolean).map(Number);

  async function post(path, body) {
    const r = await fetch(path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer ' + (sessionStorage.getItem('hy_token') || '') },
      body: JSON.stringify(body),
    });
    return { ok: r.ok, status: r.status, body: await r.json().catch(() => ({})) };
  }

  const at = (iso) => hm(new Date(iso).getTime() / 1000);
  const day = (iso) => iso.slice(5, 10).replace('-', '月') + '日';

  function planTable(plan) {
    const rows = plan.items.map((i) => el('tr', {}, el('td', {}, day(i.starts_at) + ' ' + at(i.starts_at) + '–' + at(i.ends_at)),
      el('td', {}, i.exam_name), el('td', {}, i.resource_name), el('td', {}, i.location || '')));
    return el('table', { className: 'plan' }, el('thead', {}, el('tr', {}, el('th', {}, '时间'), el('th', {}, '检查'),
      el('th', {}, '设备/诊室'), el('th', {}, '位置'))), el('tbody', {}, ...rows));
  }

  function prep(plan) {
    return plan.preparation.length ? el('div', { className: 'prep' }, el('h3', {}, '检查前准备'),
      el('ul', {}, ...plan.preparation.map((p) => el('li', {}, p)))) : '';
  }

  function render(a) {
    const box = $('#answer');
    box.replaceChildren();
    if (a.same_day) {
      const button = el('button', { id: 'book', className: 'primary' }, '一键预约今日检查');
      const msg = el('p', { id: 'book-result' });
      button.onclick = async () => {
        button.disabled = true;
        const items = a.today_plan.items.map((i) => ({ order_id: i.order_id, slot_id: i.slot_id }));
        const r = await post('/api/v1/clinic/book', { patient_id: a.patient_id, items });
        if (r.ok) {
          msg.className = 'ok';
          msg.textContent = '预约成功，共 ' + r.body.appointments.length + ' 项，请患者按时检查。';
        } else {
          msg.className = 'bad';
          msg.textContent = (r.body.title || '预约失败') + '，正在重新查询…';
          setTimeout(load, 1500);
        }
      };
      box.append(el('section', { className: 'panel good', id: 'same-day' }, el('h2', {}, '今日可完成全部检查'),
        planTable(a.today_plan), prep(a.today_plan), button, msg));
      return;
    }
    const panel = el('section', { className: 'panel warn', id: 'go-to-centre' }, el('h2', {}, '请患者到预约中心预约'),
      el('p', { className: 'reason' }, a.reason || ''));
    if (a.today_plan && a.today_plan.items.length) {
      panel.append(el('h3', {}, '今日可先完成'), planTable(a.today_plan));
    }
    a.earliest_options.forEach((p, n) => {
      panel.append(el('h3', {}, '最早可选方案 ' + (n + 1) + '（来院 ' + p.visit_days + ' 次）'), planTable(p));
    });
    box.append(panel);
  }

  async function load() {
    if (!patientId) { $('#answer').textContent = '缺少患者编号（patient_id）'; return; }
    const r = await post('/api/v1/clinic/orders-written', { patient_id: patientId, order_ids: orderIds });
    if (!r.ok) { $('#answer').replaceChildren(el('p', { className: 'bad' }, r.body.title || '查询失败')); return; }
    render(r.body);
  }

  HY.requireLogin(async (me) => {
    await loadClock();
    $('#who').textContent = me.username + ' · 患者 ' + patientId;
    load();
  });
})();

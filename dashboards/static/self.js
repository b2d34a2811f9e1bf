// Self-service on a kiosk or a phone (微信 H5): identity check, pending orders, one-tap plan,
// confirmation with the preparation, my appointments with cancel. Large touch targets.
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
    await loadClock();
    refresh();
  };

  async function refresh() {
    const [orders, appts] = await Promise.all([
      call('GET', `/api/v1/patients/${me.patient_id}/orders`), call('GET', `/api/v1/patients/${me.patient_id}/appointments`)]);
    const pending = (orders.body.orders || orders.body || []).filter((o) => o.status === 'ordered');
    $('#order-list').replaceChildren(...pending.map((o) => el('li', {}, o.exam_name)));
    $('#orders').hidden = !pending.length;
    const live = (appts.body.appointments || appts.body || []).filter((a) => a.status === 'booked');
    $('#mine-list').replaceChildren(...live.map((a) => {
      const cancel = el('button', { className: 'secondary' }, '取消');
      cancel.onclick = async () => {
        const r = await call('POST', `/api/v1/appointments/${a.id}/cancel`, { channel: 'self', reason: '患者自助取消' });
        if (!r.ok) { cancel.textContent = r.body.title || '取消失败'; return; }
        refresh();
      };
      return el('li', { className: 'appt', id: 'appt-' + a.id }, el('span', {}, when(a.starts_at) + ' ' + a.exam_name + ' · ' + a.resource_name), cancel);
    }));
    $('#mine').hidden = !live.length;
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

// The ward nurse station: the ward's inpatients with pending orders; pick many, book them in one
// batch on the ward channel (its reserved quota first), then print all their slips.
'use strict';
(() => {
  const { $, api, el } = HY;
  let patients = [];

  async function list() {
    patients = await api('/api/v1/ward/patients');
    const body = $('#patients tbody');
    if (!patients.length) { body.replaceChildren(el('tr', {}, el('td', { colSpan: 4 }, '本病区暂无待预约检查的患者'))); return; }
    body.replaceChildren(...patients.map((p) => el('tr', {},
      el('td', {}, el('input', { type: 'checkbox', className: 'pick', value: String(p.patient_id) })),
      el('td', {}, p.bed_no || ''), el('td', {}, p.name), el('td', {}, p.orders.map((o) => o.exam_name).join('、')))));
  }

  async function batch() {
    const ids = [...document.querySelectorAll('.pick:checked')].map((c) => Number(c.value));
    if (!ids.length) return;
    $('#batch').disabled = true;
    const r = await fetch('/api/v1/ward/batch', {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer ' + sessionStorage.getItem('hy_token') },
      body: JSON.stringify({ patient_ids: ids }),
    });
    const body = await r.json().catch(() => ({}));
    $('#batch').disabled = false;
    const out = $('#results tbody');
    if (!r.ok) { out.replaceChildren(el('tr', {}, el('td', { colSpan: 2, className: 'bad' }, body.title || '预约失败'))); $('#results').hidden = false; return; }
    const names = new Map(patients.map((p) => [p.patient_id, (p.bed_no ? p.bed_no + ' ' : '') + p.name]));
    out.replaceChildren(...body.results.map((x) => el('tr', { className: x.booked ? 'ok' : 'bad' },
      el('td', {}, names.get(x.patient_id) || String(x.patient_id)),
      el('td', {}, x.booked ? '已预约 ' + x.appointment_ids.length + ' 项' + (x.reason ? '（' + x.reason + '）' : '') : (x.reason || '未能预约')))));
    $('#slips').href = '/slips?ids=' + body.appointment_ids.join(',');
    $('#slips').hidden = !body.appointment_ids.length;
    $('#results').hidden = false;
    list();
  }

  HY.requireLogin(async (me) => {
    $('#who').textContent = me.username + ' · ' + (me.department_id || '');
    $('#all').onchange = () => document.querySelectorAll('.pick').forEach((c) => { c.checked = $('#all').checked; });
    $('#batch').onclick = batch;
    list();
  });
})();

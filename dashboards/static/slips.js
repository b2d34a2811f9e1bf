// Printable slips: one card per appointment with its Code128 barcode (SVG made by the server),
// time, place and preparation; the same as the PDF, for printers that print web pages.
'use strict';
(() => {
  const { $, param, el } = HY;
  const ids = (param('ids') || '').split(',').filter(Boolean).map(Number);
  const auth = () => ({ 'content-type': 'application/json', authorization: 'Bearer ' + (sessionStorage.getItem('hy_token') || '') });
  const when = (s, e) => s.slice(0, 10).replace(/-/, '年').replace(/-/, '月') + '日 ' + s.slice(11, 16) + '–' + e.slice(11, 16);

  async function load() {
    const r = await fetch('/api/v1/slips/data', { method: 'POST', headers: auth(), body: JSON.stringify({ appointment_ids: ids }) });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) { $('#sheets').replaceChildren(el('p', { className: 'bad' }, body.title || '加载失败')); return; }
    $('#sheets').replaceChildren(...body.map((s) => {
      const code = el('div', { className: 'code' });
      code.innerHTML = s.barcode_svg; // made by the server from the appointment number only
      return el('section', { className: 'slip', id: 'slip-' + s.number },
        el('div', { className: 'hosp' }, s.hospital), el('h2', {}, '检查预约单'), code,
        el('p', {}, '患者：' + s.patient), el('p', { className: 'big' }, '检查：' + s.exam_name),
        el('p', { className: 'big' }, '时间：' + when(s.starts_at, s.ends_at)), el('p', {}, '地点：' + s.place),
        el('p', { className: 'small' }, '检查前准备：' + (s.preparation || '无特殊准备。')), el('p', { className: 'small' }, s.notice));
    }));
  }

  $('#print').onclick = () => window.print();
  $('#pdf').onclick = async () => {
    const r = await fetch('/api/v1/slips', { method: 'POST', headers: auth(), body: JSON.stringify({ appointment_ids: ids }) });
    if (!r.ok) { $('#msg').textContent = '下载失败'; return; }
    const url = URL.createObjectURL(await r.blob());
    Object.assign(document.createElement('a'), { href: url, download: 'slips.pdf' }).click();
  };
  HY.requireLogin(load);
})();

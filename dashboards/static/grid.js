// The live slot grid: devices and rooms of one department down, time windows across; each cell
// shows the places the chosen channel can still take and is coloured by fullness. A snapshot,
// then every booking, cancel, lock anywhere, applied as it comes (realtime/stream.py).
'use strict';
(() => {
  const { $, api, live, setState, loadClock, today, hm, param } = HY;
  const CLOSED_LABEL = { closed: '停诊' };
  let resources = [], slots = new Map(), feed = null;

  function left(slot, channel) {
    if (channel) return slot.left[channel] || 0;
    if (slot.st !== 'open' || slot.lk === '*') return 0;
    return Math.max(0, slot.cap - slot.b);
  }

  function cellClass(slot, channel) {
    const now = Date.now() / 1000;
    if (slot.st !== 'open' || slot.e <= now) return 'closed';
    const locked = slot.lk === '*' || (channel && slot.lk.split(',').includes(channel));
    if (locked) return 'locked';
    const n = left(slot, channel);
    if (n <= 0) return 'full';
    const share = n / Math.max(1, slot.cap);
    return share > 0.5 ? 'f0' : share > 0.25 ? 'f1' : 'f2';
  }

  function cellText(slot, channel) {
    const cls = cellClass(slot, channel);
    if (cls === 'locked') return '锁 ' + left(slot, channel) + '/' + slot.cap;
    if (slot.st !== 'open') return CLOSED_LABEL.closed;
    return left(slot, channel) + '/' + slot.cap;
  }

  function cellTitle(slot) {
    const parts = Object.entries(slot.left).map(([ch, n]) => ch + ':' + n).join(' ');
    return hm(slot.s) + '–' + hm(slot.e) + ' 已约 ' + slot.b + '/' + slot.cap + (slot.lk ? ' 锁定:' + slot.lk : '') + '\n' + parts;
  }

  function paintCell(td, slot, flash) {
    const channel = $('#channel').value;
    td.className = 'cell ' + cellClass(slot, channel);
    td.textContent = cellText(slot, channel);
    td.title = cellTitle(slot);
    td.dataset.left = String(left(slot, channel));
    if (flash) { td.classList.add('flash'); setTimeout(() => td.classList.remove('flash'), 1200); }
  }

  function render() {
    const board = $('#board');
    const mine = resources.filter((r) => r.department_id === $('#dept').value);
    const all = [...slots.values()];
    if (!all.length) { board.innerHTML = '<p class="empty">该日无号源（非工作日或尚未放号）。</p>'; return; }
    const times = [...new Set(all.map((s) => hm(s.s)))].sort();
    const table = document.createElement('table');
    table.className = 'grid';
    const head = table.createTHead().insertRow();
    head.appendChild(Object.assign(document.createElement('th'), { textContent: '设备/诊室', className: 'res' }));
    for (const t of times) head.appendChild(Object.assign(document.createElement('th'), { textContent: t }));
    const body = table.createTBody();
    for (const r of mine) {
      const row = body.insertRow();
      row.appendChild(Object.assign(document.createElement('th'), { textContent: r.name, className: 'res' }));
      const cells = new Map(times.map((t) => [t, row.insertCell()]));
      for (const s of all.filter((x) => x.r === r.id)) {
        const td = cells.get(hm(s.s));
        td.id = 'slot-' + s.id;
        td.dataset.slotId = String(s.id);
        paintCell(td, s, false);
      }
    }
    board.replaceChildren(table);
  }

  function onFrame(frame) {
    if (frame.type === 'snapshot') {
      slots = new Map(frame.slots.map((s) => [s.id, s]));
      render();
      return;
    }
    for (const s of frame.slots || []) {
      const known = slots.has(s.id);
      slots.set(s.id, s);
      const td = document.getElementById('slot-' + s.id);
      if (td) paintCell(td, s, true); else if (!known) render();
    }
  }

  function follow() {
    if (feed) feed.close();
    const dept = $('#dept').value, day = $('#day').value;
    history.replaceState(null, '', '?department=' + encodeURIComponent(dept) + '&day=' + day);
    slots = new Map();
    $('#board').innerHTML = '<p class="empty">正在加载…</p>';
    feed = live('/ws/grid?department=' + encodeURIComponent(dept) + '&day=' + day, onFrame,
      (state) => setState($('#state'), state));
  }

  HY.requireLogin(async () => {
    const [depts, res] = await Promise.all([api('/api/v1/departments'), api('/api/v1/resources'), loadClock()]);
    resources = res.sort((a, b) => a.id.localeCompare(b.id));
    const exam = depts.filter((d) => ['radiology', 'ultrasound', 'endoscopy', 'ecg'].includes(d.category));
    $('#dept').replaceChildren(...exam.map((d) => new Option(d.name, d.id)));
    if (param('department')) $('#dept').value = param('department');
    $('#day').value = param('day') || today();
    $('#dept').onchange = follow;
    $('#day').onchange = follow;
    $('#channel').onchange = render;
    follow();
  });
})();

// Printable slips: one card per appointment with its Code128 barcode (SVG made by the server),
// time, place and preparation; the same as the PDF, for printers that print web pages.
'use strict';
(() => {
  const { $, param, el } = HY;
  const ids = (param('ids') || '').split(',').filter(Boolean).map(Number);
  const auth = () => ({ 'content-type': 'application/json', authorization: 'Bearer ' + (sessionStorage.getItem('hy_token') || '') });
  const when = (s, e) => s.slice(0, 10).replace(/-/, '年').replace(/-/, '月') + '日 ' + s.slice(11, 16) + '–' + e.slice(11, 16);

  // The barcode SVG (made by the server from the appointment number) rebuilt element by element
  // with DOM calls, never parsed into the page as markup: only drawing elements and attributes
  // are kept (no scripts, links, event handlers or foreign content), and its inline style
  // declarations become presentation attributes (the Content-Security-Policy allows no inline
  // styles).
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const SVG_TAGS = new Set(['svg', 'g', 'rect', 'path', 'line', 'polyline', 'polygon', 'text', 'tspan', 'clipPath', 'defs', 'title', 'desc']);
  const PAINT = ['fill', 'fill-rule', 'fill-opacity', 'stroke', 'stroke-width', 'stroke-linecap', 'stroke-linejoin',
    'stroke-opacity', 'clip-path', 'font-family', 'font-size', 'font-weight', 'text-anchor'];
  const SVG_ATTRS = new Set(['width', 'height', 'viewBox', 'preserveAspectRatio', 'x', 'y', 'x1', 'y1', 'x2', 'y2',
    'dx', 'dy', 'd', 'points', 'transform', 'id', 'clipPathUnits', ...PAINT]);
  const STYLE_PROPS = new Set(PAINT);
  const outsideUrl = /url\(\s*['"]?(?!#)/i; // only url(#local-id) references stay

  function copySvg(node) {
    if (node.nodeType === Node.TEXT_NODE) return document.createTextNode(node.data);
    if (node.nodeType !== Node.ELEMENT_NODE || node.namespaceURI !== SVG_NS || !SVG_TAGS.has(node.localName)) return null;
    const out = document.createElementNS(SVG_NS, node.localName);
    for (const a of node.attributes) {
      if (!a.namespaceURI && SVG_ATTRS.has(a.localName) && !outsideUrl.test(a.value)) out.setAttribute(a.localName, a.value);
    }
    for (const decl of (node.getAttribute('data-hy-style') || '').split(';')) {
      const colon = decl.indexOf(':');
      if (colon < 0) continue;
      const prop = decl.slice(0, colon).trim().toLowerCase(), value = decl.slice(colon + 1).trim();
      if (STYLE_PROPS.has(prop) && !outsideUrl.test(value)) out.setAttribute(prop, value);
    }
    for (const child of node.childNodes) {
      const copied = copySvg(child);
      if (copied) out.appendChild(copied);
    }
    return out;
  }

  function barcode(markup) {
    // The parsed document shares the page's policy: its style attributes are renamed before parsing.
    const renamed = (markup || '').replace(/(\s)style=/g, '$1data-hy-style=');
    const root = new DOMParser().parseFromString(renamed, 'image/svg+xml').documentElement;
    return root && root.localName === 'svg' ? copySvg(root) : null;
  }

  async function load() {
    const r = await fetch('/api/v1/slips/data', { method: 'POST', headers: auth(), body: JSON.stringify({ appointment_ids: ids }) });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) { $('#sheets').replaceChildren(el('p', { className: 'bad' }, body.title || '加载失败')); return; }
    $('#sheets').replaceChildren(...body.map((s) => {
      const code = el('div', { className: 'code' });
      const svg = barcode(s.barcode_svg);
      if (svg) code.append(svg);
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

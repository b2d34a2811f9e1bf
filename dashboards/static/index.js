// The landing page: whether the database and cache are up (GET /ready). No inline scripts: the
// Content-Security-Policy allows only the platform's own script files.
'use strict';
fetch('/ready').then(r => r.json().then(b => ({ok: r.ok, b}))).then(({ok, b}) => {
  const el = document.getElementById('status');
  el.textContent = ok ? '数据库与缓存均正常，可以预约。' : '系统暂未就绪：' + (b.title || '');
  el.className = ok ? 'ok' : 'bad';
}).catch(() => { const el = document.getElementById('status'); el.textContent = '无法连接服务器'; el.className = 'bad'; });

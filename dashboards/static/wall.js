// The department heads' wall: one frame of figures per change (dashboards/metrics.py), drawn
// with plotly.js served by the platform. Plotly.react redraws in place, so the charts move.
'use strict';
(() => {
  const { $, live, setState, loadClock, today, clockTime, param } = HY;
  let feed = null;
  const FONT = { family: 'Noto Sans CJK SC, Microsoft YaHei, sans-serif', color: '#e6edf7', size: 14 };
  // Plotly writes back into the layout it is given (axis types...): every chart gets fresh objects.
  const axis = (extra) => ({ gridcolor: '#263a5e', ...extra });
  const CONFIG = { displayModeBar: false, responsive: true };
  const pct = (x) => (x === null || x === undefined ? '–' : (x * 100).toFixed(1) + '%');

  function layout(title, extra) {
    return {
      paper_bgcolor: 'rgba(0,0,0,0)', plot_bgcolor: 'rgba(0,0,0,0)', font: FONT,
      margin: { l: 60, r: 20, t: 44, b: 70 }, legend: { orientation: 'h', y: -0.25 }, showlegend: true,
      xaxis: axis({ type: 'category' }), yaxis: axis({ type: 'linear', rangemode: 'tozero' }),
      title: { text: title, font: { size: 18 } }, ...extra,
    };
  }
  const empty = (text) => [{ text, showarrow: false, font: { size: 22, color: '#8196b8' }, xref: 'paper', yref: 'paper', x: 0.5, y: 0.5 }];

  function draw(data) {
    const t = data.totals;
    $('#t-bookings').textContent = String(t.bookings_made);
    $('#t-slots').textContent = pct(t.slot_utilisation);
    $('#t-devices').textContent = pct(t.device_utilisation);
    $('#t-cancel').textContent = pct(t.cancel_rate);
    $('#t-noshow').textContent = pct(t.no_show_rate);
    $('#t-sameday').textContent = pct(t.outpatient_same_day_rate);
    $('#t-wait').textContent = t.checkin_to_start_min === null ? '–' : t.checkin_to_start_min + ' 分';
    $('#t-ontime').textContent = pct(t.on_time_start_rate);
    $('#t-done').textContent = pct(t.same_day_completion_rate);
    $('#t-report').textContent = pct(t.report_on_target_rate);
    $('#t-started').textContent = String(t.started);
    $('#t-reports').textContent = String(t.reports_verified);
    $('#updated').textContent = '更新于 ' + clockTime(data.generated_at);

    const channels = [...new Set(data.bookings.map((b) => b.channel_name))];
    const depts = [...new Set(data.bookings.map((b) => b.department))];
    const byChannel = channels.map((ch) => ({
      type: 'bar', name: ch, x: depts,
      y: depts.map((d) => data.bookings.filter((b) => b.department === d && b.channel_name === ch)
        .reduce((n, b) => n + b.count, 0)),
    }));
    Plotly.react('c-bookings', byChannel.length ? byChannel : [{ type: 'bar', x: [], y: [] }],
      layout('当日预约量（按科室、渠道）', { barmode: 'stack', annotations: byChannel.length ? [] : empty('暂无预约') }), CONFIG);

    const devices = [...data.devices].reverse();
    Plotly.react('c-devices', [{
      type: 'bar', orientation: 'h', y: devices.map((d) => d.name), x: devices.map((d) => (d.utilisation || 0) * 100),
      marker: { color: devices.map((d) => ((d.utilisation || 0) > 0.85 ? '#f97066' : '#53b1fd')) },
      hovertemplate: '%{y}: %{x:.1f}%<extra></extra>',
    }], layout('设备利用率（检查分钟 / 开放分钟）', {
      margin: { l: 150, r: 20, t: 44, b: 30 }, font: { ...FONT, size: 11 }, showlegend: false,
      xaxis: axis({ type: 'linear', ticksuffix: '%', range: [0, 100], autorange: false }),
      yaxis: axis({ type: 'category', automargin: true }),
    }), CONFIG);

    Plotly.react('c-slots', [
      { type: 'bar', name: '放号', x: data.departments.map((d) => d.department), y: data.departments.map((d) => d.released), marker: { color: '#344e7a' } },
      { type: 'bar', name: '已约', x: data.departments.map((d) => d.department), y: data.departments.map((d) => d.booked), marker: { color: '#32d583' } },
    ], layout('号源利用（按科室）', { barmode: 'group' }), CONFIG);

    Plotly.react('c-waits', [{
      type: 'bar', x: data.waits.map((w) => w.modality), y: data.waits.map((w) => w.avg_days),
      marker: { color: '#fdb022' }, hovertemplate: '%{x}: %{y:.1f} 天<extra></extra>',
    }], layout('平均预约等待天数（开单到检查，按设备类型）', {
      showlegend: false, annotations: data.waits.length ? [] : empty('当日暂无检查'),
      yaxis: axis({ type: 'linear', ticksuffix: ' 天', rangemode: 'tozero' }),
    }), CONFIG);
  }

  function follow() {
    if (feed) feed.close();
    const day = $('#day').value;
    history.replaceState(null, '', '?day=' + day);
    feed = live('/ws/wall?day=' + day, (frame) => draw(frame.data), (state) => setState($('#state'), state));
  }

  HY.requireLogin(async () => {
    await loadClock();
    $('#day').value = param('day') || today();
    $('#day').onchange = follow;
    follow();
  });
})();

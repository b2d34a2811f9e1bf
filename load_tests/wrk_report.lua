-- wrk script that only adds a machine-readable summary to a plain (static) wrk run, e.g. GET /ping:
--   wrk -t2 -c64 -d10s --latency -s load_tests/wrk_report.lua http://127.0.0.1:PORT/ping
-- No request() or response() hook, so wrk keeps its fast static-request path.

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'HYBENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"p50":%d,"p90":%d,"p95":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(95), latency:percentile(99),
    latency.max, latency.mean))
end

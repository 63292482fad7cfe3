-- Shared by post.lua and get.lua (loaded with dofile): counts responses by
-- status in every wrk thread, and reports one machine-readable line from
-- done(), which runs once in wrk's main thread after the test.
--
-- Environment:
--   BENCH_ACKS  if set, a file to write the acknowledged (2xx) POST requests
--               to, one "request-id<TAB>sales" line each, so that the harness
--               can compare them with the sales stored.

local threads = {}

-- Per-thread state (each wrk thread runs its own copy of this script).
ok, bad = 0, 0
statuses = {}
acked = {}  -- request numbers of this thread that got a 2xx answer

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

-- Keys look like "<prefix>t<thread>n<request>.<item>" (see post.lua).
local KEY = '"idempotency_key":"[^"]-n(%d+)%.'

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status >= 200 and status < 300 then
    ok = ok + 1
    local n = body and string.match(body, KEY)
    if n then
      acked[#acked + 1] = tonumber(n)
    end
  else
    bad = bad + 1
  end
end

local function write_acks(path)
  local f = assert(io.open(path, "w"))
  for _, t in ipairs(threads) do
    local prefix, batch = t:get("prefix"), t:get("batch")
    if prefix then
      local tid = t:get("tid")
      for _, n in ipairs(t:get("acked")) do
        f:write(string.format("%st%dn%d\t%d\n", prefix, tid, n, batch))
      end
    end
  end
  f:close()
end

function done(summary, latency, requests)
  local total_ok, total_bad, codes = 0, 0, {}
  for _, t in ipairs(threads) do
    total_ok = total_ok + t:get("ok")
    total_bad = total_bad + t:get("bad")
    for code, n in pairs(t:get("statuses")) do
      codes[code] = (codes[code] or 0) + n
    end
  end
  local acks = os.getenv("BENCH_ACKS")
  if acks and acks ~= "" then
    write_acks(acks)
  end
  local parts = {}
  for code, n in pairs(codes) do
    parts[#parts + 1] = string.format('"%d":%d', code, n)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"ok":%d,"non2xx":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},"statuses":{%s}}\n',
    summary.requests, summary.duration, total_ok, total_bad,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout, table.concat(parts, ",")
  ))
end

-- wrk script for POST /sales: one sale (an object) or BENCH_BATCH sales (an
-- array) per request. Consecutive sales cycle through every store and product
-- id, and every sale carries an idempotency key that is unique across the
-- whole benchmark run, so that acknowledged and stored sales can be matched.
--
-- Environment:
--   BENCH_BATCH     sales per request (default 1: a single object)
--   BENCH_STORES    store ids are 1..BENCH_STORES (default 200)
--   BENCH_PRODUCTS  product ids are 1..BENCH_PRODUCTS (default 1000)
--   BENCH_PREFIX    prefix of the idempotency keys, unique per wrk run
--   BENCH_ACKS      see common.lua
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "common.lua")

batch = tonumber(os.getenv("BENCH_BATCH") or "1")
prefix = os.getenv("BENCH_PREFIX") or "bench"
local stores = tonumber(os.getenv("BENCH_STORES") or "200")
local products = tonumber(os.getenv("BENCH_PRODUCTS") or "1000")
local headers = { ["Content-Type"] = "application/json" }
local FORMAT = '{"store_id":%d,"product_id":%d,"quantity":%d,"idempotency_key":"%st%dn%d.%d"}'

local n = 0    -- requests sent by this thread
local seq = 0  -- sales sent by this thread, offset per thread

function init(args)
  -- tid is set by setup() in common.lua before init() runs.
  seq = (tid - 1) * 100003
end

local function sale(i)
  seq = seq + 1
  local store = seq % stores + 1
  local product = math.floor(seq / stores) % products + 1
  return string.format(FORMAT, store, product, seq % 3 + 1, prefix, tid, n, i)
end

function request()
  n = n + 1
  local body
  if batch == 1 then
    body = sale(0)
  else
    local items = {}
    for i = 1, batch do
      items[i] = sale(i - 1)
    end
    body = "[" .. table.concat(items, ",") .. "]"
  end
  return wrk.format("POST", nil, headers, body)
end

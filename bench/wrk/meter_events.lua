-- One v1 meter event a request, a new identifier each (wrk thread id, then a counter), and
-- an Idempotency-Key on each, as the official SDK sends one with every POST.
-- Set by api_ingest.py through the environment: API_KEY, API_CUSTOMERS.
local counter = 0

local threads = {}

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)

  customers = tonumber(os.getenv("API_CUSTOMERS"))
  wrk.method = "POST"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("API_KEY")
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
  run = os.getenv("API_RUN")
end

function request()
  counter = counter + 1
  local customer = string.format("cus_bench_%05d", (counter * 7919 + thread_id) % customers)
  local body = "event_name=bench_api&identifier=" .. run .. "-" .. thread_id .. "-" .. counter ..
    "&payload[stripe_customer_id]=" .. customer .. "&payload[value]=" .. (counter % 100 + 1)
  local headers = {}  -- wrk.format takes these instead of wrk.headers: copy them
  for name, value in pairs(wrk.headers) do headers[name] = value end
  headers["Idempotency-Key"] = run .. "-k-" .. thread_id .. "-" .. counter
  return wrk.format(nil, "/v1/billing/meter_events", headers, body)
end

function done(summary, latency, requests)
  io.write(string.format("non2xx %d\n", summary.errors.status))
end

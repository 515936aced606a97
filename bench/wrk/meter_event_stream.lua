-- 100 v2 stream events a request, new identifiers each. API_TOKEN: a session token.
local counter = 0

function setup(thread)
  thread:set("thread_id", math.random(1, 1000000000))
end

function init(args)
  customers = tonumber(os.getenv("API_CUSTOMERS"))
  wrk.method = "POST"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("API_TOKEN")
  wrk.headers["Content-Type"] = "application/json"
  run = os.getenv("API_RUN")
end

function request()
  counter = counter + 1
  local events = {}
  local now = os.date("!%Y-%m-%dT%H:%M:%SZ")  -- as clients send it: the columnar drain
  for n = 1, 100 do
    local customer = string.format("cus_bench_%05d", (counter * 100 + n) % customers)
    events[n] = string.format(
      '{"event_name":"bench_api","identifier":"%s-%d-%d-%d","timestamp":"%s","payload":{"stripe_customer_id":"%s","value":"%d"}}',
      run, thread_id, counter, n, now, customer, n)
  end
  return wrk.format(nil, "/v2/billing/meter_event_stream", nil,
    '{"events":[' .. table.concat(events, ",") .. ']}')
end

function done(summary, latency, requests)
  io.write(string.format("non2xx %d\n", summary.errors.status))
end

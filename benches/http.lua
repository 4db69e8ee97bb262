-- wrk script for compare.sh's HTTP cell: small requests over many tenants.
--
--   wrk -t2 -c50 -d8s -s benches/http.lua https://127.0.0.1:PORT -- METHOD TENANTS BODY DELAY_MS
--
-- METHOD GET or POST; TENANTS how many /ws/tenant-N/items paths the requests cycle over;
-- BODY the POST body's size in bytes; DELAY_MS, if above 0, a pause between a response and
-- the connection's next request (a fixed offered load: about connections * 1000 / DELAY_MS
-- requests per second; latency is timed from each request's send, so the pause is not in it).
-- At the end it prints one line, "JSON {...}", with the figures compare.sh records.
--
-- Every request is formatted once, in init: building one per request in Lua would make the
-- load tool, which shares the two cores with the proxy, spend more of them.

local counter = 0
local threads = {}

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

local requests = {}
local next_request = 1
local pause = 0

function init(args)
  local method = args[1] or "GET"
  local tenants = tonumber(args[2] or "1000")
  local size = tonumber(args[3] or "128")
  pause = tonumber(args[4] or "0")
  local body = nil
  local headers = {}
  if method == "POST" then
    body = string.rep("x", size)
    headers["Content-Type"] = "application/octet-stream"
  end
  for n = 1, tenants do
    requests[n] = wrk.format(method, "/ws/tenant-" .. n .. "/items", headers, body)
  end
  -- wrk paces (a timer between requests) whenever the first thread has a delay function
  -- after init: without a pause, take it away, so the throughput runs are not paced.
  if pause <= 0 then
    delay = nil
  end
  -- Threads start at different tenants, so they do not walk the same order in step.
  next_request = ((id or 1) - 1) * 97 % tenants + 1
end

function request()
  local r = requests[next_request]
  next_request = next_request % #requests + 1
  return r
end

function delay()
  return pause
end

function done(summary, latency, _)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    'JSON {"requests": %d, "seconds": %.3f, "requests_per_second": %.1f, '
      .. '"errors": %d, "status_errors": %d, "latency": {"p50_us": %d, "p99_us": %d, '
      .. '"p999_us": %d, "max_us": %d}}\n',
    summary.requests, secs, summary.requests / secs,
    e.connect + e.read + e.write + e.timeout + e.status, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end

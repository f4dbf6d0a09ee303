-- wrk script for the soak: mixed allowed / denied / redirected traffic, counting answers.
-- Cookies come from the environment: SOAK_ALLOWED, SOAK_DENIED.
local allowed = os.getenv("SOAK_ALLOWED")
local denied = os.getenv("SOAK_DENIED")
local threads = {}
local counter = 0

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  c2xx, c302, c403, c5xx, cother = 0, 0, 0, 0, 0
end

function request()
  counter = counter + 1
  local k = counter % 10
  if k < 5 then
    return wrk.format("GET", "/console/customers/" .. counter, {["Cookie"] = "console_session=" .. allowed})
  elseif k < 8 then
    return wrk.format("GET", "/ops", {["Cookie"] = "console_session=" .. denied})
  elseif k < 9 then
    return wrk.format("GET", "/console/customers/" .. counter)
  else
    return wrk.format("POST", "/secrets/db/rotate/htmx", {["Cookie"] = "console_session=" .. denied})
  end
end

function response(status, headers, body)
  if status >= 200 and status < 300 then c2xx = c2xx + 1
  elseif status == 302 then c302 = c302 + 1
  elseif status == 403 then c403 = c403 + 1
  elseif status >= 500 then c5xx = c5xx + 1
  else cother = cother + 1 end
end

function done(summary, latency, requests)
  local t = {c2xx = 0, c302 = 0, c403 = 0, c5xx = 0, cother = 0}
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + thread:get(k) end
  end
  io.write(string.format("SOAK_COUNTS 2xx=%d 302=%d 403=%d 5xx=%d other=%d socket_errors=%d\n",
    t.c2xx, t.c302, t.c403, t.c5xx, t.cother,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end

-- wrk script for scripts/bench/flood.sh: requests without a session to paths no rule maps, each
-- from a client of its own (X-Forwarded-For, read by a gateway with --trusted-proxies 1): the
-- worst case for --anonymous-denial-window, every request a new key.
local n = 0
request = function()
  n = n + 1
  local ip = string.format("10.%d.%d.%d", math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
  return wrk.format("GET", "/no/such/page/" .. n, { ["X-Forwarded-For"] = ip })
end

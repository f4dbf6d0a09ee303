-- wrk script for case (e): every request carries a session cookie taken in turn from the file
-- named by the COOKIES environment variable (one cookie value per line). Requests are
-- pre-formatted in init(), so the per-request Lua cost is one table lookup.

local reqs = {}
local n = 0
local i = 0

-- Runs in the main Lua state once per thread: hands each thread its own start offset.
local threads = 0
function setup(thread)
  thread:set("offset", threads)
  threads = threads + 1
end

function init(args)
  local path = os.getenv("LOAD_PATH") or "/ops"
  local file = assert(io.open(os.getenv("COOKIES"), "r"))
  for line in file:lines() do
    if line ~= "" then
      n = n + 1
      reqs[n] = wrk.format("GET", path, { ["Cookie"] = "console_session=" .. line }, nil)
    end
  end
  file:close()
  assert(n > 0, "no cookies in " .. os.getenv("COOKIES"))
  -- Spread threads over the file so they do not walk it in lock-step.
  i = ((offset or 0) * 3331) % n
end

function request()
  i = i % n + 1
  return reqs[i]
end

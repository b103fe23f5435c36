-- POST /events with prepared bodies, one per line of a file, in turn. Usage:
--   wrk -s bench/lua/events.lua http://127.0.0.1:P -- <bodies file> <bearer token>
-- or with BENCH_BODIES / BENCH_TOKEN in the environment.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")

local bodies, token, n = {}, "", 0

function init(args)
   for line in io.lines(args[1] or os.getenv("BENCH_BODIES")) do
      bodies[#bodies + 1] = line
   end
   token = args[2] or os.getenv("BENCH_TOKEN")
   n = math.random(1, #bodies)
end

function request()
   n = n % #bodies + 1
   return wrk.format("POST", "/events", {
      ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer " .. token,
   }, bodies[n])
end

-- GET /users/<random user>/recommendations. Usage:
--   wrk -s bench/lua/recommend.lua http://127.0.0.1:P -- <users> [limit] [kind]
-- or with BENCH_USERS / BENCH_LIMIT / BENCH_KIND in the environment (bench/blob_bench.py's
-- run_wrk passes no script arguments). Users are the synthetic generator's names,
-- user-0000000 .. user-<users-1>, picked at random for every request.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")

local users, limit, kind = 1000, 10, ""

function init(args)
   users = tonumber(args[1]) or tonumber(os.getenv("BENCH_USERS") or "") or users
   limit = tonumber(args[2]) or tonumber(os.getenv("BENCH_LIMIT") or "") or limit
   local k = args[3] or os.getenv("BENCH_KIND") or ""
   if k ~= "" then kind = "&kind=" .. k end
   math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
end

function request()
   local path = string.format("/users/user-%07d/recommendations?limit=%d%s",
                              math.random(0, users - 1), limit, kind)
   return wrk.format("GET", path)
end

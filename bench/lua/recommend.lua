-- GET /users/<random user>/recommendations. Usage:
--   wrk -s bench/lua/recommend.lua http://127.0.0.1:P -- <users> [limit]
-- Users are the synthetic generator's names, user-0000000 .. user-<users-1>.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")

local users, limit = 1000, 10

function init(args)
   users = tonumber(args[1]) or users
   limit = tonumber(args[2]) or limit
   math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
end

function request()
   local path = string.format("/users/user-%07d/recommendations?limit=%d",
                              math.random(0, users - 1), limit)
   return wrk.format("GET", path)
end

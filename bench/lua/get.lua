-- GET the URL given on wrk's command line, over and over (wrk's default request), and report
-- the totals as JSON (report.lua). Usage: wrk -s bench/lua/get.lua http://127.0.0.1:P/blobs/<digest>
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")

-- PUT one file's bytes to the URL given on wrk's command line, over and over.
--   BENCH_PUT_FILE   path of the body (read once per wrk thread, kept in memory)
--   BENCH_PUT_TOKEN  bearer token with the write scope
-- The body is the same every time, so after the first request the blob exists: the origin
-- answers 200 after reading (and discarding) the body; see docs/BENCHMARKS.md.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")

local path = os.getenv("BENCH_PUT_FILE")
local token = os.getenv("BENCH_PUT_TOKEN")
if not path or not token then
   error("put.lua needs BENCH_PUT_FILE and BENCH_PUT_TOKEN in the environment")
end
local f = assert(io.open(path, "rb"))
local body = f:read("*a")
f:close()

wrk.method = "PUT"
wrk.body = body  -- wrk.format adds Content-Length
wrk.headers["Authorization"] = "Bearer " .. token
wrk.headers["Content-Type"] = "application/octet-stream"

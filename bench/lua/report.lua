-- Shared by the blob benchmark's wrk scripts: at the end, print one machine-readable line
--   BENCH_JSON {"requests":..,"bytes":..,"duration_us":..,"errors":{..},"latency_us":{..}}
-- that bench/blob_bench.py parses (wrk's human-readable summary is printed above it).

local function json_number(x)
   return string.format("%.0f", x)
end

function done(summary, latency, requests)
   local e = summary.errors
   local parts = {
      '"requests":' .. json_number(summary.requests),
      '"bytes":' .. json_number(summary.bytes),
      '"duration_us":' .. json_number(summary.duration),
      '"errors":{"connect":' .. e.connect .. ',"read":' .. e.read .. ',"write":' .. e.write
         .. ',"status":' .. e.status .. ',"timeout":' .. e.timeout .. '}',
      '"latency_us":{"mean":' .. json_number(latency.mean) .. ',"max":' .. json_number(latency.max)
         .. ',"p50":' .. json_number(latency:percentile(50))
         .. ',"p90":' .. json_number(latency:percentile(90))
         .. ',"p99":' .. json_number(latency:percentile(99)) .. '}',
   }
   io.write("BENCH_JSON {" .. table.concat(parts, ",") .. "}\n")
end

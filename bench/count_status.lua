-- wrk script: POST the PNG at $BENCH_PNG (as post_png.lua) and count the responses per HTTP status.
-- Each thread counts in its own Lua state; done() sums them with thread:get and prints
-- "duration_us N", "errors connect/read/write/status/timeout ..." and one "status CODE COUNT" line per status.
local file = assert(io.open(assert(os.getenv("BENCH_PNG"), "BENCH_PNG is not set"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
wrk.headers["Content-Type"] = "image/png"
file:close()

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   counts = {}
end

function response(status, headers, body)
   counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
   local total = {}
   for _, thread in ipairs(threads) do
      for status, n in pairs(thread:get("counts")) do
         total[status] = (total[status] or 0) + n
      end
   end
   local e = summary.errors
   io.write(string.format("duration_us %d\n", summary.duration))
   io.write(string.format("errors %d %d %d %d %d\n", e.connect, e.read, e.write, e.status, e.timeout))
   for status, n in pairs(total) do
      io.write(string.format("status %d %d\n", status, n))
   end
end

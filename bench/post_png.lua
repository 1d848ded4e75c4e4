-- wrk script: POST the PNG at $BENCH_PNG with content-type image/png on every request.
local file = assert(io.open(assert(os.getenv("BENCH_PNG"), "BENCH_PNG is not set"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
wrk.headers["Content-Type"] = "image/png"
file:close()

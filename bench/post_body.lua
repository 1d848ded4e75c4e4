-- wrk script: POST the bytes of $BENCH_BODY on every request, with Content-Type $BENCH_CONTENT_TYPE and, if set,
-- Inference-Header-Content-Length $BENCH_HEADER_LENGTH (an Open Inference Protocol V2 binary request).
local file = assert(io.open(assert(os.getenv("BENCH_BODY"), "BENCH_BODY is not set"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "application/octet-stream"
local header_length = os.getenv("BENCH_HEADER_LENGTH")
if header_length then
    wrk.headers["Inference-Header-Content-Length"] = header_length
end
file:close()

-- healthz.lua - GET /healthz, the baseline: a static reply with no database work
--
-- No response() function, so wrk does not hand the replies to Lua; non-2xx/3xx
-- replies still appear in done()'s errors.status.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

wrk.method = "GET"
wrk.path = "/healthz"

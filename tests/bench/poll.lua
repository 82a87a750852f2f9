-- poll.lua - POST /token for pending requests, round robin over BENCH_IDS
--
-- Every request is polled many times during a run, so the replies mix
-- authorization_pending (first poll of a request, or a poll after its interval) and
-- slow_down (a poll within the interval). Both take the same path through the server:
-- client authentication, then one UPDATE of the request row.
--
-- Client authentication is BENCH_AUTH (an Authorization header) unless
-- BENCH_ASSERTIONS names a file of client assertions, one per line (private_key_jwt).
-- Each assertion is used once, because the server rejects a jti it has seen. A thread
-- that runs out of assertions sets exhausted (done() reports it) and stops.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local reqs = {}
local next_req = 0
local single_use = false

function init(args)
   local ids = bench.read_slice(bench.env("BENCH_IDS"), thread_id, threads)
   assert(#ids > 0, "no auth_req_id for this thread in " .. bench.env("BENCH_IDS"))
   local form = "grant_type=urn%3Aopenid%3Aparams%3Agrant-type%3Aciba&auth_req_id="
   local assertions = os.getenv("BENCH_ASSERTIONS")
   if assertions and assertions ~= "" then
      single_use = true
      local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
      for i, assertion in ipairs(bench.read_slice(assertions, thread_id, threads)) do
         local body = form .. ids[(i - 1) % #ids + 1] .. bench.assertion_form(assertion)
         reqs[#reqs + 1] = wrk.format("POST", "/token", headers, body)
      end
      assert(#reqs > 0, "no assertion for this thread in " .. assertions)
      return
   end
   local headers = {
      ["Authorization"] = bench.env("BENCH_AUTH"),
      ["Content-Type"] = "application/x-www-form-urlencoded",
   }
   for _, id in ipairs(ids) do
      reqs[#reqs + 1] = wrk.format("POST", "/token", headers, form .. id)
   end
end

function request()
   if single_use then
      return bench.next_once(reqs)
   end
   next_req = next_req % #reqs + 1
   return reqs[next_req]
end

function response(status, headers, body)
   bench.count(status, body)
end

-- poll.lua - POST /token for pending requests, round robin over BENCH_IDS
--
-- Every request is polled many times during a run, so the replies mix
-- authorization_pending (first poll of a request, or a poll after its interval) and
-- slow_down (a poll within the interval). Both take the same path through the server:
-- client authentication, then one UPDATE of the request row.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local reqs = {}
local next_req = 0

function init(args)
   local headers = {
      ["Authorization"] = bench.env("BENCH_AUTH"),
      ["Content-Type"] = "application/x-www-form-urlencoded",
   }
   for _, id in ipairs(bench.read_slice(bench.env("BENCH_IDS"), thread_id, threads)) do
      local body = "grant_type=urn%3Aopenid%3Aparams%3Agrant-type%3Aciba&auth_req_id=" .. id
      reqs[#reqs + 1] = wrk.format("POST", "/token", headers, body)
   end
   assert(#reqs > 0, "no auth_req_id for this thread in " .. bench.env("BENCH_IDS"))
end

function request()
   next_req = next_req % #reqs + 1
   return reqs[next_req]
end

function response(status, headers, body)
   bench.count(status, body)
end

-- tokens.lua - POST /token once for each approved request in BENCH_IDS
--
-- Each auth_req_id is redeemed once, so every 200 is one issued access token and ID
-- token. bench.sh picks a duration shorter than it takes to use up the ids. A thread
-- that still runs out sets exhausted (done() reports it) and stops, and its remaining
-- connections send the last request again, which gets invalid_grant.
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
   if next_req == #reqs then
      if not exhausted then
         exhausted = true
         wrk.thread:stop()
      end
      return reqs[next_req]
   end
   next_req = next_req + 1
   return reqs[next_req]
end

function response(status, headers, body)
   bench.count(status, body)
end

-- bc_authorize.lua - POST /bc-authorize, rotating login_hint over the bench users
--
-- The users are named BENCH_USER_PREFIX followed by BENCH_USER_FIRST, BENCH_USER_FIRST + 1,
-- ... (BENCH_USERS of them). Each thread cycles through its own slice of them, so every
-- phone number gets an equal share of the codes. The auth_req_id of each 200 reply goes
-- to BENCH_OUT/auth_req_ids.<thread>, one per line, after the ids of earlier runs.
-- BENCH_EXTRA_FORM, when set, is appended to every body (for example
-- "&client_notification_token=..." for a ping client). BENCH_ASSERTIONS, when set, names
-- a file of client assertions (private_key_jwt) that replace BENCH_AUTH: each request
-- uses one of them once, and a thread that runs out stops (see bench.next_once).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local reqs = {}
local next_req = 0
local single_use = false
local ids_file

function init(args)
   local users = tonumber(bench.env("BENCH_USERS"))
   local prefix = bench.env("BENCH_USER_PREFIX")
   local first = tonumber(bench.env("BENCH_USER_FIRST"))
   local bodies = {}
   for user = thread_id, users, threads do
      local name = prefix .. (first + user - 1)
      bodies[#bodies + 1] = "scope=openid&login_hint=" .. name ..
         "&binding_message=Benchmark%20" .. name .. (os.getenv("BENCH_EXTRA_FORM") or "")
   end
   local assertions = os.getenv("BENCH_ASSERTIONS")
   if assertions and assertions ~= "" then
      single_use = true
      local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
      for i, assertion in ipairs(bench.read_slice(assertions, thread_id, threads)) do
         local body = bodies[(i - 1) % #bodies + 1] .. bench.assertion_form(assertion)
         reqs[#reqs + 1] = wrk.format("POST", "/bc-authorize", headers, body)
      end
      assert(#reqs > 0, "no assertion for this thread in " .. assertions)
   else
      local headers = {
         ["Authorization"] = bench.env("BENCH_AUTH"),
         ["Content-Type"] = "application/x-www-form-urlencoded",
      }
      for _, body in ipairs(bodies) do
         reqs[#reqs + 1] = wrk.format("POST", "/bc-authorize", headers, body)
      end
   end
   ids_file = assert(io.open(bench.env("BENCH_OUT") .. "/auth_req_ids." .. thread_id, "a"))
   -- Line buffering, so every id is on disk even if wrk is interrupted.
   ids_file:setvbuf("line")
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
   if status == 200 then
      local id = body:match('"auth_req_id"%s*:%s*"([%w_%-]+)"')
      if id then
         ids_file:write(id, "\n")
      end
   end
end

-- approve.lua - POST /approve/REF with the right code, once for each line of BENCH_PAIRS
--
-- BENCH_PAIRS contains "REF CODE" lines taken from the SMS texts the sink recorded. The
-- page replies 200 whether or not the code was right, so the outcome is read from the
-- page: count.approved, count.wrong_code or count.other. A thread that has sent its
-- last pair creates BENCH_OUT/approve_done.<thread> and stops; bench.sh interrupts wrk
-- once every thread has done so.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local reqs = {}
local next_req = 0

function init(args)
   local headers = {["Content-Type"] = "application/x-www-form-urlencoded"}
   for _, line in ipairs(bench.read_slice(bench.env("BENCH_PAIRS"), thread_id, threads)) do
      local ref, code = line:match("^([%w_%-]+) (%d+)$")
      assert(ref, "malformed line in BENCH_PAIRS: " .. line)
      reqs[#reqs + 1] = wrk.format("POST", "/approve/" .. ref, headers,
                                   "code=" .. code .. "&action=approve")
   end
   assert(#reqs > 0, "no pair for this thread in " .. bench.env("BENCH_PAIRS"))
end

function request()
   if next_req == #reqs then
      if not exhausted then
         exhausted = true
         local marker = io.open(bench.env("BENCH_OUT") .. "/approve_done." .. thread_id, "w")
         if marker then
            marker:close()
         end
         wrk.thread:stop()
      end
      -- Sent only while the thread stops; the page shows "Approved" again.
      return reqs[next_req]
   end
   next_req = next_req + 1
   return reqs[next_req]
end

function response(status, headers, body)
   local key = "other"
   if status == 200 and body:find("You approved this request", 1, true) then
      key = "approved"
   elseif status == 200 and body:find("Wrong code", 1, true) then
      key = "wrong_code"
   end
   counts[key] = (counts[key] or 0) + 1
end

-- common.lua - shared parts of the wrk scripts that tests/bench.sh runs
--
-- A scenario script loads this file with dofile(), then defines request() and, when it
-- needs the response, response(). This file provides setup() and done(): setup() gives
-- each thread an id from 1 to BENCH_THREADS, and done() prints one machine-readable
-- line for bench.sh:
--   BENCH requests=N duration_us=N p50_us=N p99_us=N errors=N timeouts=N
--         status_errors=N exhausted_threads=N count.<outcome>=N ...
-- where errors counts socket errors and timeouts (no reply within wrk's 2 s timeout),
-- and <outcome> is the HTTP status, followed by the OAuth error code for 4xx replies
-- that have one (count.400.slow_down).

bench = {}

-- Returns the environment variable name, or stops the script when it is unset.
function bench.env(name)
   local value = os.getenv(name)
   if value == nil or value == "" then
      error(name .. " is not set (tests/bench.sh sets it)")
   end
   return value
end

-- Returns this thread's share of the lines of path: line i goes to thread
-- ((i - 1) % threads) + 1, so the threads get disjoint slices of nearly equal size.
function bench.read_slice(path, thread_id, threads)
   local lines = {}
   local i = 0
   local f = assert(io.open(path, "r"))
   for line in f:lines() do
      if line ~= "" then
         if i % threads == thread_id - 1 then
            lines[#lines + 1] = line
         end
         i = i + 1
      end
   end
   f:close()
   return lines
end

-- Adds one response to the thread's counts: the status, and for a 4xx with an OAuth
-- error body, the error code as well.
function bench.count(status, body)
   local key = tostring(status)
   if status >= 400 and status < 500 and body then
      local code = body:match('"error"%s*:%s*"([%w_]+)"')
      if code then
         key = key .. "." .. code
      end
   end
   counts[key] = (counts[key] or 0) + 1
end

-- Returns the form parameters that authenticate a request by a client assertion.
function bench.assertion_form(assertion)
   return "&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type" ..
      "%3Ajwt-bearer&client_assertion=" .. assertion
end

-- Returns the next of the prepared requests reqs, each once. After the last one the
-- thread sets exhausted and stops, and its connections still in flight send the last
-- request again.
local next_once = 0
function bench.next_once(reqs)
   if next_once == #reqs then
      if not exhausted then
         exhausted = true
         wrk.thread:stop()
      end
      return reqs[next_once]
   end
   next_once = next_once + 1
   return reqs[next_once]
end

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_id", #threads)
   thread:set("threads", tonumber(bench.env("BENCH_THREADS")))
end

-- Globals every thread has; a scenario's init() may add more.
counts = {}
exhausted = false

function done(summary, latency, requests)
   local total = {}
   local exhausted_threads = 0
   for _, thread in ipairs(threads) do
      for key, n in pairs(thread:get("counts") or {}) do
         total[key] = (total[key] or 0) + n
      end
      if thread:get("exhausted") then
         exhausted_threads = exhausted_threads + 1
      end
   end

   local e = summary.errors
   local parts = {
      "BENCH",
      "requests=" .. summary.requests,
      "duration_us=" .. summary.duration,
      "p50_us=" .. latency:percentile(50),
      "p99_us=" .. latency:percentile(99),
      "errors=" .. (e.connect + e.read + e.write + e.timeout),
      "timeouts=" .. e.timeout,
      "status_errors=" .. e.status,
      "exhausted_threads=" .. exhausted_threads,
   }
   local keys = {}
   for key in pairs(total) do
      keys[#keys + 1] = key
   end
   table.sort(keys)
   for _, key in ipairs(keys) do
      parts[#parts + 1] = "count." .. key .. "=" .. total[key]
   end
   io.write(table.concat(parts, " "), "\n")
end

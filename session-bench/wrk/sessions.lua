-- wrk script for session-bench's external load mode.
--
--   wrk -t2 -c64 -d4s -s sessions.lua http://127.0.0.1:PORT -- PATH [COOKIE_FILE]
--
-- Sends GET PATH. With COOKIE_FILE (one `Cookie` header value per line, made beforehand by
-- session-bench) every request carries one of those cookies, round-robin; the threads start
-- at different offsets so that all sessions are used evenly. Without it, no request carries a
-- cookie (new visitors). Every request is formatted once, in `init`, so wrk's per-request cost
-- stays that of a static request.
--
-- wrk calls `request()` for every request only when the script defines it; without it wrk
-- would send one static request, the same cookie every time.

local threads = 0

function setup(thread)
   thread:set("offset", threads)
   threads = threads + 1
end

local requests = {}
local next_index = 1

function init(args)
   local path = args[1] or "/"
   local file = args[2]
   if file ~= nil and file ~= "" then
      for line in io.lines(file) do
         if #line > 0 then
            requests[#requests + 1] = wrk.format("GET", path, { ["Cookie"] = line })
         end
      end
   end
   if #requests == 0 then
      requests[1] = wrk.format("GET", path)
   end
   -- `offset` is set by `setup` in this thread's state; spread the threads over the cookies.
   local start = ((offset or 0) * 7919) % #requests
   next_index = start + 1
end

function request()
   local r = requests[next_index]
   next_index = next_index + 1
   if next_index > #requests then
      next_index = 1
   end
   return r
end

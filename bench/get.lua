-- wrk script for the GET scenarios: the URL given to wrk is requested as is;
-- common.lua counts the answers by status.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "common.lua")

-- The forkmon example: a slow start-up, then the file you edit.
local dir = arg[0]:match("(.*/)") or "./"
package.path = dir .. "?.lua;" .. package.path
print("startup")
require("foo")
print("finished")

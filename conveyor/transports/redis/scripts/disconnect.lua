-- ARGV: prefix, connection, now. Returns the queues left without consumers.
local idle = {}
disconnect(ARGV[2], ARGV[3], idle)
return idle

-- ARGV: prefix, connection, consumer tag, now. Returns the queues left without consumers.
local idle = {}
drop_consumer(ARGV[2], ARGV[3], ARGV[4], idle)
return idle

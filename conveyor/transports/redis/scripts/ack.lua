-- ARGV: prefix, connection, tags... Returns how many were acked.
return ack(ARGV[2], slice(3, #ARGV - 2))

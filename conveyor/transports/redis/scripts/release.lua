-- ARGV: prefix, connection, tags... Returns how many went back to ready.
return release(ARGV[2], slice(3, #ARGV - 2))

"""Where runs live: ezgraph's keys in Redis (with their Lua scripts) and the SQL database."""

"""The HTTP stack providers talk through: one client per provider (auth, retries in one place,
error mapping), OAuth, the network rules and the response limits."""

"""The sync engine: the database, the link store, keyed requests, the outbox and delivery."""

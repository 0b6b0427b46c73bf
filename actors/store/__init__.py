"""The store subtree: Redis and PostgreSQL owners, schema migrations, the history outbox."""

"""The database machinery the hot paths share: model rows to and from hand-written SQL, and the
PostgreSQL backend."""

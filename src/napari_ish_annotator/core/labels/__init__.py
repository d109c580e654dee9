"""The SQLite label store: schema allow-list, vetted connection, reading, the store, consensus."""

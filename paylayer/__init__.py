"""What every Paylayer service needs, once: settings, logs, the database, the gRPC kit, the CLI."""

"""assigncore: session queueing and automatic assignment engine."""

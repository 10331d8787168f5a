"""Fair use of a shared fleet: per-user limits, queue depth, queue timeouts, known pools, usage accounting."""

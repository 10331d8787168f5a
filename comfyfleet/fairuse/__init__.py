"""Fair use of a shared fleet: per-user limits, queue depth, queue timeouts, known pools, usage accounting."""


def text(value: object) -> str:
    """A Redis reply item as text (the clients here return bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)

"""The parts of :mod:`anysched.stores.postgres`: statements, connections, wake-ups."""

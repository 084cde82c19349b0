"""Adapters: bytes from the outside world -> Events."""

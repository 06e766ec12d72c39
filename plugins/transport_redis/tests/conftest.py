"""Fixtures of the Redis transport tests (helpers live in redis_helpers.py)."""

from redis_helpers import make_transport

__all__ = ["make_transport"]

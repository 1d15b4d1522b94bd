"""The embedded default backend: real Ray and Spark processes on this machine."""

from ephemeral.backends.local.backend import LocalBackend

__all__ = ["LocalBackend"]

"""Shared plumbing of the proctoring server: settings, Postgres, Redis, storage, embedded servers, the CLI."""

__version__ = "0.1.0"

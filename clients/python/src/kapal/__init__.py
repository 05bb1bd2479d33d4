"""Kapal's generated API client; see clients/README.md."""

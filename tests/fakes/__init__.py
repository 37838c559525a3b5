"""Loopback fake servers of the chat platforms, for the channel adapter tests."""

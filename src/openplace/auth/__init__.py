"""Signed user tokens."""

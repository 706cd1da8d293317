"""Placeholder: real server-process fixtures arrive with the middleware's end-to-end tests."""

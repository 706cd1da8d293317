"""Shared fixtures live in tests/_fixtures/, one module per kind of real part."""

pytest_plugins = [
    "tests._fixtures.postgres",
    "tests._fixtures.pgbouncer",
    "tests._fixtures.servers",
    "tests._fixtures.nginx",
]

"""Placeholder: the PostgreSQL fixture arrives with the SQLAlchemy integration."""

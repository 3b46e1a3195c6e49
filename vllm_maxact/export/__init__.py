"""Sinks for recorded statistics. Exporters read payloads; none of them touches a model."""

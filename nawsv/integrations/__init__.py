"""Bridges to other toolkits; each subpackage is imported only when used (never by the core)."""

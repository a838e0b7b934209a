"""Mirrors ``modules/api`` of A1111 1.10.1 (txt2img script-argument handling only)."""

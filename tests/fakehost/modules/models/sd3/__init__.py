"""Mirrors ``modules/models/sd3`` of A1111 1.10.1 (minimal: ``sd3_model``)."""

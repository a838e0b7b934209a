"""Mirrors the ``modules/models`` package of A1111 1.10.1 (only ``sd3.sd3_model``, minimal)."""

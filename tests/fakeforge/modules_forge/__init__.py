"""Fake ``modules_forge`` package: its presence is how extensions (memguard included) tell Forge from A1111."""

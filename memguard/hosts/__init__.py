"""Host seams: one module per WebUI (A1111, Forge). Nothing here imports the host at import time."""


def service_class() -> type:
    """The Memorization tab's and the API's service for the running WebUI: Forge's or A1111's model interface."""
    from .forge import is_forge

    if is_forge():
        from .forge.service import ForgeService

        return ForgeService
    from .a1111.service import A1111Service

    return A1111Service

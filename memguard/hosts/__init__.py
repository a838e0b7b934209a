"""Host seams: one module per WebUI (A1111, Forge). Nothing here imports the host at import time."""

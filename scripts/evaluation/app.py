"""The original entry point: ``cd scripts/evaluation && python app.py`` serves the API on HOST:PORT.

Everything lives in ``captioner.service``; this file only wires it (see docs/service.md for the endpoints and
settings). ``app`` is importable, but serve it with ``python app.py`` (or ``captioner serve``): a bare
``uvicorn app:app`` would run without the connection limits of captioner.service.server and would trust
X-Forwarded-For from 127.0.0.1.
"""

from __future__ import annotations

import model_loader  # noqa: F401  (puts <repo>/src on sys.path when the package is not installed)

from captioner.service.app import create_app, main

app = create_app()

if __name__ == "__main__":
    main()

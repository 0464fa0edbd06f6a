"""The original entry point: ``cd scripts/evaluation && python app.py`` serves the API on HOST:PORT.

Also importable as ``uvicorn app:app`` from this folder. Everything lives in ``captioner.service``; this file
only wires it (see docs/service.md for the endpoints and settings).
"""

from __future__ import annotations

import model_loader  # noqa: F401  (puts <repo>/src on sys.path when the package is not installed)

from captioner.service.app import create_app, main

app = create_app()

if __name__ == "__main__":
    main()

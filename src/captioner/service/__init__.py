"""The REST service: ``create_app()`` builds the FastAPI app; ``main()`` runs it with uvicorn."""

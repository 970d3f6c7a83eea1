"""OpenAI-compatible serving: the FastAPI app, its guards and media policy, and `tailorkit deploy`."""

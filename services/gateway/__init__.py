"""The HTTP edge: OpenAI-compatible endpoints, auth, SSE, error mapping, request orchestration."""

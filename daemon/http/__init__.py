"""The HTTP gateway: OpenAI's API and hyperlex's own routes on the daemon (docs/http.md).

`settings` (bind, keys, limits), `guard` (keys and limits in front of every route), `gateway`
(what the routes reach in the daemon), `app` (the FastAPI routes), `completions` and
`routes_memory` (work on the model), `schemas`, `metrics`, and `service` (Uvicorn on a thread).
"""

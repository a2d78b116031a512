"""Request handlers, one module per domain; daemon.api's table names each verb's handler.

A handler is `(server, request, msg) -> reply`: the request is already validated into its
daemon.api dataclass, and the reply is the verb's reply dataclass. A handler runs where the
table says: on the loop thread (it may use the job store, the scheduler and publish), or on a
worker thread (it must not touch loop state; it reads `server.profile` and hands changes to the
loop with `server.on_loop`). Handlers know the engine's public APIs; nothing of sockets.
"""

"""hyperlex engine: the library that turns text into scenes, tokens, adapters and answers.

The engine knows nothing of the daemon or the console: no ZeroMQ, no Textual. Front ends call it.
"""

__version__ = "0.1.0"

"""The sandbox signal feed: a socket.io server emitting a generated token-call stream.

`FeedServer` is the server with its fault-injection API, `serve` runs one until
cancelled, `FeedGenerator` is the seeded model behind the stream.
"""

from __future__ import annotations

from sandbox.feed.generator import FeedGenerator
from sandbox.feed.malformed import MALFORMED_KINDS
from sandbox.feed.server import CONTROL_PREFIX, FeedServer, serve

__all__ = ["CONTROL_PREFIX", "MALFORMED_KINDS", "FeedGenerator", "FeedServer", "serve"]

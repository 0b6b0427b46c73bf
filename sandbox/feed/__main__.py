"""``python -m sandbox.feed --rate 200 --port 8765``: run the sandbox feed alone."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from sandbox.feed.server import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.feed", description="Run the sandbox signal feed on loopback."
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--port", type=int, default=8765, help="port (0 picks a free one)")
    parser.add_argument("--rate", type=float, default=50.0, help="events per second")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the stream")
    parser.add_argument("--history", type=int, default=500_000, help="events kept for replay")
    parser.add_argument(
        "--price-ratio", type=float, default=4.0, help="price updates per token event"
    )
    args = parser.parse_args(argv)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(
                serve(
                    host=args.host,
                    port=args.port,
                    rate=args.rate,
                    seed=args.seed,
                    history=args.history,
                    price_ratio=args.price_ratio,
                )
            )
    except ValueError as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()

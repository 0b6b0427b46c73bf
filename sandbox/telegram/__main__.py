"""`python -m sandbox.telegram --port 8081`: run the emulator alone until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Sequence

from sandbox.telegram.server import TelegramEmulator, serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.telegram", description="Telegram Bot API emulator (loopback)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--token", default="123456:TEST-TOKEN", help="the bot token it accepts")
    parser.add_argument("--global-rate", type=float, default=30.0, help="messages per second")
    parser.add_argument("--private-interval", type=float, default=1.0, help="seconds per chat")
    parser.add_argument("--group-per-minute", type=int, default=20)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per call")
    parser.add_argument("--no-limits", action="store_true", help="do not enforce flood limits")
    return parser


def options_from(args: argparse.Namespace) -> dict[str, object]:
    return {
        "token": args.token,
        "global_rate": args.global_rate,
        "private_interval": args.private_interval,
        "group_per_minute": args.group_per_minute,
        "latency": args.latency,
        "enforce_limits": not args.no_limits,
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, on_ready=announce, **options_from(args)))


def announce(emulator: TelegramEmulator) -> None:
    print(f"Telegram emulator: web chat {emulator.web_url}", flush=True)
    print(f"  python-telegram-bot base_url={emulator.base_url}", flush=True)
    print(f"  base_file_url={emulator.base_file_url}", flush=True)


if __name__ == "__main__":
    main()

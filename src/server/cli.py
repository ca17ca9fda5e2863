"""`assigncore serve [--config FILE] [--listen HOST:PORT]`"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys

from .app import create_server
from .config import ConfigError, Settings, load

log = logging.getLogger("assigncore.server")


async def serve(settings: Settings, show_demo_tokens: bool) -> None:
    server, port = await create_server(settings)
    gc.freeze()  # the directory is long-lived: keep it out of every collection
    await server.start()
    host = settings.listen.rsplit(":", 1)[0]
    log.info("assigncore listening on %s:%d", host, port)
    rt = server.runtime
    if rt.generated_admin_token:
        log.info(
            "admin token (generated for this run; set ASSIGNCORE_ADMIN_TOKEN or "
            "[server] admin_token to choose one): %s",
            rt.generated_admin_token,
        )
    if show_demo_tokens:
        for tok in settings.desk.get("tokens", []):
            who = f"rep {tok['rep']}" if tok.get("rep") else tok["kind"]
            log.info("demo token for %s: %s", who, tok["secret"])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining (grace %.0f s)", settings.shutdown_grace)
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="assigncore", description="assigncore server")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="run the gRPC server")
    run.add_argument("--config", help="desk and server TOML (default: embedded demo desk)")
    run.add_argument("--listen", help="HOST:PORT to listen on (overrides the config)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = load(args.config)
    except ConfigError as exc:
        print(f"assigncore: {exc}", file=sys.stderr)
        return 2
    if args.listen:
        settings.listen = args.listen
    try:
        asyncio.run(serve(settings, show_demo_tokens=args.config is None))
    except ConfigError as exc:
        print(f"assigncore: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"assigncore: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

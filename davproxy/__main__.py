"""Command line: ``davproxy serve | check-config | demo | admin``, ``davproxy --version``.

Errors an operator can fix (bad configuration, a port in use, a store that cannot be
opened) end in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from davproxy import __version__
from davproxy import config as config_mod
from davproxy.edge import logs
from davproxy.edge.server import StartupError, run, run_until_signal
from davproxy.ops.admin import add_parser as add_admin_parser

EXIT_CONFIG = 2
EXIT_RUNTIME = 1


def _load(path: str) -> config_mod.Config:
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as exc:
        raise StartupError(f"configuration error: {exc}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    logs.setup(config.logging)
    if config.server.workers > 1:
        from davproxy.edge import workers  # forks: nothing of an event loop exists yet

        return workers.serve(config)
    run(run_until_signal(config))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    print(json.dumps(config_mod.describe(config), indent=2))
    print("configuration OK", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from davproxy.ops.demo import run_demo

    return run_demo(args.data, args.port, args.host)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="davproxy",
        description="Sharing, notifications and subscriptions in front of a CalDAV/CardDAV server.",
    )
    parser.add_argument("--version", action="version", version=f"davproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", "-c", required=True, help="main TOML file")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate and print the effective configuration")
    check.add_argument("--config", "-c", required=True, help="main TOML file")
    check.set_defaults(func=cmd_check_config)

    demo = sub.add_parser("demo", help="start a bundled Radicale with demo users behind davproxy")
    demo.add_argument("--data", default="demo-data", help="folder for all demo data (kept)")
    demo.add_argument("--port", type=int, default=8080, help="davproxy port (default 8080)")
    demo.add_argument("--host", default="127.0.0.1", help="davproxy address (default 127.0.0.1)")
    demo.set_defaults(func=cmd_demo)

    add_admin_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except StartupError as exc:
        print(f"davproxy: {exc}", file=sys.stderr)
        return EXIT_CONFIG if str(exc).startswith("configuration error") else EXIT_RUNTIME
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

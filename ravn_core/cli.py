"""The ``ravn`` command line.

    ravn --config FILE [--duration S]        run the daemon in the foreground (sources, analysis, sinks)
    ravn agent --config FILE                 fleet agent: sources -> transport (e.g. Redis)
    ravn analyze --config FILE               fleet worker: transport -> analyzers -> sinks
    ravn record --config FILE --duration S --output events.jsonl
    ravn replay events.jsonl --config FILE   analyzers and sinks over recorded events; no root, no kernel
    ravn status [--json]                     threat level, score, last alerts and health of a running daemon
    ravn plugins list [--json]               installed plugins, their distributions, hooks and blocked state
    ravn config check FILE                   validate a config and what its analyzers load (rules, model), no kernel

Exit codes: 0 ok; 1 failure at run time; 2 bad config (or a plugin that cannot load); 3 unusable environment
(not root / no CAP_BPF, no tracefs, no kernel headers, no BPF). Errors are one line; --debug shows tracebacks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Any

from ravn_core import __version__
from ravn_core.bpf.env import check_environment
from ravn_core.config import RavnConfig, load_yaml, validate
from ravn_core.errors import EXIT_CONFIG, EXIT_ENVIRONMENT, EXIT_FAILURE, EXIT_OK, ConfigError, RavnError
from ravn_core.events import printable
from ravn_core.plugins import PluginHost, autoload_disabled, named_plugins
from ravn_core.status import DEFAULT_STATE_DIR, StatusReader
from ravn_core.threat import incident_line

log = logging.getLogger("ravn")

EPILOG = """exit codes: 0 ok, 1 failure at run time, 2 bad config or plugin that cannot load,
3 unusable environment (not root / no CAP_BPF, no tracefs, no kernel headers).
environment: RAVN_DISABLED_PLUGINS=a,b blocks plugins; RAVN_DISABLE_PLUGIN_AUTOLOAD=1 loads only the entry points
the config or RAVN_PLUGINS names; RAVN_PLUGINS=a,b loads only those entry points; plugins whose files are not
root's (or are writable by others) are never imported; RAVN_TRACE_PLUGINS=1 logs every hook call."""

# ---------------------------------------------------------------------------------------------- parser
def build_parser(host: PluginHost | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ravn", description="RAVN runtime security monitor", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ravn {__version__}")
    parser.add_argument("--debug", action="store_true", help="debug logging and tracebacks on errors")
    _run_options(parser, required=False)
    parser.add_argument("--dump-bpf", action="store_true", help="print the BPF programs the sources would load")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    for role, help_ in (("agent", "fleet agent: sources -> transport"),
                        ("analyze", "fleet worker: transport -> analyzers -> sinks")):
        p = sub.add_parser(role, help=help_, epilog=EPILOG)
        _run_options(p, required=True)
        p.set_defaults(func=cmd_run, role=role)

    p = sub.add_parser("record", help="write the events the sources produce as JSON lines", epilog=EPILOG)
    _run_options(p, required=True)
    p.add_argument("--output", "-o", required=True, help="events file (JSON lines)")
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("replay", help="feed recorded events through the analyzers and sinks", epilog=EPILOG)
    p.add_argument("events", help="events file written by `ravn record`")
    p.add_argument("--config", "-c", required=True, help="config file (its analyzers and sinks are used)")
    p.add_argument("--batch-size", type=int, default=1024, help="events per batch")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("status", help="state of a running daemon")
    p.add_argument("--json", action="store_true", help="print the raw status as JSON")
    p.add_argument("--config", "-c", help="config file (for ravn.state_dir)")
    p.add_argument("--state-dir", help="state directory (default: /run/ravn or the config's)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("plugins", help="plugin commands")
    psub = p.add_subparsers(dest="plugins_command", required=True)
    pl = psub.add_parser("list", help="installed plugins")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=cmd_plugins_list)

    p = sub.add_parser("config", help="config commands")
    csub = p.add_subparsers(dest="config_command", required=True)
    cc = csub.add_parser("check", help="validate a config file and what its analyzers load (rule files, a model), "
                                       "without touching the kernel")
    cc.add_argument("file")
    cc.set_defaults(func=cmd_config_check)

    if host is not None:
        host.add_commands(sub)
    parser.set_defaults(func=cmd_run, role="all")
    return parser


def _run_options(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--config", "-c", required=required, help="config file (see config/ravn.example.yaml)")
    p.add_argument("--duration", type=float, help="stop cleanly after this many seconds")


# ---------------------------------------------------------------------------------------------- helpers
def setup_logging(level: str, debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True,
    )


def load_host(config_path: str | None = None) -> PluginHost:
    """Builtins and entry points; with RAVN_DISABLE_PLUGIN_AUTOLOAD=1 only the entry points named by the config's
    ``plugin:`` keys or by RAVN_PLUGINS (the config is read first, with the same checks as ``config check``)."""
    host = PluginHost()
    only: set[str] = set()
    if autoload_disabled() and config_path:
        only = named_plugins(load_yaml(config_path)[0])
    host.load(only=only)
    host.register_components()
    return host


def config_arg(argv: list[str]) -> str | None:
    """The config file of a command line (``--config``/``-c``, or ``config check FILE``), before the full parser
    exists (plugins add commands)."""
    words = [a for a in argv if not a.startswith("-")]
    if words[:2] == ["config", "check"] and len(words) > 2:
        return words[2]
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", "-c")
    try:
        known, _ = pre.parse_known_args(argv)
    except SystemExit:  # e.g. ``-c`` without a value: the full parser reports it
        return None
    return known.config if isinstance(known.config, str) else None


def load_config(path: str, host: PluginHost) -> RavnConfig:
    data, lines = load_yaml(path)
    host.check_named_plugins(data)
    return validate(data, host.registries(), path, lines)


# ---------------------------------------------------------------------------------------------- commands
def cmd_run(args: argparse.Namespace, host: PluginHost) -> int:
    from ravn_core.runtime import Runtime

    if not args.config:
        raise RavnError("no config: pass --config FILE (the default is config/ravn.yaml; `make run` uses it)")
    config = load_config(args.config, host)
    setup_logging(config.core.log_level, args.debug)
    if getattr(args, "dump_bpf", False):
        return dump_bpf(config)
    role = args.role
    if role in ("all", "agent") and config.sources:
        check_environment()
    runtime = Runtime(config, host, role=role, settle_heap=True)  # a process of its own: tune its collector
    stats = runtime.run(duration=args.duration)
    _report(stats)
    return int(stats.get("exit_code", EXIT_OK))


def dump_bpf(config: RavnConfig) -> int:
    from ravn_core.components import RuntimeContext

    for spec in config.sources:
        ctx = RuntimeContext(config.core.hostname(), os.getpid(), config.core.state_dir, logging.getLogger("ravn"))
        source = spec.registration.factory(spec.name, spec.config, ctx)
        dump = getattr(source, "dump", None)
        print(f"// ===== source {spec.name} ({spec.plugin})")
        print(dump() if callable(dump) else "// (not a BPF source)")
    return EXIT_OK


def cmd_record(args: argparse.Namespace, host: PluginHost) -> int:
    from ravn_core.config import with_transport
    from ravn_core.runtime import Runtime

    config = load_config(args.config, host)
    setup_logging(config.core.log_level, args.debug)
    if config.sources:
        check_environment()
    config = with_transport(config, host.registries(), "record", {"path": args.output})
    runtime = Runtime(config, host, role="record")
    stats = runtime.run(duration=args.duration)
    events = stats["transport"].get("recorded_events", 0)
    print(f"recorded {events:.0f} events to {args.output}", file=sys.stderr)
    _report(stats)
    return EXIT_OK


def cmd_replay(args: argparse.Namespace, host: PluginHost) -> int:
    from ravn_core.config import with_transport
    from ravn_core.runtime import Runtime

    config = load_config(args.config, host)
    setup_logging(config.core.log_level, args.debug)
    if not os.path.exists(args.events):
        raise RavnError(f"{args.events}: no such events file (write one with `ravn record`)")
    config = with_transport(config, host.registries(), "replay", {"path": args.events, "batch_size": args.batch_size})
    runtime = Runtime(config, host, role="replay")
    stats = runtime.run()
    events, bad = stats["transport"].get("replayed_events", 0), stats["transport"].get("bad_lines", 0)
    print(f"replayed {events:.0f} events from {args.events}"
          f"{f', {bad:.0f} bad lines skipped' if bad else ''}; "
          f"{stats['alerts_emitted']} alerts", file=sys.stderr)
    return EXIT_OK


def _report(stats: dict[str, Any]) -> None:
    kernel = sum(s.get("kernel_drops", 0) for s in stats.get("sources", {}).values())
    log.info("stopped (%s): accepted %d events, dropped %d, lost in the kernel (ring full) %d, analyzed %d, "
             "%d alerts", stats.get("reason"), stats["accepted"], stats["dropped"], kernel, stats["analyzed"],
             stats["alerts_emitted"])


def state_dir_of(args: argparse.Namespace, host: PluginHost | None) -> str:
    """--state-dir, else the config's ravn.state_dir, else /run/ravn (``ravn status``, ``ravn top``)."""
    if getattr(args, "state_dir", None):
        return str(args.state_dir)
    if getattr(args, "config", None):
        return load_config(args.config, host or load_host()).core.state_dir
    return DEFAULT_STATE_DIR


def cmd_status(args: argparse.Namespace, host: PluginHost) -> int:
    status = StatusReader(state_dir_of(args, host)).read()
    if args.json:
        print(json.dumps(status, indent=2, default=str))
        return EXIT_OK if status["running"] else EXIT_FAILURE
    print(f"RAVN on {_plain(status['host'])} (pid {status['pid']}, role {status['role']}): "
          f"{'running' if status['running'] else 'NOT RUNNING (last status shown)'}")
    print(f"threat level: {status['level']}  score: {status['score']}  (the worst open incident)")
    incidents = status.get("incidents") or []
    print(f"open incidents: {len(incidents)}" + (" (worst first)" if incidents else ""))
    for inc in incidents[:10]:
        print(f"  {_plain(incident_line(inc))}")
    print(f"health: {status['health']}" + (f" ({', '.join(status['degraded'])})" if status["degraded"] else ""))
    for name, comp in sorted(status["components"].items()):
        extra = f" - {_plain(comp['detail'])}" if comp["detail"] else ""
        print(f"  {name:<32} {comp['state']:<9} restarts={comp['restarts']}{extra}")
    st = status["stats"]
    print(f"events: accepted {st['accepted']} dropped {st['dropped']} analyzed {st['analyzed']} "
          f"alerts {st['alerts_emitted']}")
    for a in status["recent_alerts"][-5:]:
        print(f"  {a['level']:<6} {a['score']:>3} {_plain(a['rule'])} pid={a['pid']} comm={_plain(a['comm'])} "
              f"incident={_plain(a.get('incident') or '-')}: {_plain(a['description'])}")
    return EXIT_OK if status["running"] else EXIT_FAILURE


def _plain(value: Any) -> str:
    """One line of text: control characters (a newline in a path or comm) shown escaped, never acted on."""
    return printable(str(value))


def cmd_plugins_list(args: argparse.Namespace, host: PluginHost) -> int:
    infos = host.plugin_infos()
    components: dict[str, list[str]] = {}
    for registry in host.registries().values():
        for reg in registry:
            components.setdefault(reg.plugin, []).append(f"{registry.kind}:{reg.name}")
    failed = host.failed_plugins()
    if args.json:
        out = [{"name": i.name, "distribution": i.distribution, "version": i.version, "hooks": i.hooks,
                "blocked": i.blocked, "components": components.get(i.name, [])} for i in infos]
        out += [{"name": n, "error": why} for n, why in failed.items()]
        print(json.dumps(out, indent=2))
        return EXIT_OK
    for i in infos:
        state = "blocked" if i.blocked else ", ".join(components.get(i.name, [])) or "-"
        print(f"{i.name:<40} {i.distribution} {i.version:<10} {state}")
    for n, why in failed.items():
        print(f"{n:<40} FAILED TO LOAD: {why}")
    return EXIT_OK


def cmd_config_check(args: argparse.Namespace, host: PluginHost) -> int:
    config = load_config(args.file, host)
    built = check_analyzers(config)
    names = [f"{s.kind}:{s.name}" for s in config.components()]
    print(f"{args.file}: ok ({len(names)} components: {', '.join(names)}; analyzers built: "
          f"{', '.join(built) or 'none'})")
    return EXIT_OK


def check_analyzers(config: RavnConfig) -> list[str]:
    """Build each analyzer as the daemon would, then close it: what an analyzer loads (rule files, a model)
    is checked too. Analyzers touch neither the kernel nor the network; sources, transports and sinks are
    not built here. An analyzer that does not enable here (DidNotEnable: a missing optional dependency) is left
    out, as the daemon leaves it out. Raises the analyzer's own error (a ConfigError names file and line)."""
    from ravn_core.errors import DidNotEnable
    from ravn_core.runtime.daemon import runtime_context

    base = runtime_context(config)
    built: list[str] = []
    for spec in config.analyzers:
        ctx = dataclasses.replace(base, logger=logging.getLogger(f"ravn.{spec.kind}.{spec.name}"))
        try:
            component = spec.registration.factory(spec.name, spec.config, ctx)
        except DidNotEnable as exc:
            print(f"{config.path}: note: analyzer {spec.name!r} would not enable: {exc}", file=sys.stderr)
            continue
        except RavnError:
            raise
        except Exception as exc:
            raise ConfigError(f"{config.path}: analyzer {spec.name!r} ({spec.registration.distribution}) cannot "
                              f"be built: {type(exc).__name__}: {exc}") from exc
        component.close()
        built.append(spec.name)
    return built


# ---------------------------------------------------------------------------------------------- main
def entry() -> None:
    """Console script ``ravn``: run ``main`` and exit without interpreter finalization.

    Once a daemon role has stopped, everything is detached, flushed and closed; tearing down the interpreter
    after that only risks native libraries (BCC's LLVM, onnxruntime) crashing in their destructors while a daemon
    thread still exists, which would turn a clean stop into a signal exit. So the exit code is final here.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        host = load_host(config_arg(argv))
        parser = build_parser(host)
        args = parser.parse_args(argv)
        code: int = args.func(args, host)
        return code
    except RavnError as exc:
        if debug:
            log.exception("error")
        print(f"ravn: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except Exception as exc:
        if debug:
            raise
        print(f"ravn: error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    entry()

__all__ = ["EXIT_CONFIG", "EXIT_ENVIRONMENT", "main"]

"""``ravn rules check`` and ``ravn rules list``: check rule files and show the loaded rules without a daemon.
Handlers are called as ``handler(args, host)`` by ravn_core.cli (the host is not needed here).

    ravn rules check local.yaml [more.yaml ...] [--no-default]   # exit 0, or 2 with "file:line: rule 'x': ..."
    ravn rules list [--config ravn.yaml] [--json]                 # the rules the config's analyzer_rules loads
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ravn_core.errors import EXIT_CONFIG, EXIT_OK, ConfigError


def add_rules_command(subparsers: Any) -> None:
    p = subparsers.add_parser("rules", help="check and list analyzer_rules rules")
    sub = p.add_subparsers(dest="rules_command", metavar="SUBCOMMAND", required=True)
    c = sub.add_parser("check", help="load and check rule files (with the default ruleset's lists and macros)")
    c.add_argument("files", nargs="+", help="rule files or directories")
    c.add_argument("--no-default", action="store_true", help="check the files alone, without the default ruleset")
    c.set_defaults(func=_check)
    ls = sub.add_parser("list", help="list the rules analyzer_rules would run")
    ls.add_argument("--config", "-c", help="config file whose analyzer_rules section is used (default: defaults)")
    ls.add_argument("--json", action="store_true", help="one JSON object per rule")
    ls.set_defaults(func=_list)


def _check(args: argparse.Namespace, host: Any = None) -> int:
    from ravn_analyzers.rules.loader import load_rules, rule_files

    try:
        given = {str(p) for p in rule_files(args.files, [])}
        paths = rule_files([*([] if args.no_default else ["default"]), *args.files], [])
        ruleset = load_rules(list(paths))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    mine = [r for r in ruleset.rules if r.source.rsplit(":", 1)[0] in given]
    print(f"ok: {len(mine)} rules in {', '.join(args.files)}; {len(ruleset.rules)} loaded in all")
    return EXIT_OK


def _list(args: argparse.Namespace, host: Any = None) -> int:
    from ravn_analyzers.rules.engine import RulesConfig
    from ravn_analyzers.rules.loader import load_rules, rule_files

    cfg = RulesConfig()
    base = Path.cwd()
    try:
        if args.config:
            cfg, base = _config_section(args.config)

        def resolve(p: str) -> str:
            return p if p == "default" or Path(p).is_absolute() else str(base / p)

        ruleset = load_rules(
            list(rule_files([resolve(p) for p in cfg.rule_files], [resolve(d) for d in cfg.rule_dirs])),
            disabled=set(cfg.disabled_rules), score_overrides=cfg.score_overrides, list_overrides=dict(cfg.lists),
            append_lists=dict(cfg.append_lists), macro_overrides=cfg.macros, extra_exceptions=cfg.exceptions)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    for r in ruleset.rules:
        level = "HIGH" if r.score > 80 else "MEDIUM" if r.score > 50 else "LOW"
        if args.json:
            print(json.dumps({**r.summary(), "level": level, "events": list(r.events)}))
        else:
            print(f"{r.name:40} {r.score:>3} {level:6} {r.kind:9} {','.join(r.tags):28} {','.join(r.events)}")
    return EXIT_OK


def _config_section(path: str) -> tuple[Any, Path]:
    from pydantic import ValidationError

    from ravn_analyzers.rules.engine import RulesConfig
    from ravn_core.config import load_yaml

    data, _ = load_yaml(path)
    for i, section in enumerate(data.get("analyzers") or []):
        if isinstance(section, dict) and section.get("plugin") == "analyzer_rules":
            options = {k: v for k, v in section.items() if k not in ("plugin", "name", "enabled")}
            try:
                return RulesConfig.model_validate(options), Path(path).resolve().parent
            except ValidationError as exc:
                raise ConfigError(f"{path}: analyzers[{i}] (analyzer_rules): {exc.errors()[0]['msg']}") from None
    return RulesConfig(), Path(path).resolve().parent

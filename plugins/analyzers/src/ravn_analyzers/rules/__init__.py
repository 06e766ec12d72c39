"""analyzer_rules: the YAML rule engine (engine.py), its condition language (lang.py), rule files (loader.py)
and the default ruleset (default/*.yaml). docs/PLUGINS.md walks through it as the reference plugin."""

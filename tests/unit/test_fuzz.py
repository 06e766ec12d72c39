"""Bad input, fuzzed with hypothesis: no crash, and every rejection is a clear error that says where.

Targets: the config loader (parse_yaml + validate against every installed plugin's model), the rule loader
(ravn_analyzers.rules.loader.load_rules), the probes' record decoders (random record contents of the right size
must decode into an event with well-typed common fields), the replay line reader (ravn_core.builtin.record) and the
Redis transport's batch decoders (ravn_transport_redis.codec). Each test prints how many inputs it tried
(``pytest -s``); docs/OPERATIONS.md records the figures. Kept fast for CI: max_examples 200-300, no deadline.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ravn_core.errors import ConfigError, DecodeError
from ravn_core.events import validate_event
from ravn_core.testing import require

EXAMPLES = 300
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
tried: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report() -> Any:
    yield
    for name, n in sorted(tried.items()):
        print(f"fuzz: {name}: {n} inputs")


# ---------------------------------------------------------------------------------------------- YAML-ish inputs
KEYS = ["ravn", "sources", "transport", "analyzers", "sinks", "health_probes", "plugin", "name", "enabled",
        "state_dir", "queue_batches", "memory_limit_mb", "http_listen", "threat", "medium", "high", "path",
        "min_level", "url", "address", "rule_files", "filters", "exclude_pids", "ring_buffer_kb", "$env", "$file"]
PLUGINS = ["ebpf_syscall", "ebpf_network", "ebpf_security", "ebpf_file", "embedded", "redis", "analyzer_rules",
           "stdout", "jsonl", "webhook", "syslog", "falco", "process", "nope"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True),
                    st.sampled_from(PLUGINS), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)), max_leaves=8)
config_docs = st.dictionaries(st.sampled_from(KEYS[:6]), values, max_size=6)
sections = st.fixed_dictionaries({"plugin": st.sampled_from(PLUGINS)},
                                 optional={k: values for k in KEYS[7:20]})
structured = st.fixed_dictionaries({}, optional={
    "ravn": st.dictionaries(st.sampled_from(KEYS[9:14]), scalars, max_size=4),
    "sources": st.lists(sections, max_size=3), "transport": sections,
    "analyzers": st.lists(sections, max_size=2), "sinks": st.lists(sections, max_size=3)})
yaml_noise = st.text(alphabet=string.printable + "\t:-[]{}&*!|>'\"%@`#", max_size=200)

LOCATION = re.compile(r"^<fuzz>(:\d+)?: ")


@pytest.fixture(scope="module")
def registries() -> Any:
    from ravn_core.cli import load_host

    return load_host().registries()


def _check_config(text: str, registries: Any) -> None:
    from ravn_core.config import parse_yaml, validate

    tried["config loader"] += 1
    try:
        data, lines = parse_yaml(text, "<fuzz>")
        validate(data, registries, "<fuzz>", lines)
    except ConfigError as exc:
        msg = str(exc)
        assert LOCATION.match(msg), msg  # file (and line when there is one) first
        assert "\n" not in msg.strip() or "malformed YAML" in msg, msg


@settings(SETTINGS, max_examples=200)  # parse_yaml costs ~30 ms per document of this size
@given(doc=st.one_of(config_docs, structured))
def test_config_loader_structured(doc: dict[str, Any], registries: Any) -> None:
    _check_config(yaml.safe_dump(doc, allow_unicode=True), registries)


@SETTINGS
@given(text=yaml_noise)
def test_config_loader_text(text: str, registries: Any) -> None:
    _check_config(text, registries)


# ---------------------------------------------------------------------------------------------- rule loader
RULE_KEYS = ["rule", "description", "score", "tags", "events", "condition", "sequence", "window", "steps", "join",
             "list", "items", "macro", "append", "enabled", "threshold", "count", "by", "exceptions", "details"]
CONDITION_WORDS = ["evt.type", "=", "exec", "and", "or", "not", "(", ")", "proc.comm", "in", "contains", "sh",
                   "startswith", "/tmp", "spawned", "shell_exec", "exec.argv", "intersects", "1", "-115", ">", "<",
                   "file.path", "pmatch", "glob", "exists", ",", "net.dport", "'x'", '"y"', "proc.pid"]
conditions = st.lists(st.sampled_from(CONDITION_WORDS), max_size=10).map(" ".join)
rule_values = st.one_of(scalars, conditions, st.lists(st.one_of(st.sampled_from(["exec", "open", "connect"]),
                                                                 scalars), max_size=3))
rule_items = st.dictionaries(st.sampled_from(RULE_KEYS), st.recursive(
    rule_values, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                         st.dictionaries(st.sampled_from(RULE_KEYS), inner, max_size=3)),
    max_leaves=8), max_size=7)
plausible_rule = st.fixed_dictionaries({
    "rule": st.text(string.ascii_lowercase + "_", min_size=1, max_size=10), "description": st.text(max_size=20),
    "score": st.integers(-10, 200), "events": st.lists(st.sampled_from(["exec", "open", "connect", "bogus"]),
                                                       min_size=1, max_size=2),
    "condition": conditions})


def _check_rules(text: str) -> None:
    from ravn_analyzers.rules.loader import load_rules

    tried["rule loader"] += 1
    try:
        load_rules([], texts=[("fuzz.yaml", text)])
    except ConfigError as exc:
        msg = str(exc)
        assert msg.startswith("fuzz.yaml") or re.match(r"^(macro|rule|list) '", msg), msg


@SETTINGS
@given(items=st.lists(st.one_of(rule_items, plausible_rule), max_size=4))
def test_rule_loader_structured(items: list[dict[str, Any]]) -> None:
    _check_rules(yaml.safe_dump(items, allow_unicode=True))


@SETTINGS
@given(text=yaml_noise)
def test_rule_loader_text(text: str) -> None:
    _check_rules(text)


# ---------------------------------------------------------------------------------------------- probe decoders
def _probe_decoders() -> list[tuple[str, int, Any, int]]:
    """(probe, type id, decoder, record size) of every installed BCC probe, found without touching the kernel."""
    from ravn_core.bpf.abi import HDR_TYPE_OFFSET
    from ravn_core.bpf.probe import BccProbe
    from ravn_core.cli import load_host
    from ravn_core.testing import make_context

    out = []
    for reg in load_host().registries()["sources"]:
        try:
            probe = reg.factory(reg.name, reg.config_model(), make_context(reg.name))
        except Exception:
            continue
        if not isinstance(probe, BccProbe):
            continue
        for type_id, decode in probe.decoders().items():
            for size in range(HDR_TYPE_OFFSET + 4, 16384, 4):  # the smallest record this decoder accepts
                rec = bytearray(size)
                rec[HDR_TYPE_OFFSET] = type_id
                try:
                    decode(bytes(rec))
                except Exception:
                    continue
                out.append((reg.name, type_id, decode, size))
                break
    return out


DECODERS = _probe_decoders()
COMMON = {"evt.type": str, "evt.ts": int, "proc.pid": int, "proc.tid": int, "proc.ppid": int, "proc.uid": int,
          "proc.gid": int, "proc.comm": str}


@SETTINGS
@given(data=st.data())
def test_probe_decoders_take_any_record_contents(data: st.DataObject) -> None:
    """Whatever the kernel writes into a record of the right size (garbage strings, huge counts, bad
    addresses) decodes into an event whose common fields have their schema types."""
    require(bool(DECODERS), "no BCC probe plugin is installed")
    from ravn_core.bpf.abi import HDR_TYPE_OFFSET

    probe, type_id, decode, size = data.draw(st.sampled_from(DECODERS))
    raw = bytearray(data.draw(st.binary(min_size=size, max_size=size)))
    raw[HDR_TYPE_OFFSET:HDR_TYPE_OFFSET + 4] = type_id.to_bytes(4, "little")
    tried["probe decoders"] += 1
    ev = decode(bytes(raw))
    assert isinstance(ev, dict)
    if not ev:  # a decoder may drop a record: the file probe's DROP marker ({}) for paths its filters exclude
        return
    for key, typ in COMMON.items():
        assert isinstance(ev.get(key), typ), (probe, type_id, key, ev.get(key))


# ---------------------------------------------------------------------------------------------- replay reader
event_lines = st.one_of(
    st.text(max_size=80),
    st.builds(json.dumps, values),
    st.builds(lambda d: json.dumps({"evt.type": "exec", **d}), st.dictionaries(st.text(max_size=8), scalars,
                                                                               max_size=4)))


@SETTINGS
@given(lines=st.lists(event_lines, max_size=20))
def test_replay_reader_skips_bad_lines_and_keeps_good_ones(lines: list[str], tmp_path_factory: Any) -> None:
    from ravn_core.builtin.record import ReplayConfig, ReplayTransport
    from ravn_core.testing import make_context

    tried["replay reader"] += 1
    path = Path(tmp_path_factory.mktemp("replay")) / "events.jsonl"
    text = "\n".join(line.replace("\n", " ").replace("\r", " ") for line in lines)
    path.write_text(text, encoding="utf-8")
    t = ReplayTransport("replay", ReplayConfig(path=str(path), batch_size=7), make_context("replay", host="fuzzhost"))
    got = []
    try:
        while (d := t.consume(0)) is not None:
            got.extend(d.batch)
    finally:
        t.close()
    good = []
    for line in text.split("\n"):  # as the file iterates: only \n ends a line (\r was replaced above)
        line = line.strip()
        if not line:
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if validate_event(ev) is None:  # the replay boundary checks the event schema
            good.append(ev)
    assert got == good
    assert t.bad_lines == sum(1 for ln in text.split("\n") if ln.strip()) - len(good)


# ---------------------------------------------------------------------------------------------- transport decoder
def _codec() -> Any:
    try:
        from ravn_transport_redis import codec
    except ImportError:
        return None
    return codec


CODEC = _codec()


@SETTINGS
@given(data=st.data())
def test_transport_decoders_raise_only_decode_error(data: st.DataObject) -> None:
    require(CODEC is not None, "ravn-transport-redis is not installed")
    codec = CODEC
    batch = [{"evt.type": "exec", "proc.pid": 1}, {"evt.type": "open", "file.path": "/x"}]
    good_fields = codec.stream_fields("h", "b1", batch, 1)
    good_list = codec.list_element("h", "b1", batch, 1)
    kind = data.draw(st.sampled_from(["stream-mutated", "stream-random", "list-mutated", "list-random"]))
    tried["transport decoders"] += 1
    try:
        if kind.startswith("stream"):
            if kind == "stream-mutated":
                fields = dict(good_fields)
                for key in data.draw(st.lists(st.sampled_from(sorted(fields)), max_size=3, unique=True)):
                    if data.draw(st.booleans()):
                        del fields[key]
                    else:
                        blob = bytearray(fields[key])
                        if blob:
                            i = data.draw(st.integers(0, len(blob) - 1))
                            blob[i] = data.draw(st.integers(0, 255))
                        fields[key] = bytes(blob) + data.draw(st.binary(max_size=4))
            else:
                fields = data.draw(st.dictionaries(st.sampled_from([b"v", b"s", b"h", b"b", b"n", b"t", b"d", b"x"]),
                                                   st.binary(max_size=40), max_size=8))
            codec.decode_stream(fields)
        else:
            if kind == "list-mutated":
                raw = bytearray(good_list)
                for _ in range(data.draw(st.integers(1, 4))):
                    i = data.draw(st.integers(0, len(raw) - 1))
                    raw[i] = data.draw(st.integers(0, 255))
                raw = raw[: data.draw(st.integers(0, len(raw)))]
                payload = bytes(raw)
            else:
                payload = data.draw(st.one_of(st.binary(max_size=100), st.builds(
                    lambda v: json.dumps(v).encode(), values)))
            codec.decode_list(payload)
    except DecodeError as exc:
        assert str(exc), "a DecodeError must say what is wrong"

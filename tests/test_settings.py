"""One configuration tree: the server's settings with the streaming core's nested, from flags,
CAPTIONER_* variables and a TOML file, validated once and listed by `captioner serve --help`."""

from __future__ import annotations

import pytest

from captioner.server.settings import load_settings, setting_docs
from captioner.stream.config import StreamConfig, parse_overrides
from captioner.tools.cli import build_parser


def test_stream_settings_come_from_flags_the_environment_and_the_file(tmp_path):
    config = tmp_path / "captioner.toml"
    config.write_text('strategy = "cached"\nfinal_beam = 3\nmax_sessions = 4\nsilence_s = 0.7\n')
    environ = {"CAPTIONER_FINAL_BEAM": "2", "CAPTIONER_SHED_AFTER_S": "1.5", "CAPTIONER_CACHE_CONTEXT": "off"}
    settings = load_settings({"silence_s": "0.9", "port": "0"}, str(config), environ)
    assert settings.max_sessions == 4 and settings.port == 0
    stream = settings.stream
    assert stream.strategy == "cached"  # the file
    assert stream.final_beam == 2 and stream.shed_after_s == 1.5 and stream.cache_context is False  # environment
    assert stream.silence_s == 0.9  # flag over file
    assert load_settings(environ={}).stream == StreamConfig()


@pytest.mark.parametrize(("overrides", "message"), [
    ({"strategy": "fast"}, "strategy"),
    ({"final_beam": "0"}, "final_beam"),
    ({"silence_s": "soon"}, "wrong type"),
    ({"max_sessions": "0"}, "max_sessions"),
    ({"shed_after_s": "-1"}, "shed_after_s"),
])
def test_bad_values_are_refused_with_their_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_settings(overrides, environ={})


def test_unknown_keys_in_the_file_are_refused(tmp_path):
    config = tmp_path / "captioner.toml"
    config.write_text("max_sesions = 4\n")
    with pytest.raises(ValueError, match="max_sesions"):
        load_settings(config_file=str(config), environ={})


def test_every_setting_is_a_documented_serve_flag_with_its_default():
    docs = setting_docs()
    names = [doc.name for doc in docs]
    assert len(names) == len(set(names)), "a server setting and a stream setting share a name"
    assert {"strategy", "final_beam", "shed_after_s", "max_batch", "max_sessions"} <= set(names)
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    text = serve.format_help()
    for doc in docs:
        assert doc.help, doc.name
        assert "--" + doc.name.replace("_", "-") in text
    args = serve.parse_args(["--final-beam", "2", "--no-cache-context", "--strategy", "cached"])
    assert (args.final_beam, args.cache_context, args.strategy) == ("2", False, "cached")
    assert "(default: 0.5)" in text and "(default: window)" in text


def test_benchmark_overrides_take_each_fields_type():
    assert parse_overrides(["final_beam=1", "cache_context=false", "silence_s=0.7", "strategy=cached"]) == {
        "final_beam": 1, "cache_context": False, "silence_s": 0.7, "strategy": "cached"}

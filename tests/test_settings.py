"""One configuration tree: the server's settings with the streaming core's nested, from flags,
CAPTIONER_* variables and a TOML file, validated once and listed by `captioner serve --help`; the command line's
one error path."""

from __future__ import annotations

import os

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


@pytest.mark.parametrize(("argv", "message"), [
    (["serve", "--nope"], "unrecognized arguments: --nope (see captioner --help)"),
    ([], "the following arguments are required: COMMAND"),
    (["transcribe", "talk.wav", "--beam", "five"], "argument --beam: invalid int value: 'five' (see captioner "
                                                   "transcribe --help)"),
    (["serve", "--max-sessions", "0"], "max_sessions >= 1"),
    (["serve", "--config", "/nonexistent/captioner.toml"], "No such file"),
    (["transcribe", "talk.wav", "--format", "jsonl"], "--format jsonl needs --stream"),
    (["soak", "--sweep", "1,x"], "--sweep takes numbers like 1,2,4,8, not '1,x'"),
    (["transcribe", "/nonexistent/talk.wav"], "cannot read audio file /nonexistent/talk.wav"),
], ids=["unknown-flag", "no-command", "bad-int", "bad-setting", "no-config-file", "jsonl-alone", "bad-sweep",
        "no-audio-file"])
def test_command_line_errors_are_one_line_and_exit_2(argv, message, capsys, monkeypatch):
    """Usage errors (argparse's and ours) and a CaptionerError: exit status 2 and one line on stderr, no usage
    text and no traceback."""
    from captioner.tools.cli import main

    for name in [k for k in os.environ if k.startswith("CAPTIONER_")]:
        monkeypatch.delenv(name)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("captioner: error: ") and err.count("\n") == 1 and message in err, err

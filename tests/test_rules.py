"""Rules on next-token logits (decoder/rules.py) with the real tiny.en tokenizer, no model."""

from __future__ import annotations

import pytest
import torch

from captioner.decoder.rules import LogitRules, punctuation_only
from captioner.decoder.tokenizer import Tokenizer
from captioner.model.loading import default_model_path

N_VOCAB = 51864


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(default_model_path() / "tokenizer.json", N_VOCAB)


def test_suppressed_blank_and_timestamps(tokenizer):
    rules = LogitRules(tokenizer, [1, 2], N_VOCAB, torch.device("cpu"))
    hello = tokenizer.encode(" Hello")[0]
    logits = rules.apply(torch.zeros(2, N_VOCAB), [[], [hello]], [False, False])
    blank = tokenizer.encode(" ")[0]
    assert logits[0, blank] == logits[0, tokenizer.eot] == float("-inf")  # not as the first token
    assert logits[1, tokenizer.eot] == 0  # ...but after a word
    assert (logits[:, tokenizer.timestamp_begin :] == float("-inf")).all()  # no timestamps in this mode
    assert logits[1, 1] == logits[1, 2] == float("-inf")  # the checkpoint's suppressed tokens


def test_no_end_of_text_while_only_punctuation_was_sampled(tokenizer):
    rules = LogitRules(tokenizer, [], N_VOCAB, torch.device("cpu"))
    stop, word = tokenizer.encode(".")[0], tokenizer.encode(" And")[0]
    assert punctuation_only(tokenizer, [stop]) and not punctuation_only(tokenizer, [stop, word])
    sampled = [[stop], [stop, word], [stop]]
    logits = rules.apply(torch.zeros(3, N_VOCAB), sampled, [True, True, False])
    assert logits[:, tokenizer.eot].tolist() == [float("-inf"), 0.0, 0.0]


def test_timestamps_come_in_pairs_and_never_go_back(tokenizer):
    rules = LogitRules(tokenizer, [], N_VOCAB, torch.device("cpu"), without_timestamps=False)
    begin, word = tokenizer.timestamp_begin, tokenizer.encode(" And")[0]
    logits = rules.apply(torch.zeros(3, N_VOCAB), [[], [begin + 10, word], [begin + 10, word, begin + 20]],
                         [False] * 3)
    assert (logits[0, :begin] == float("-inf")).all()  # a timestamp first...
    assert (logits[0, begin + 51 :] == float("-inf")).all()  # ...at most 1 s in
    assert (logits[1, begin : begin + 10] == float("-inf")).all()  # never before the last one
    assert (logits[2, : tokenizer.eot] == float("-inf")).all()  # a lone timestamp is closed by another
    assert logits[:, tokenizer.no_timestamps].tolist() == [float("-inf")] * 3

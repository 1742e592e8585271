"""A stream's vocabulary as a token trie: which next tokens it favours, given the text so far."""

from __future__ import annotations

import pytest
import torch

from captioner.decoder.tokenizer import Tokenizer
from captioner.decoder.vocabulary import Vocabulary, boost, term_variants
from captioner.model.loading import default_model_path


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(default_model_path() / "tokenizer.json", 51864)


def test_terms_are_tried_as_written_and_capitalised():
    assert term_variants("  jane   doe ") == [" Jane doe", " jane doe"]
    assert term_variants("gRPC") == [" GRPC", " gRPC"]


def test_a_term_in_progress_is_continued_and_an_abandoned_one_is_not(tokenizer):
    vocabulary = Vocabulary(tokenizer, ["Kubernetes cluster", "iarbas", "harshly"], bonus=3.0, start_bonus=1.0)
    term = tokenizer.encode(" Kubernetes cluster")
    said = tokenizer.encode(" We run")
    assert vocabulary.boosts(said + term[:1])[term[1]] == 3.0  # inside the term: its next token
    assert vocabulary.boosts(said + term[:-1])[term[-1]] == 3.0
    assert term[1] not in vocabulary.boosts(said + term[:1] + tokenizer.encode(" and"))  # left: nothing more
    starts = vocabulary.boosts(said)
    assert starts[tokenizer.encode(" harshly")[0]] == 1.0  # may start a term
    for short in (term[0], tokenizer.encode(" Iarbas")[0]):  # " Ku", " I": far more often words of their own
        assert len(tokenizer.decode([short]).strip()) < 3 and short not in starts


def test_boost_adds_each_rows_bonuses_only_to_its_row(tokenizer):
    vocabulary = Vocabulary(tokenizer, ["Kubernetes"], bonus=3.0, start_bonus=0.0)
    term = tokenizer.encode(" Kubernetes")
    logits = torch.zeros(2, tokenizer.n_vocab)
    boost(logits, [vocabulary, None], [term[:1], term[:1]])
    assert logits[0, term[1]] == 3.0 and logits[0].sum() == 3.0 and logits[1].abs().sum() == 0

"""The commit policy, without a model: local agreement, the edge margin, stability only growing."""

from __future__ import annotations

from captioner.stream.commit import LocalAgreement, Unit


def units(*pairs: tuple[int, float]) -> list[Unit]:
    return [Unit((token,), end) for token, end in pairs]


def test_needs_two_agreeing_hypotheses():
    """The first hypothesis commits nothing; the second commits what both say."""
    policy = LocalAgreement(agreement=2, margin_s=0.0)
    assert policy.update(units((1, 0.5), (2, 1.0), (3, 1.5)), 0, edge=5.0) == 0
    assert policy.update(units((1, 0.5), (2, 1.0), (4, 1.5)), 0, edge=5.0) == 1  # 2 agreed, but 4 != 3 after it


def test_word_after_must_agree_too():
    """A word is committed only with the word after it agreed (so its punctuation is settled)."""
    policy = LocalAgreement(agreement=2, margin_s=0.0)
    policy.update(units((1, 0.5), (2, 1.0)), 0, edge=5.0)
    assert policy.update(units((1, 0.5), (2, 1.0)), 0, edge=5.0) == 1


def test_margin_from_the_edge():
    """Agreed words ending closer than the margin to the newest audio wait."""
    policy = LocalAgreement(agreement=2, margin_s=1.0)
    hypothesis = units((1, 0.5), (2, 1.2), (3, 1.8), (4, 2.0))
    policy.update(hypothesis, 0, edge=2.0)
    assert policy.update(hypothesis, 0, edge=2.0) == 1  # only the word ending at 0.5 is 1 s before the edge
    assert policy.update(hypothesis, 1, edge=3.0) == 3


def test_stable_never_shrinks():
    """A later disagreement does not take committed words back."""
    policy = LocalAgreement(agreement=2, margin_s=0.0)
    policy.update(units((1, 0.5), (2, 1.0), (3, 1.5)), 0, edge=5.0)
    assert policy.update(units((1, 0.5), (2, 1.0), (3, 1.5)), 0, edge=5.0) == 2
    assert policy.update(units((9, 0.5)), 2, edge=6.0) == 2


def test_agreement_of_one_commits_on_margin_alone():
    policy = LocalAgreement(agreement=1, margin_s=1.0)
    assert policy.update(units((1, 0.5), (2, 1.0), (3, 3.5)), 0, edge=4.0) == 2


def test_unsure_words_need_one_more_agreement():
    policy = LocalAgreement(agreement=2, margin_s=0.0, unsure_probability=0.6)
    hypothesis = [Unit((1,), 0.5), Unit((2,), 1.0, probability=0.3), Unit((3,), 1.5), Unit((4,), 2.0)]
    policy.update(hypothesis, 0, edge=5.0)
    assert policy.update(hypothesis, 0, edge=5.0) == 1
    assert policy.update(hypothesis, 1, edge=5.0) == 3


def test_silence_settles_agreed_words():
    """Once the speaker has been silent for quiet_s, agreed words commit without the margin or a word after them."""
    policy = LocalAgreement(agreement=2, margin_s=1.0, quiet_s=0.15)
    hypothesis = units((1, 0.5), (2, 1.8))
    policy.update(hypothesis, 0, edge=2.0)
    assert policy.update(hypothesis, 0, edge=2.0, quiet_since=1.9) == 1  # silent for 0.1 s: the margin holds
    assert policy.update(hypothesis, 1, edge=2.1, quiet_since=1.9, finished=False) == 1  # not ended on its own
    assert policy.update(hypothesis, 1, edge=2.1, quiet_since=1.9) == 2


def test_silence_lowers_the_agreement_needed():
    """After quiet_s of silence, words the model is sure of need only quiet_agreement hypotheses."""
    policy = LocalAgreement(agreement=3, margin_s=1.0, unsure_probability=0.5, quiet_s=0.1, quiet_agreement=2,
                            quiet_probability=0.8)
    hypothesis = [Unit((1,), 0.5, 0.9), Unit((2,), 1.8, 0.8), Unit((3,), 1.9, probability=0.6)]
    policy.update([Unit((7,), 0.5)], 0, edge=1.5)
    assert policy.update(hypothesis, 0, edge=2.0) == 0  # one hypothesis says these words, still speaking
    assert policy.update(hypothesis, 0, edge=2.1, quiet_since=2.0) == 2  # two agree, silent 0.1 s; 3 is not sure
    assert policy.update(hypothesis, 2, edge=2.6, quiet_since=2.0) == 3  # a third agrees

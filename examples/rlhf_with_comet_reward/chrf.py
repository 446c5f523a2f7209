"""chrF (sacrebleu) of each answer against its reference, in [0, 1]: the rule reward that the
example compares COMET with.

    --reward_functions examples.rlhf_with_comet_reward.chrf:reward
"""
from __future__ import annotations


def reward(prompts: list[str], answers: list[str], references: list[str], **_) -> list[float]:
    from sacrebleu.metrics import CHRF

    chrf = CHRF()
    return [chrf.sentence_score(a, [r]).score / 100 for a, r in zip(answers, references)]

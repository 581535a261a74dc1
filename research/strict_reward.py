"""Study reward: accuracy counts only in a well-formed response (`--algo.reward research/strict_reward.py:strict`)."""

from minirl.reward import accuracy_reward, format_reward


def strict(response, answer, example):
    return format_reward(response) * (0.9 * accuracy_reward(response, answer, example) + 0.1)

"""Evaluation: the metric functions every evaluation path shares (SFT samples, PPO's in-run evaluation and
`python main.py evaluate`), so a metric name means one computation everywhere.

    metrics.py          judge figures, win rate with its Wilson interval, KL from sampled ids, weighted means
    reward_model.py     a reward stage directory as a scorer (`RewardScorer`, `score_texts`)
    samples.py          the rows of samples.jsonl (judge and per-token fields)
    rules.py            rule-head metrics (the reward stage's rule classifiers)
    overoptimization.py gold vs proxy: best-of-n and the Gao et al. fits
    report.py           report.json / report.md / report.png
    command.py          the `evaluate` command: stage directories side by side on held-out prompts

Nothing here imports `lit_rlhf.stages`: the stages import evaluation, never the reverse.
"""

"""Evaluation: the metric functions every evaluation path shares (SFT samples, PPO's in-run evaluation and
`python main.py evaluate`), so a metric name means one computation everywhere."""

"""Pure-torch RL math for RLHF: masked statistics, log-probabilities, KL estimators, reward shaping,
GAE, PPO / value / K-wise ranking losses, KL controllers and minibatching.

Everything here is a plain function (or a tiny stateful helper) over tensors. Nothing in this package may
import Lightning, transformers, peft or bitsandbytes, touch a device, or read a config: stage modules in
``lit_rlhf.stages`` orchestrate, this package only computes. Import from the submodules, e.g.
``from lit_rlhf.rl.advantages import gae``.
"""

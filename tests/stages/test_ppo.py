"""PPO-ptx stage: roles on one base, KL 0 at init, only policy/critic move, ptx changes the gradient."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from lit_rlhf.backbone.build import Backbone
from lit_rlhf.backbone.config import BackboneConfig, LoraSettings
from lit_rlhf.backbone.generate import SamplingConfig
from lit_rlhf.checkpoint.stage_dir import load_stage_dir, save_stage_dir
from lit_rlhf.data.io import write_jsonl
from lit_rlhf.data.prompts import PPODataModule
from lit_rlhf.rl.logprobs import response_logprobs
from lit_rlhf.runs import RunLogger
from lit_rlhf.stages.ppo import EvalConfig, KLConfig, PPOConfig, PPOModule, PPOOptimConfig

LORA = LoraSettings(r=4, alpha=8, dropout=0.0)


def _stages(tiny_dir, tmp: Path, lora: bool = True) -> tuple[Path, Path]:
    """An SFT stage (full weights) and a reward stage (LoRA adapter + head, or full weights) on it."""
    torch.manual_seed(0)
    sft = Backbone.build(BackboneConfig(name_or_path=str(tiny_dir / "gpt2")))
    save_stage_dir(tmp / "sft", sft, stage="sft")
    rm, _ = load_stage_dir(tmp / "sft", backbone_overrides={"lora": LORA.__dict__} if lora else None)
    if lora:
        rm.add_adapter("reward")
        with torch.no_grad():
            for p in rm.adapter_parameters("reward"):
                p.add_(0.1 * torch.randn_like(p))  # a "trained" reward adapter, so critic != policy
    rm.add_head("reward")
    save_stage_dir(
        tmp / "rm", rm, stage="reward", heads={"reward": {"adapter": "reward" if lora else None, "bias": 0.3}}
    )
    return tmp / "sft", tmp / "rm"


def _data(tmp: Path, pretrain: bool = True) -> PPODataModule:
    write_jsonl(tmp / "prompts.jsonl", [{"prompt": f"{a} {b} ="} for a in "abcd" for b in "efgh"])
    write_jsonl(tmp / "text.jsonl", [{"text": f"{a} {b} = {b} {a}"} for a in "abcdefgh" for b in "abcdefgh"])
    return PPODataModule(
        str(tmp / "prompts.jsonl"),
        str(tmp / "text.jsonl") if pretrain else None,
        batch_size=4,
        ptx_batch_size=4,
        ptx_max_length=16,
        ptx_holdout=8,
    )


def _module(sft, rm, ptx_coef=0.0, ppo: PPOConfig | None = None, **kw) -> PPOModule:
    return PPOModule(
        str(sft),
        str(rm),
        ptx_coef=ptx_coef,
        optim=PPOOptimConfig(lr=1e-2),
        kl=KLConfig(init_coef=0.1),
        ppo=ppo or PPOConfig(ppo_epochs=1, minibatch_size=4, critic_lr=1e-2),
        sampling=SamplingConfig(max_new_tokens=5),
        eval=EvalConfig(prompts=None, samples_per_step=0),
        **kw,
    )


def _trainer(steps: int, logger: Any = False, **kw: Any) -> L.Trainer:
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        **kw,
    )


@pytest.mark.parametrize("lora", [True, False], ids=["shared", "separate"])
def test_kl_is_exactly_zero_at_initialisation(tiny_dir, tmp_path, lora):
    sft, rm = _stages(tiny_dir, tmp_path, lora)
    module = _module(sft, rm)
    module.configure_model()
    assert module.roles.is_shared is lora
    ro, gen, stats = module.rollout(["a b =", "c d e =", "f ="])
    assert torch.equal(ro.logprobs, ro.ref_logprobs)
    assert float(stats["kl"]) == 0.0
    # the critic starts from the reward model: its value at the last token equals the raw RM score
    assert ro.values.shape == ro.response_mask.shape


def test_ppo_step_moves_only_policy_and_critic(tiny_dir, tmp_path):
    sft, rm = _stages(tiny_dir, tmp_path)
    module = _module(sft, rm)
    module.configure_model()
    net = module.roles.shared
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    _trainer(2).fit(module, _data(tmp_path))
    moved = {n for n, p in net.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved, "nothing trained"
    assert all(".policy." in n or ".critic." in n or n.startswith("heads.value.") for n in moved), moved
    assert any(".policy." in n for n in moved) and any(".critic." in n for n in moved)
    # base, reward adapter and reward head are bit-identical
    frozen = [n for n in before if "lora_" not in n and not n.startswith("heads.value.")]
    assert frozen and not (set(frozen) & moved)


def test_ptx_coef_changes_the_update(tiny_dir, tmp_path):
    sft, rm = _stages(tiny_dir, tmp_path)
    results = []
    for coef in (0.0, 1.0):
        torch.manual_seed(0)
        module = _module(sft, rm, ptx_coef=coef)
        L.seed_everything(0)
        _trainer(1).fit(module, _data(tmp_path))
        results.append(
            {n: p.detach().clone() for n, p in module.roles.shared.named_parameters() if ".policy." in n}
        )
    assert any(not torch.equal(results[0][n], results[1][n]) for n in results[0])


def test_ptx_loss_gradient_reaches_only_the_policy(tiny_dir, tmp_path):
    sft, rm = _stages(tiny_dir, tmp_path)
    module = _module(sft, rm, ptx_coef=1.0)
    module.configure_model()
    dm = _data(tmp_path)
    dm.tokenizer = module.tokenizer
    dm.setup("fit")
    loss = module.ptx_loss(dm.ptx_eval_batches()[0])
    loss.backward()
    net = module.roles.shared
    grads = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    assert any(".policy." in n and float(g.abs().sum()) > 0 for n, g in grads.items())
    assert not any(".critic." in n or ".reward." in n for n in grads)


def test_ptx_without_pretraining_data_fails_at_start(tiny_dir, tmp_path):
    sft, rm = _stages(tiny_dir, tmp_path)
    with pytest.raises(ValueError, match="ptx_coef > 0 needs pretraining data"):
        _trainer(1).fit(_module(sft, rm, ptx_coef=0.5), _data(tmp_path, pretrain=False))


def test_separate_roles_train_full_weights(tiny_dir, tmp_path):
    sft, rm = _stages(tiny_dir, tmp_path, lora=False)
    module = _module(sft, rm)
    module.configure_model()
    ref_before = {n: p.detach().clone() for n, p in module.roles.separate["reference"].named_parameters()}
    pol_before = {n: p.detach().clone() for n, p in module.roles.separate["policy"].named_parameters()}
    _trainer(1).fit(module, _data(tmp_path))
    assert all(
        torch.equal(p, ref_before[n]) for n, p in module.roles.separate["reference"].named_parameters()
    )
    assert any(
        not torch.equal(p, pol_before[n]) for n, p in module.roles.separate["policy"].named_parameters()
    )


def test_response_logprobs_alignment_by_hand():
    # vocabulary 3; logits favour token 2 at position 1 and token 0 at position 2
    logits = torch.log(
        torch.tensor([[[1.0, 1.0, 1.0], [0.25, 0.25, 0.5], [0.5, 0.25, 0.25], [1.0, 1.0, 1.0]]])
    )
    ids = torch.tensor([[1, 1, 2, 0]])  # prompt = first 2 tokens, response = [2, 0]
    # Backbone.response_logits gives the predictions of tokens P..L-1: logit columns P-1..L-2
    out = response_logprobs(logits[:, 1:-1], ids, prompt_len=2)
    torch.testing.assert_close(out, torch.log(torch.tensor([[0.5, 0.5]])))


def test_ppo_refuses_gradient_checkpointing_with_a_reason(tiny_dir, tmp_path):
    """Roles switch adapters on one base: a recomputed forward would run the wrong adapter (and PPO runs in eval
    mode, where transformers does not checkpoint), so PPO refuses it instead of silently doing either."""
    sft, rm = _stages(tiny_dir, tmp_path)
    manifest = json.loads((sft / "manifest.json").read_text())
    manifest["backbone"]["gradient_checkpointing"] = True
    (sft / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="PPO does not support backbone.gradient_checkpointing"):
        _module(sft, rm).configure_model()


def test_ppo_rollout_sampling_must_be_the_policy_distribution(tiny_dir, tmp_path):
    sft, rm = _stages(tiny_dir, tmp_path)
    for bad, why in (
        (SamplingConfig(max_new_tokens=4, temperature=0.7), "temperature must be 1.0"),
        (SamplingConfig(max_new_tokens=4, top_k=50), "top_k must be 0"),
        (SamplingConfig(max_new_tokens=4, top_p=0.9), "top_p must be 1.0"),
        (SamplingConfig(max_new_tokens=4, do_sample=False), "do_sample must be true"),
    ):
        with pytest.raises(ValueError, match=why):
            PPOModule(str(sft), str(rm), sampling=bad)


def test_reward_model_on_a_differently_quantized_base_is_warned_about(tiny_dir, tmp_path, caplog):
    from lit_rlhf.stages.roles import warn_if_requantized

    with caplog.at_level("WARNING"):
        warn_if_requantized("none", None, "rm")  # as stored: nothing to say
        warn_if_requantized("none", "none", "rm")
    assert not caplog.records
    with caplog.at_level("WARNING"):
        warn_if_requantized("none", "4bit", "runs/reward/x/stage")
    assert "trained on a base quantized as 'none' but PPO loads the shared base as '4bit'" in caplog.text


def test_in_run_evaluation_and_evaluate_compute_the_same_figures(tiny_dir, tmp_path):
    """One computation per metric name: PPO's held-out evaluation and `main.py evaluate` on the stage it writes
    give the same KL (from the sampled ids), reward, length, pretraining loss, judge score and win rate."""
    from lit_rlhf.evaluation.command import EvalSettings, evaluate_checkpoints

    sft, rm = _stages(tiny_dir, tmp_path)
    dm = _data(tmp_path)
    write_jsonl(tmp_path / "eval.jsonl", [{"prompt": f"{a} =", "reference": a} for a in "abcdefgh"])
    module = _module(sft, rm, ptx_coef=0.0)
    module.eval_cfg = EvalConfig(
        prompts=str(tmp_path / "eval.jsonl"),
        every_n_steps=0,
        sampling=SamplingConfig(max_new_tokens=4),
        judge="exact_match",
        samples_per_step=0,
        batch_size=4,
        seed=77,
    )
    from lit_rlhf.judges import load_judge

    module.judge = load_judge("exact_match")
    trainer = _trainer(2)
    trainer.fit(module, dm)
    ours = module.evaluate()
    save_stage_dir(
        tmp_path / "ppo",
        module.roles.shared,
        stage="ppo",
        adapters=["policy"],
        parent=str(sft),
        extra={"reward_from": str(rm)},
    )
    settings = EvalSettings(
        prompts=str(tmp_path / "eval.jsonl"),
        max_new_tokens=4,
        batch_size=4,
        seed=77,
        pretrain=str(tmp_path / "text.jsonl"),
        pretrain_limit=dm.ptx_holdout,
        judge="exact_match",
    )
    theirs = evaluate_checkpoints([str(tmp_path / "ppo")], settings)["checkpoints"][str(tmp_path / "ppo")]
    assert ours["eval_kl"] != 0.0  # the policy moved
    for mine, name in (
        ("eval_kl", "kl"),
        ("eval_rm_score", "rm_score"),
        ("eval_length", "mean_length"),
        ("pretrain_loss", "pretrain_loss"),
        ("judge_score", "judge_score"),
        ("win_rate_vs_sft", "win_rate_vs_sft"),
    ):
        assert ours[mine] == pytest.approx(theirs[name], rel=1e-4, abs=1e-5), name


def test_policy_and_critic_gradients_are_clipped_separately():
    """A large value-loss gradient must not shrink the policy's step: each role's norm is clipped on its own."""
    policy, critic = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [policy]}, {"params": [critic]}])
    policy.grad, critic.grad = torch.tensor([0.3, 0.4]), torch.tensor([300.0, 400.0])  # norms 0.5 and 500
    norms = PPOModule._clip_each_role(opt, max_norm=1.0)
    assert (
        float(norms["policy_grad_norm"]) == pytest.approx(0.5) and float(norms["critic_grad_norm"]) == 500.0
    )
    torch.testing.assert_close(policy.grad, torch.tensor([0.3, 0.4]))  # under the limit: untouched
    torch.testing.assert_close(
        critic.grad, torch.tensor([0.6, 0.8]), rtol=1e-5, atol=1e-6
    )  # scaled to norm 1
    # a joint clip would have scaled the policy's gradient by 1/500 as well


def _trunk_stages(tiny_dir, tmp: Path) -> tuple[Path, Path]:
    """SFT and reward stages of the tiny Llama that train only its top layer (backbone.top_layers=1)."""
    torch.manual_seed(0)
    sft = Backbone.build(BackboneConfig(name_or_path=str(tiny_dir / "llama"), top_layers=1))
    save_stage_dir(tmp / "sft", sft, stage="sft")
    rm, _ = load_stage_dir(tmp / "sft", backbone_overrides={"lora": LORA.__dict__})
    rm.add_adapter("reward")
    with torch.no_grad():
        for p in rm.adapter_parameters("reward"):
            p.add_(0.1 * torch.randn_like(p))
    rm.add_head("reward")
    save_stage_dir(tmp / "rm", rm, stage="reward", heads={"reward": {"adapter": "reward", "bias": 0.0}})
    return tmp / "sft", tmp / "rm"


def test_shared_trunk_rollout_matches_full_passes(tiny_dir, tmp_path, monkeypatch):
    """backbone.top_layers: the rollout's policy, reference and critic passes share one lower pass (the reward
    model's input is its own sequence), with the same numbers as full passes, and the rollout keeps that pass's
    output for the update."""
    _trunk_stages(tiny_dir, tmp_path)

    def rollout(shared: bool):
        if not shared:
            monkeypatch.setattr(Backbone, "trunk", property(lambda self: None))
        module = _module(tmp_path / "sft", tmp_path / "rm")
        module.configure_model()
        layers = module.roles.shared.hf_model.model.layers
        calls = []
        layers[0].register_forward_hook(lambda *_: calls.append(1))
        torch.manual_seed(3)
        ro, gen, _ = module.rollout(["a b =", "c d e =", "f ="])
        generation_calls = gen.response_ids.shape[1]  # one forward per new token (KV cache), before scoring
        monkeypatch.undo()
        return ro, len(calls) - generation_calls

    (trunk, trunk_passes), (full, full_passes) = rollout(True), rollout(False)
    assert (trunk_passes, full_passes) == (
        2,
        4,
    )  # lower once + the reward model's own (the random model samples special tokens that its text drops), vs
    # policy/ref/critic/RM
    for a, b in zip(trunk[:-1], full[:-1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert full.trunk is None
    assert (
        trunk.trunk.shape == (*trunk.input_ids.shape, 64) and not trunk.trunk.requires_grad
    )  # tiny Llama: H=64


def test_reward_model_reads_the_shared_trunk_where_the_tokens_are_its_own(tiny_dir, tmp_path):
    """top_layers: rows whose sampled tokens (closed with end-of-turn where they hit the limit) are the reward
    model's own sequence are scored from the rollout's lower pass; a row whose tokens differ from its text's gets
    the reward model's own pass. The scores equal the reward model's full passes either way."""
    from lit_rlhf.backbone.trunk import closing_column
    from lit_rlhf.data.padding import pad_right

    sft, rm = _trunk_stages(tiny_dir, tmp_path)
    module = _module(sft, rm)
    module.configure_model()
    roles, fmt = module.roles, module.roles.text_format
    prompts, texts = ["a b =", "c d e =", "f ="], ["b a", "e d c", "f"]
    responses = [fmt.response_ids(q, t) for q, t in zip(prompts, texts, strict=True)]
    responses[0] = [*responses[0], fmt.end_of_turn_id]  # ended: the stop token was sampled
    responses[2] = [fmt.pad_id, *responses[2]]  # a token the decoded text drops: not the RM's sequence
    prompt_ids, prompt_mask = (
        t.flip(1) for t in pad_right([fmt.prompt_ids(q)[::-1] for q in prompts], fmt.pad_id)
    )
    response_ids, response_mask = pad_right(
        responses, fmt.pad_id
    )  # (row 2's first token is a sampled pad id)
    ids, mask = torch.cat([prompt_ids, response_ids], 1), torch.cat([prompt_mask, response_mask], 1)
    s_ids, s_mask = closing_column(
        ids, mask, torch.tensor([True, False, False]), fmt.end_of_turn_id, fmt.pad_id
    )
    calls = []
    roles.shared.hf_model.model.layers[0].register_forward_hook(
        lambda _m, args, _o: calls.append(args[0].shape[0])
    )
    with torch.no_grad():
        full, _ = roles.reward_and_rules(prompts, texts)
        with roles.shared_trunk(s_ids, s_mask) as shared:
            kept, _ = roles.reward_and_rules(prompts, texts, (s_ids, s_mask))
    assert shared
    assert calls == [3, 3, 1]  # the full pass; the block's lower pass; row 2's own pass
    torch.testing.assert_close(kept, full, rtol=1e-5, atol=1e-5)


def test_shared_trunk_update_reuses_the_rollouts_lower_pass(tiny_dir, tmp_path, monkeypatch):
    """backbone.top_layers: the update's minibatches (2 epochs, micro-batches of one row) run no lower layer (the
    rollout's output is kept; only the pretraining rows pass) and train the same weights as recomputing the
    lower layers for each micro-batch."""
    sft, rm = _trunk_stages(tiny_dir, tmp_path)
    results = []
    for keep in (True, False):
        if not keep:
            monkeypatch.setattr(PPOModule, "rollout", _dropping_trunk(PPOModule.rollout))
        module = _module(
            sft,
            rm,
            ptx_coef=1.0,
            ppo=PPOConfig(ppo_epochs=2, minibatch_size=4, critic_lr=1e-2, update_micro_batch_size=1),
        )
        L.seed_everything(0)  # the policy's fresh LoRA weights are drawn here
        module.configure_model()
        lower_calls = []
        module.roles.shared.hf_model.model.layers[0].register_forward_hook(
            lambda _m, args, _o, calls=lower_calls: calls.append(args[0].shape[0])
        )
        update = PPOModule.ppo_update

        def counted(self, mb, ptx, update=update, calls=lower_calls):
            calls.append("update")
            return update(self, mb, ptx)

        monkeypatch.setattr(PPOModule, "ppo_update", counted)
        _trainer(2).fit(module, _data(tmp_path))  # one rollout of 4 prompts, 2 updates
        monkeypatch.undo()
        first = lower_calls.index("update")
        results.append(
            (
                lower_calls[first:],
                {n: p.detach().clone() for n, p in module.roles.shared.named_parameters() if p.requires_grad},
            )
        )
    (kept_calls, kept), (recomputed_calls, recomputed) = results
    # within an update only its half of the pretraining batch (2 rows, with the last micro-batch) passes the lower
    # layers; recomputing, each one-row micro-batch did too
    assert [c for c in kept_calls if c != "update"] == [2] * 2
    assert [c for c in recomputed_calls if c != "update"] == [1, 1, 1, 1, 2] * 2
    assert any(".policy." in n for n in kept) and any(".critic." in n for n in kept)
    for name, value in kept.items():
        torch.testing.assert_close(recomputed[name], value, rtol=1e-4, atol=1e-6, msg=name)


def _dropping_trunk(rollout):
    def without_trunk(self, prompts):
        ro, gen, stats = rollout(self, prompts)
        return ro._replace(trunk=None), gen, stats

    return without_trunk


def test_ppo_optim_takes_the_deprecated_lr_and_refuses_a_schedule(tiny_dir, tmp_path):
    """PPO's learning rate lives in `optim` like SFT's and the RM's; the old `lr` argument still sets it."""
    sft, rm = _stages(tiny_dir, tmp_path)
    with pytest.warns(DeprecationWarning, match="optim.lr"):
        old = PPOModule(str(sft), str(rm), lr=3e-3)
    assert old.optim_cfg.lr == 3e-3
    module = _module(sft, rm)
    module.configure_model()
    opt = module.configure_optimizers()
    # the policy's optim.lr, then the critic's ppo.critic_lr
    assert [g["lr"] for g in opt.param_groups] == [1e-2, 1e-2]
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="warmup_steps must be 0"):
        PPOModule(str(sft), str(rm), optim=PPOOptimConfig(warmup_steps=10))
    with pytest.raises(ValueError, match="disagree"):
        PPOModule(str(sft), str(rm), optim=PPOOptimConfig(lr=1e-3), lr=1e-2)


def test_micro_batched_update_gives_the_whole_minibatch_update(tiny_dir, tmp_path):
    """ppo.update_micro_batch_size: one backward per micro-batch (token-weighted) and one for ptx give the same
    trained weights and logged losses as the whole minibatch at once."""
    sft, rm = _stages(tiny_dir, tmp_path)
    results = []
    for size in (0, 1, 3):
        module = _module(
            sft,
            rm,
            ptx_coef=1.0,
            ppo=PPOConfig(ppo_epochs=1, minibatch_size=4, critic_lr=1e-2, update_micro_batch_size=size),
        )
        L.seed_everything(0)
        trainer = _trainer(1)
        trainer.fit(module, _data(tmp_path))
        trained = {
            n: p.detach().clone() for n, p in module.roles.shared.named_parameters() if p.requires_grad
        }
        logged = {k: float(v) for k, v in trainer.callback_metrics.items() if "loss" in k}
        results.append((trained, logged))
    (whole, whole_log), *others = results
    assert any(".policy." in n for n in whole) and any(".critic." in n for n in whole)
    for trained, logged in others:
        for name, value in whole.items():
            # atol 1e-4 = 1% of the learning rate: AdamW's first step is lr * g / (|g| + eps), so an element whose
            # gradient is near eps moves by an amount that float summation order decides (3e-5 seen on one CPU)
            torch.testing.assert_close(trained[name], value, rtol=1e-4, atol=1e-4, msg=name)
        assert logged.keys() == whole_log.keys() and "ppo/ptx_loss" in logged
        for key, value in whole_log.items():
            assert logged[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_a_non_finite_ptx_part_skips_the_whole_update_and_counts_in_a_row(tiny_dir, tmp_path, monkeypatch):
    """The policy/critic parts' backward has run when the ptx part turns out non-finite: the update is dropped
    (no weight moves) and counted once, and a finite first part does not reset the count of skips in a row."""
    from lit_rlhf.stages.guards import NonFiniteUpdates

    sft, rm = _stages(tiny_dir, tmp_path)
    module = PPOModule(
        str(sft),
        str(rm),
        ptx_coef=1.0,
        optim=PPOOptimConfig(lr=1e-2),
        ppo=PPOConfig(ppo_epochs=2, minibatch_size=4, update_micro_batch_size=2),
        sampling=SamplingConfig(max_new_tokens=5),
        eval=EvalConfig(prompts=None, samples_per_step=0),
        max_nonfinite_updates=3,
    )
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.roles.shared.named_parameters()}
    monkeypatch.setattr(PPOModule, "ptx_loss", lambda self, batch: torch.tensor(float("nan")))
    with pytest.raises(NonFiniteUpdates, match="3 non-finite updates in a row"):
        _trainer(8).fit(module, _data(tmp_path))
    assert (module.guard.skipped, module.guard.consecutive) == (3, 3)
    for name, param in module.roles.shared.named_parameters():
        assert torch.equal(param.detach(), before[name]), name


@pytest.mark.parametrize("baseline", [True, False], ids=["loo-baseline", "raw-scores"])
def test_samples_per_prompt_samples_each_prompt_n_times_and_the_baseline_centres_each_group(
    tiny_dir, tmp_path, monkeypatch, baseline
):
    """ppo.samples_per_prompt=3: a batch of 4 prompts rolls out 12 sequences, each prompt's 3 adjacent; with
    group_baseline the score paid at the last token is the score minus the mean of the prompt's other samples."""
    import lit_rlhf.stages.ppo as ppo_mod

    sft, rm = _stages(tiny_dir, tmp_path)
    seen = {}
    real_generate, real_shape, real_combined = (
        ppo_mod.generate,
        ppo_mod.shape_rewards,
        PPOModule._combined_score,
    )

    def spy_generate(model, fmt, prompts, sampling, **kw):
        seen["prompts"] = list(prompts)
        return real_generate(model, fmt, prompts, sampling, **kw)

    def spy_combined(self, *args):
        scores, stats = real_combined(self, *args)
        seen["raw"] = scores.clone()
        return scores, stats

    def spy_shape(scores, *args, **kw):
        seen["paid"] = scores.clone()
        return real_shape(scores, *args, **kw)

    monkeypatch.setattr(ppo_mod, "generate", spy_generate)
    monkeypatch.setattr(ppo_mod, "shape_rewards", spy_shape)
    monkeypatch.setattr(PPOModule, "_combined_score", spy_combined)
    cfg = PPOConfig(
        ppo_epochs=1, minibatch_size=4, critic_lr=1e-2, samples_per_prompt=3, group_baseline=baseline
    )
    module = _module(sft, rm, ppo=cfg)
    module.eval_cfg.samples_per_step = 3
    L.seed_everything(0)
    # 12 sequences / minibatches of 4 = 3 updates: one PPO iteration
    trainer = _trainer(3, logger=RunLogger(tmp_path / "runs/ppo/x"))
    trainer.fit(module, _data(tmp_path))
    assert module.rollouts_done == 1
    written = [json.loads(x) for x in (tmp_path / "runs/ppo/x/samples.jsonl").read_text().splitlines()]
    # one sample of each of 3 prompts, not the first prompt's 3 samples
    assert [r["prompt"] for r in written] == [seen["prompts"][i] for i in (0, 3, 6)]
    prompts = seen["prompts"]
    assert len(prompts) == 12 and all(
        prompts[3 * g] == prompts[3 * g + i] for g in range(4) for i in range(3)
    )
    assert len({json.dumps(prompts[3 * g]) for g in range(4)}) == 4
    raw, paid = seen["raw"].view(4, 3), seen["paid"].view(4, 3)
    assert raw.std(1).min() > 0  # samples of one prompt differ, so the test can tell the two apart
    if baseline:
        torch.testing.assert_close(paid.sum(1), torch.zeros(4), atol=1e-5, rtol=0)
        torch.testing.assert_close(paid, raw - (raw.sum(1, keepdim=True) - raw) / 2)
    else:
        torch.testing.assert_close(paid, raw)
    spread = float(trainer.callback_metrics["ppo/group_score_std"])
    assert spread == pytest.approx(float(raw.std(1).mean()), rel=1e-5)


def test_group_baseline_settings_are_checked(tiny_dir, tmp_path):
    sft, rm = _stages(tiny_dir, tmp_path)
    with pytest.raises(ValueError, match=r"group_baseline needs samples_per_prompt >= 2.*got 1"):
        _module(sft, rm, ppo=PPOConfig(group_baseline=True))
    with pytest.raises(ValueError, match="samples_per_prompt must be an integer >= 1, got 0"):
        _module(sft, rm, ppo=PPOConfig(samples_per_prompt=0))

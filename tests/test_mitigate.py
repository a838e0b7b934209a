"""Mitigation strategies: embedding optimization, attention rescaling, guidance schedules, and the host loop."""

from __future__ import annotations

import pytest
import torch

from memguard.mitigate.attention import Attention, cross_attention_modules, rescaled_attention
from memguard.mitigate.base import AttentionEdit, Case, Intervention, Report, merge, still_above
from memguard.mitigate.embedding import Embedding, checkpointed, frozen
from memguard.mitigate.guidance import Guidance, GuidanceSchedule
from memguard.pipeline import positions_kept, sample

PROMPT = "a photo of a cat"

STRATEGIES = {
    "embedding": lambda: Embedding(max_iters=3),
    "attention": lambda: Attention(),
    "guidance": lambda: Guidance(),
    "opposite-static": lambda: Guidance(mode="static", before=-2.0),
}


def _params(model):
    return [*model.unet.parameters(), *model.text_encoder.parameters()]


def _case(model, seeds=(0,), steps=10, target=0.0, interrupted=lambda: False, prompt=PROMPT):
    tok = model.tokenize(prompt)
    n = len(seeds)
    t = model.scheduler(steps).timesteps[0]
    x = torch.cat([model.noise(s) for s in seeds])
    cond = model.encode(tok).expand(n, -1, -1).clone()
    with torch.no_grad():
        eps_empty = model.eps(x, t, model.empty().expand(n, -1, -1))
        scores = (model.eps(x, t, cond) - eps_empty).flatten(1).norm(dim=1).tolist()
    return Case(
        eps_model=lambda xx, cc, rows=None: model.eps(xx, t, cc),
        x=x,
        cond=cond,
        eps_empty=eps_empty,
        keep=[positions_kept(tok)] * n,
        bos=list(range(0, cond.shape[1], 77)),
        target=target,
        scores=scores,
        interrupted=interrupted,
        model=model.unet,
        checkpoint=model.blocks(),
    )


# --- every strategy through the host loop -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_strategy_reports_per_flagged_image(tiny, name):
    strategy = STRATEGIES[name]()
    gens = sample(tiny, PROMPT, [0, 1], steps=6, threshold=0.0, strategy=strategy)
    for g in gens:
        assert g.detection.flagged
        report = g.mitigation
        assert isinstance(report, Report)
        assert report.strategy == strategy.name
        assert report.score_before == pytest.approx(g.detection.score, rel=1e-6)
        assert report.score_after is not None and report.score_after >= 0
        assert report.unet_forwards >= 2
        assert report.to_dict()["unet_equivalents"] == report.unet_equivalents
        assert g.to_dict()["score_after"] == report.score_after
        assert g.image is not None and torch.isfinite(g.image).all()
    (plain,) = sample(tiny, PROMPT, [0], steps=6, threshold=None)
    assert not torch.equal(gens[0].image, plain.image)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_unflagged_image_is_bit_identical(tiny, name):
    off = sample(tiny, PROMPT, [0, 1], steps=6, threshold=1e9)
    on = sample(tiny, PROMPT, [0, 1], steps=6, threshold=1e9, strategy=STRATEGIES[name]())
    for a, b in zip(off, on):
        assert not b.detection.flagged and b.mitigation is None
        assert torch.equal(a.image, b.image)
        assert a.trajectory == b.trajectory


@pytest.mark.parametrize("name", list(STRATEGIES))
@pytest.mark.parametrize("seeds", [[0, 1], [1, 0]], ids=["first", "second"])
def test_only_the_flagged_image_of_a_batch_changes(tiny, name, seeds):
    """Whichever row of the batch the flagged image is (both orders of two seeds), only that image changes."""
    base = sample(tiny, PROMPT, seeds, steps=6, threshold=None)
    s0, s1 = base[0].detection.score, base[1].detection.score
    assert s0 != s1
    threshold = (s0 + s1) / 2
    hi, lo = (0, 1) if s0 > s1 else (1, 0)
    mitigated = sample(tiny, PROMPT, seeds, steps=6, threshold=threshold, strategy=STRATEGIES[name]())
    assert mitigated[hi].detection.flagged and mitigated[hi].mitigation is not None
    assert not mitigated[lo].detection.flagged and mitigated[lo].mitigation is None
    assert torch.equal(mitigated[lo].image, base[lo].image)
    assert torch.equal(mitigated[lo].latent, base[lo].latent)
    assert not torch.equal(mitigated[hi].latent, base[hi].latent)


def _capturing(strategy, cases: list, interventions: list):
    """``strategy`` that also keeps the case it was given and the intervention it returned."""

    def run(case):
        cases.append(case)
        interventions.append(strategy(case))
        return interventions[-1]

    return run


def test_score_after_is_read_against_the_empty_prompt_with_a_negative_prompt(tiny):
    """With a negative prompt the re-scored first step is still Wen's ``d`` against the empty prompt: the guidance
    schedule leaves the first step's conditioning as it is, so the score after equals the score before."""
    gens = sample(tiny, PROMPT, [0, 1], steps=4, negative="blurry", threshold=0.0, strategy=Guidance())
    for g in gens:
        assert g.detection.extra_pass
        assert g.mitigation.score_after == pytest.approx(g.mitigation.score_before, rel=1e-5)


def test_the_guidance_schedule_starts_from_the_mitigated_first_step(tiny):
    """``auto`` optimizes the embedding, then schedules guidance: the schedule's first ``d_t`` is the mitigated
    first step's (the score after), not the one before the optimization."""
    from memguard.mitigate import Auto

    cases, interventions = [], []
    (g,) = sample(tiny, PROMPT, [0], steps=4, threshold=0.0, strategy=_capturing(Auto(), cases, interventions))
    (schedule,) = interventions[0].guidance
    assert g.mitigation.score_after != pytest.approx(g.mitigation.score_before, rel=1e-3)
    assert schedule.history[0] == pytest.approx(g.mitigation.score_after, rel=1e-5)
    assert len(schedule.history) == 4


def test_mitigated_images_keep_their_first_step_score_when_scores_average_steps(tiny):
    """``score_steps`` averages ``d_t`` for the images memguard left alone; a mitigated image keeps the first-step
    score its verdict was taken on (later steps ran under the mitigation)."""
    base = sample(tiny, PROMPT, [0, 1], steps=6, threshold=None, score_steps=3)
    s0, s1 = (g.trajectory[0] for g in base)
    hi = 0 if s0 > s1 else 1
    threshold = (s0 + s1) / 2
    gens = sample(tiny, PROMPT, [0, 1], steps=6, threshold=threshold, score_steps=3, strategy=Embedding(max_iters=3))
    mitigated, alone = gens[hi], gens[1 - hi]
    assert mitigated.mitigation is not None and alone.mitigation is None
    assert mitigated.detection.score == pytest.approx(mitigated.trajectory[0], rel=1e-6) and mitigated.detection.flagged
    assert alone.detection.score == pytest.approx(sum(alone.trajectory[:3]) / 3, rel=1e-6)


def test_forced_mitigation_without_threshold_aims_at_half_the_lowest_score(tiny):
    cases, interventions = [], []
    gens = sample(
        tiny,
        PROMPT,
        [0, 1],
        steps=3,
        threshold=None,
        force=True,
        strategy=_capturing(Embedding(max_iters=1), cases, interventions),
    )
    (case,) = cases
    assert all(g.mitigation is not None and not g.detection.flagged for g in gens)
    assert case.target == pytest.approx(min(g.detection.score for g in gens) / 2, rel=1e-6)


def test_a_batch_of_prompts_is_mitigated_as_each_prompt_alone(tiny):
    """Each flagged row gets the padding mask of its own prompt (prompts of one batch differ in length)."""
    prompts = ["a cat", "a photo of a red cat on a mat"]
    batch = sample(tiny, prompts, [0, 1], steps=4, threshold=0.0, strategy=Attention())
    for prompt, seed, g in zip(prompts, [0, 1], batch):
        (alone,) = sample(tiny, prompt, [seed], steps=4, threshold=0.0, strategy=Attention())
        # the same up to the batch's rounding (about 2e-5 on latents of size 10; another prompt's mask moves it by 0.5)
        assert torch.allclose(g.latent, alone.latent, rtol=0, atol=1e-3)


# --- embedding ----------------------------------------------------------------------------------------------------


def test_embedding_lowers_d_in_the_host_loop(tiny):
    gens = sample(tiny, PROMPT, [0, 1], steps=4, threshold=0.0, strategy=Embedding(max_iters=5))
    for g in gens:
        r = g.mitigation
        assert r.score_after < r.score_before
        assert 1 <= r.iterations <= 5
        assert r.unet_backwards == r.iterations


def test_embedding_on_a_case(tiny):
    case = _case(tiny, seeds=(0, 1))
    strategy = Embedding(max_iters=4)
    out = strategy(case)
    assert isinstance(out, Intervention)
    assert out.cond.shape == case.cond.shape and out.cond.dtype == case.cond.dtype
    assert out.attention is None and out.guidance is None
    with torch.no_grad():
        d = (case.eps_model(case.x, out.cond) - case.eps_empty).flatten(1).norm(dim=1)
    for j, r in enumerate(out.reports):
        assert r.iterations == 4
        assert r.unet_forwards == 5
        assert r.score_after == pytest.approx(float(d[j]), rel=1e-4)
        assert r.score_after < r.score_before == pytest.approx(case.scores[j])
        assert r.notes  # did not reach the target 0


def test_embedding_stops_at_target(tiny):
    case = _case(tiny)
    out = Embedding(max_iters=50, target=case.scores[0] * 0.97)(case)
    (r,) = out.reports
    assert r.score_after <= case.scores[0] * 0.97
    assert r.iterations < 50
    assert r.notes == []


def test_embedding_interrupted_stops_after_first_iteration(tiny):
    case = _case(tiny, interrupted=lambda: True)
    out = Embedding(max_iters=10)(case)
    (r,) = out.reports
    assert r.iterations == 0 and r.unet_backwards == 0 and r.unet_forwards == 1
    assert torch.equal(out.cond, case.cond)

    calls = []

    def second_call():
        calls.append(1)
        return len(calls) >= 2

    out = Embedding(max_iters=10)(_case(tiny, interrupted=second_call))
    assert out.reports[0].iterations == 1


def test_embedding_interrupted_in_host_loop(tiny):
    (g,) = sample(tiny, PROMPT, [0], steps=6, threshold=0.0, strategy=Embedding(), interrupted=lambda: True)
    assert g.mitigation.iterations == 0


def test_embedding_leaves_parameters_untouched(tiny):
    unet_first = tiny.unet.conv_in.weight
    text_first = list(tiny.text_encoder.parameters())[-1]
    before = {id(p): p.requires_grad for p in _params(tiny)}
    try:
        unet_first.requires_grad_(True)
        text_first.requires_grad_(True)
        expected = {id(p): p.requires_grad for p in _params(tiny)}
        values = [p.detach().clone() for p in tiny.unet.parameters()]
        sample(tiny, PROMPT, [0], steps=3, threshold=0.0, strategy=Embedding(max_iters=3))
        assert {id(p): p.requires_grad for p in _params(tiny)} == expected
        assert all(p.grad is None for p in _params(tiny))
        assert all(torch.equal(a, b) for a, b in zip(values, tiny.unet.parameters()))
        assert "forward" not in vars(tiny.unet.down_blocks[0])  # checkpointing undone
    finally:
        for p in _params(tiny):
            p.requires_grad_(before[id(p)])
            p.grad = None


def test_embedding_keeps_bos_fixed(tiny):
    case = _case(tiny)
    out = Embedding(max_iters=5)(case)
    assert not torch.equal(out.cond, case.cond)
    assert torch.equal(out.cond[:, 0], case.cond[:, 0])


def test_frozen_restores_requires_grad():
    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    m[1].weight.requires_grad_(False)
    with frozen([m]):
        assert not any(p.requires_grad for p in m.parameters())
    assert [p.requires_grad for p in m.parameters()] == [True, True, False, True]
    with pytest.raises(RuntimeError), frozen([m]):
        raise RuntimeError
    assert [p.requires_grad for p in m.parameters()] == [True, True, False, True]


# --- checkpointing ----------------------------------------------------------------------------------------------


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x, scale=1.0):
        return torch.tanh(self.lin(x)) * scale


def _stack_grads(blocks, x):
    for b in blocks:
        b.zero_grad(set_to_none=True)
    inp = x.clone().requires_grad_(True)
    h = inp
    for b in blocks:
        h = b(h, scale=1.5)
    h.pow(2).sum().backward()
    return inp.grad.clone(), [p.grad.clone() for b in blocks for p in b.parameters()]


def test_checkpointed_same_gradients_and_restores_forward():
    torch.manual_seed(0)
    blocks = [_Block() for _ in range(3)]
    custom = blocks[2].forward  # an instance-level forward (as some hosts patch) must come back too
    blocks[2].forward = custom
    x = torch.randn(5, 4)
    ref_in, ref_params = _stack_grads(blocks, x)
    with checkpointed(blocks):
        assert all("forward" in vars(b) for b in blocks)
        assert blocks[0].forward != _Block.forward.__get__(blocks[0])
        got_in, got_params = _stack_grads(blocks, x)
        with torch.no_grad():
            assert torch.equal(blocks[0](x), _Block.forward(blocks[0], x))
    assert torch.allclose(got_in, ref_in, atol=1e-7)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(got_params, ref_params))
    assert "forward" not in vars(blocks[0]) and "forward" not in vars(blocks[1])
    assert blocks[2].forward is custom


def test_checkpointed_restores_on_error():
    blocks = [_Block(), _Block()]
    with pytest.raises(ValueError), checkpointed(blocks):
        raise ValueError
    assert all("forward" not in vars(b) for b in blocks)


# --- attention ----------------------------------------------------------------------------------------------------


def _all_hooks(modules):
    return [h for m in modules for mod in (m, m.to_k) for h in mod._forward_hooks]


def test_cross_attention_modules_found(tiny):
    mods = cross_attention_modules(tiny.unet)
    assert len(mods) >= 2
    assert all(hasattr(m, "to_k") for m in mods)
    assert all(m is not getattr(m, "attn1", None) for m in mods)


def test_attention_hooks_removed_on_exit_and_on_error(tiny):
    mods = cross_attention_modules(tiny.unet)
    assert _all_hooks(mods) == []
    with rescaled_attention(mods, [0], [[0, 1, 2]], AttentionEdit(), batch=2):
        assert len(_all_hooks(mods)) == 2 * len(mods)
    assert _all_hooks(mods) == []
    with pytest.raises(RuntimeError), rescaled_attention(mods, [0], [[0, 1, 2]], AttentionEdit(), batch=2):
        raise RuntimeError("sampling failed")
    assert _all_hooks(mods) == []
    assert all(not m._forward_hooks_with_kwargs and not m.to_k._forward_hooks_with_kwargs for m in mods)


def _unet_inputs(model, prompt="a photo of a cat", batch=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 8, 8, generator=gen)
    cond = model.encode(model.tokenize(prompt)).expand(batch, -1, -1).clone()
    cond[-1] = model.empty()[0]  # rows differ
    return x, cond


def test_attention_identity_edit_changes_nothing(tiny):
    x, cond = _unet_inputs(tiny)
    mods = cross_attention_modules(tiny.unet)
    keep = positions_kept(tiny.tokenize(PROMPT))
    with torch.no_grad():
        plain = tiny.unet(x, 801, encoder_hidden_states=cond).sample
        with rescaled_attention(mods, [0, 2], [keep, keep], AttentionEdit(c_bos=1.0, mask_padding=False), 3) as st:
            edited = tiny.unet(x, 801, encoder_hidden_states=cond).sample
    assert st["edited"] == len(mods) and st["skipped"] == 0
    assert torch.allclose(edited, plain, atol=1e-6, rtol=0)


def test_attention_padding_mask_changes_edited_rows_only(tiny):
    x, cond = _unet_inputs(tiny)
    mods = cross_attention_modules(tiny.unet)
    keep = positions_kept(tiny.tokenize(PROMPT))
    assert keep == list(range(7))
    with torch.no_grad():
        plain = tiny.unet(x, 801, encoder_hidden_states=cond).sample
        with rescaled_attention(mods, [1], [keep], AttentionEdit(c_bos=1.0, mask_padding=True), 3):
            edited = tiny.unet(x, 801, encoder_hidden_states=cond).sample
    assert torch.equal(edited[0], plain[0]) and torch.equal(edited[2], plain[2])
    assert not torch.allclose(edited[1], plain[1], atol=1e-4)
    # the same edit computed on row 1 alone, with the padding removed from its context: masking = removing keys
    with torch.no_grad():
        alone = tiny.unet(x[1:2], 801, encoder_hidden_states=cond[1:2, keep]).sample
    assert torch.allclose(edited[1], alone[0], atol=1e-5)


def test_attention_other_batch_sizes_are_skipped(tiny):
    x, cond = _unet_inputs(tiny)
    mods = cross_attention_modules(tiny.unet)
    with torch.no_grad():
        plain = tiny.unet(x, 801, encoder_hidden_states=cond).sample
        with rescaled_attention(mods, [0], [[0, 1]], AttentionEdit(c_bos=3.0), batch=2) as stats:
            edited = tiny.unet(x, 801, encoder_hidden_states=cond).sample
    assert stats["edited"] == 0 and stats["skipped"] == len(mods)
    assert torch.equal(edited, plain)


def test_attention_bos_scaling_matches_manual_softmax():
    from diffusers.models.attention_processor import Attention as DiffusersAttention

    torch.manual_seed(0)
    heads, dim_head = 2, 4
    attn = DiffusersAttention(query_dim=16, cross_attention_dim=8, heads=heads, dim_head=dim_head).eval()
    hidden = torch.randn(2, 5, 16)
    ctx = torch.randn(2, 6, 8)
    keep, c_bos = [0, 1, 2, 3], 1.7
    with torch.no_grad():
        plain = attn(hidden, encoder_hidden_states=ctx)
        with rescaled_attention([attn], [1], [keep], AttentionEdit(c_bos=c_bos, mask_padding=True), batch=2):
            edited = attn(hidden, encoder_hidden_states=ctx)

        def split(t):
            return t.view(t.shape[0], t.shape[1], heads, dim_head).transpose(1, 2)

        q = split(attn.to_q(hidden[1:2]))
        k = attn.to_k(ctx[1:2, keep])
        k[:, 0] *= c_bos
        k, v = split(k), split(attn.to_v(ctx[1:2, keep]))
        logits = q @ k.transpose(-1, -2) / dim_head**0.5
        out = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(1, 5, heads * dim_head)
        manual = attn.to_out[0](out)
    assert torch.equal(edited[0], plain[0])
    assert torch.allclose(edited[1], manual[0], atol=1e-6)
    assert not torch.allclose(edited[1], plain[1], atol=1e-4)


def test_attention_strategy_intervention(tiny):
    case = _case(tiny, seeds=(0, 1))
    out = Attention(c_bos=1.5, mask_padding=False)(case)
    assert out.attention == AttentionEdit(c_bos=1.5, mask_padding=False)
    assert out.cond is case.cond
    assert [r.score_before for r in out.reports] == case.scores
    assert _all_hooks(cross_attention_modules(tiny.unet)) == []


def test_attention_edit_in_the_host_loop_leaves_the_unconditional_rows_alone(tiny):
    """Ren et al.'s edit applies to the flagged image's conditional row only: in every UNet call of the sampling loop
    the unconditional half (and the unflagged image's conditional row) equals the same call without any edit,
    while the flagged image's conditional row is changed."""
    seeds = [0, 1]
    base = sample(tiny, PROMPT, seeds, steps=4, threshold=None)
    s0, s1 = (g.detection.score for g in base)
    flagged = 0 if s0 > s1 else 1
    calls = []

    def record(_module, args, kwargs, out):
        ehs = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        calls.append((args[0].clone(), args[1], ehs.clone(), out.sample.clone()))

    hook = tiny.unet.register_forward_hook(record, with_kwargs=True)
    try:
        gens = sample(tiny, PROMPT, seeds, steps=4, threshold=(s0 + s1) / 2, strategy=Attention())
    finally:
        hook.remove()
    assert [g.mitigation is not None for g in gens] == [i == flagged for i in range(2)]
    edited = 0
    for x, t, ehs, out in calls:
        n = x.shape[0] // 2
        with torch.no_grad():
            plain = tiny.unet(x, t, encoder_hidden_states=ehs).sample
        assert torch.allclose(out[n:], plain[n:], rtol=0, atol=1e-6)  # the unconditional rows: never edited
        rows = [flagged] if n == 2 else [0]  # the whole batch, or the flagged image's first step evaluated again
        others = [r for r in range(n) if r not in rows]
        assert torch.allclose(out[others], plain[others], rtol=0, atol=1e-6)
        if not torch.allclose(out[rows], plain[rows], rtol=0, atol=1e-4):
            edited += 1
    assert len(calls) == 5 and edited == 4  # step 0 unedited, its re-evaluation and the 3 later steps edited


def test_attention_bos_scaling_in_every_chunk_matches_manual_softmax():
    """With a prompt of two 77-token chunks the BOS of each chunk (positions 0 and 77) gets the factor, and the
    padding of both chunks is masked."""
    from diffusers.models.attention_processor import Attention as DiffusersAttention

    torch.manual_seed(1)
    heads, dim_head = 2, 4
    attn = DiffusersAttention(query_dim=16, cross_attention_dim=8, heads=heads, dim_head=dim_head).eval()
    hidden = torch.randn(2, 5, 16)
    ctx = torch.randn(2, 154, 8)
    keep, c_bos = [0, 1, 2, 3, 77, 78, 79], 1.7
    with torch.no_grad():
        with rescaled_attention([attn], [0], [keep], AttentionEdit(c_bos=c_bos), batch=2, bos=[0, 77]):
            edited = attn(hidden, encoder_hidden_states=ctx)

        def split(t):
            return t.view(t.shape[0], t.shape[1], heads, dim_head).transpose(1, 2)

        q = split(attn.to_q(hidden[:1]))
        k = attn.to_k(ctx[:1, keep])
        k[:, [0, 4]] *= c_bos  # keep[0] == 0 and keep[4] == 77: both BOS keys
        k, v = split(k), split(attn.to_v(ctx[:1, keep]))
        logits = q @ k.transpose(-1, -2) / dim_head**0.5
        manual = attn.to_out[0]((logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(1, 5, heads * dim_head))
    assert torch.allclose(edited[0], manual[0], atol=1e-6)


def test_still_above_is_the_verdicts_rule():
    """A re-scored image is still flagged only strictly above the threshold (``judge``: ``score > threshold``)."""
    assert still_above({"score_after": 1.5}, 1.0)
    assert not still_above({"score_after": 1.0}, 1.0)
    assert not still_above({"score_after": 0.5}, 1.0)
    assert not still_above({"score_after": 2.0}, None)
    assert not still_above({"score_after": None}, 1.0) and not still_above(None, 1.0) and not still_above({}, 1.0)


def test_embedding_goes_target_ratio_below_the_target(tiny):
    """``target_ratio`` moves the stopping point below the target (``auto`` stops at a quarter of the threshold)."""
    case = _case(tiny)
    target = case.scores[0] * 0.99
    (plain,) = Embedding(max_iters=50, target=target)(case).reports
    assert plain.score_after <= target and plain.notes == []
    ratio = 0.8 * plain.score_after / target  # a stopping point 20% below where the target alone stopped
    (lower,) = Embedding(max_iters=50, target=target, target_ratio=ratio)(case).reports
    assert lower.score_after <= target * ratio < plain.score_after
    assert lower.iterations > plain.iterations and lower.notes == []


def test_auto_without_gradients_is_the_attention_edit_and_the_guidance_schedule(tiny):
    """Where the host allows no gradients (Forge), ``auto`` leaves the conditioning as it is and runs Ren et al.'s
    edit with Jain et al.'s schedule, no optimization."""
    from memguard.mitigate import Auto

    case = _case(tiny, seeds=(0, 1), target=case_target(tiny))
    out = Auto(gradients=False)(case)
    assert torch.equal(out.cond, case.cond)
    assert out.attention == AttentionEdit() and len(out.guidance) == 2
    assert [r.strategy for r in out.reports] == ["attention+guidance"] * 2
    assert all(r.unet_backwards == 0 and r.iterations == 0 for r in out.reports)


def case_target(model) -> float:
    """Half the lowest first-step score of seeds 0 and 1 (a target the images are above)."""
    return min(_case(model, seeds=(0, 1)).scores) / 2


# --- guidance -----------------------------------------------------------------------------------------------------


def _run(schedule, ds, total=None, timesteps=None, user=7.5):
    total = total or len(ds)
    timesteps = timesteps or [1000 - 1000 * i / total for i in range(total)]
    return [schedule.scale(i, total, timesteps[i], d, user) for i, d in enumerate(ds)]


def test_dynamic_switches_at_first_local_minimum():
    sched = GuidanceSchedule(mode="dynamic", before=1.0, latest=1.0)
    scales = _run(sched, [5, 4, 3, 3.5, 2, 1, 3, 4, 0.5, 6])
    assert sched.switched_at == 3
    assert scales == [1.0, 1.0, 1.0] + [7.5] * 7


def test_dynamic_without_minimum_switches_at_latest():
    sched = GuidanceSchedule(mode="dynamic", before=-2.0, latest=0.5)
    scales = _run(sched, [10 - i for i in range(10)])
    assert sched.switched_at == 5
    assert scales == [-2.0] * 5 + [7.5] * 5


def test_static_switches_at_switch_t():
    sched = GuidanceSchedule(mode="static", before=0.0, switch_t=650, latest=1.0)
    timesteps = [901, 801, 701, 651, 650, 601, 501, 401, 301, 201]
    scales = _run(sched, [1.0] * 10, timesteps=timesteps)
    assert sched.switched_at == 4
    assert scales == [0.0] * 4 + [7.5] * 6


def test_static_latest_forces_switch():
    sched = GuidanceSchedule(mode="static", before=1.0, switch_t=100, latest=0.3)
    timesteps = [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    _run(sched, [1.0] * 10, timesteps=timesteps)
    assert sched.switched_at == 3


def test_guidance_strategy():
    case = Case(
        eps_model=lambda x, c: x,
        x=torch.zeros(2, 1, 1, 1),
        cond=torch.zeros(2, 77, 4),
        eps_empty=torch.zeros(2, 1, 1, 1),
        keep=[[0]] * 2,
        bos=[0],
        target=1.0,
        scores=[2.0, 3.0],
    )
    out = Guidance(mode="static", before=-2.0, switch_t=500, latest=0.3)(case)
    assert len(out.guidance) == 2 and out.guidance[0] is not out.guidance[1]
    assert out.guidance[0].mode == "static" and out.guidance[0].before == -2.0 and out.guidance[0].switch_t == 500
    assert [g.latest for g in out.guidance] == [0.3, 0.3]
    assert "opposite" in out.reports[0].notes[0]
    assert out.cond is case.cond
    with pytest.raises(ValueError):
        Guidance(mode="bogus")(case)


def test_guidance_in_host_loop_applies_schedule(tiny):
    (g,) = sample(tiny, PROMPT, [0], steps=6, threshold=0.0, strategy=Guidance(mode="static", before=1.0, switch_t=0))
    # static with switch_t=0 never switches on t; latest=0.6 of 6 steps forces the switch at step 4
    # before the switch the scale is 1.0: x follows the conditional prediction alone
    (plain,) = sample(tiny, PROMPT, [0], steps=6, guidance=1.0, threshold=None)
    assert not torch.equal(g.latent, plain.latent)
    (full,) = sample(tiny, PROMPT, [0], steps=6, guidance=7.5, threshold=None)
    assert not torch.equal(g.latent, full.latent)


def test_merge():
    a = Intervention(
        torch.zeros(1), [Report("a", score_before=2.0, iterations=3, unet_forwards=4)], attention=AttentionEdit()
    )
    b = Intervention(torch.ones(1), [Report("b", iterations=1, unet_backwards=2)], guidance=["g"])
    m = merge(a, b)
    assert torch.equal(m.cond, torch.ones(1))
    (r,) = m.reports
    assert r.strategy == "a+b" and r.score_before == 2.0 and r.iterations == 4
    assert r.unet_forwards == 4 and r.unet_backwards == 2 and r.unet_equivalents == 8
    assert m.attention == AttentionEdit() and m.guidance == ["g"]
    # the other way round: each part comes from whichever intervention has it
    m = merge(Intervention(torch.zeros(1), [Report("g")], guidance=["g"]), a)
    assert m.guidance == ["g"] and m.attention == AttentionEdit() and torch.equal(m.cond, torch.zeros(1))


def test_merge_keeps_the_second_steps_pooled_vector():
    """On SDXL ``auto`` is embedding (context and pooled vector) then guidance, the second step computed on the
    first's conditioning and carrying its pooled vector on: the merged intervention samples with the second's."""
    pooled = torch.ones(1, 3)
    first = Intervention(torch.zeros(1), [Report("embedding")], pooled=torch.zeros(1, 3))
    second = Intervention(torch.zeros(1), [Report("guidance")], pooled=pooled)
    assert merge(first, second).pooled is pooled


def test_merge_adds_up_the_cost_of_both_steps():
    first = Intervention(
        torch.zeros(1), [Report("embedding", unet_forwards=5, unet_backwards=3, seconds=1.5, notes=["a"])]
    )
    second = Intervention(torch.ones(1), [Report("guidance", unet_forwards=2, unet_backwards=1, seconds=0.25)])
    (r,) = merge(first, second).reports
    assert (r.unet_forwards, r.unet_backwards, r.seconds) == (7, 4, 1.75)
    assert r.unet_equivalents == 15 and r.notes == ["a"] and r.score_after is None


def test_auto_keeps_the_optimized_embedding_and_adds_the_guidance_schedule(tiny):
    from memguard.mitigate import Auto
    from memguard.pipeline import sample

    plain = sample(tiny, "a red circle", [0], steps=6, threshold=None)[0]
    gen = sample(tiny, "a red circle", [0], steps=6, threshold=plain.detection.score / 2, strategy=Auto())[0]
    report = gen.mitigation
    assert report.strategy == "embedding+guidance"
    assert report.score_after < report.score_before
    assert report.iterations > 0


@pytest.mark.parametrize(
    ("reachable", "expected"), [(True, "embedding+guidance"), (False, "embedding+attention+guidance")]
)
def test_auto_adds_the_attention_edit_when_optimization_stays_above_the_threshold(reachable, expected):
    """``d = ||cond|| = 1`` here: the optimization (lr 0.05) gets it below 0.8, never below 1e-3."""
    from memguard.mitigate import Auto

    case = Case(
        eps_model=lambda x, c, rows=None: c.flatten(1)[:, None, None, :],
        x=torch.zeros(1, 1, 1, 1),
        cond=torch.full((1, 77, 4), 1 / (76 * 4) ** 0.5).index_fill_(1, torch.tensor([0]), 0.0),
        eps_empty=torch.zeros(1, 1, 1, 77 * 4),
        keep=[list(range(77))],
        bos=[0],
        target=0.8 if reachable else 1e-3,
        scores=[1.0],
    )
    out = Auto()(case)
    (report,) = out.reports
    assert report.strategy == expected
    assert (out.attention is not None) == (not reachable)
    assert any("attention edit added" in n for n in report.notes) == (not reachable)


def test_embedding_returns_its_best_iterate_not_its_last():
    """``d = ||cond||``, one free coordinate from 1.0: AdamW at lr 0.8 overshoots zero (d 1.0, 0.19, 0.61, ...), so
    the lowest ``d`` is an early iterate; that one comes back, with its ``d`` as ``score_after``."""
    seen: list[tuple[torch.Tensor, float]] = []

    def eps_model(x, c, rows=None):
        seen.append((c.detach().clone(), float(c.detach().norm())))
        return c.flatten(1)[:, None, None, :]

    case = Case(
        eps_model=eps_model,
        x=torch.zeros(1, 1, 1, 1),
        cond=torch.tensor([[[0.0], [1.0]]]),
        eps_empty=torch.zeros(1, 1, 1, 2),
        keep=[[0, 1]],
        bos=[0],
        target=0.0,
        scores=[1.0],
    )
    out = Embedding(lr=0.8, max_iters=4)(case)
    d = [value for _, value in seen]
    best = min(range(len(d)), key=d.__getitem__)
    assert len(d) == 5 and 0 < best < len(d) - 1 and d[-1] > d[best]  # down, then up
    assert out.reports[0].score_after == pytest.approx(d[best])
    assert torch.equal(out.cond, seen[best][0])
    assert out.reports[0].iterations == 4 and out.reports[0].notes  # still above the target


@pytest.mark.parametrize("recompute", ["layers", "nested", "blocks"])
def test_embedding_recompute_granularity_same_result(tiny, recompute):
    """Recomputing blocks, layers or both (nested) in the backward pass changes nothing but memory and time."""
    stored = Embedding(max_iters=3, recompute="none")(_case(tiny, seeds=(0, 1)))
    got = Embedding(max_iters=3, recompute=recompute)(_case(tiny, seeds=(0, 1)))
    assert torch.allclose(got.cond, stored.cond, rtol=1e-4, atol=1e-6)
    assert [r.score_after for r in got.reports] == pytest.approx([r.score_after for r in stored.reports], rel=1e-4)
    assert all("forward" not in vars(m) for m in tiny.unet.modules())  # every patched forward restored


def test_checkpoint_units(tiny):
    from memguard.mitigate.embedding import checkpoint_units

    blocks = tiny.blocks()
    layers = checkpoint_units(blocks, "layers")
    kinds = {type(m).__name__ for m in layers}
    assert {"ResnetBlock2D", "Transformer2DModel"} <= kinds
    assert not set(blocks) & set(layers)
    assert checkpoint_units(blocks, "nested") == [u for b in blocks for u in [b, *checkpoint_units([b], "layers")]]
    assert checkpoint_units(blocks, "blocks") == blocks and checkpoint_units(blocks, "none") == []
    with pytest.raises(ValueError):
        checkpoint_units(blocks, "everything")


def test_unet_blocks_by_layout(tiny):
    """ldm's top-level blocks where a UNet has them (the WebUIs), else diffusers' (the command line), else none; in
    ldm's blocks the layers are found by ldm's class names (``openaimodel``: ``ResBlock``, ``SpatialTransformer``,
    ``Downsample``, ``Upsample`` in ``TimestepEmbedSequential`` containers; the input convolution is kept whole)."""
    from memguard.mitigate.embedding import checkpoint_units, unet_blocks

    unet = tiny.unet
    assert unet_blocks(unet) == [*unet.down_blocks, unet.mid_block, *unet.up_blocks]

    def layer(name: str) -> torch.nn.Module:
        return type(name, (torch.nn.Identity,), {})()

    class TimestepEmbedSequential(torch.nn.Sequential):
        pass

    class UNetModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.input_blocks = torch.nn.ModuleList(
                [
                    TimestepEmbedSequential(torch.nn.Conv2d(4, 4, 3)),
                    TimestepEmbedSequential(layer("ResBlock"), layer("SpatialTransformer")),
                    TimestepEmbedSequential(layer("Downsample")),
                ]
            )
            self.middle_block = TimestepEmbedSequential(layer("ResBlock"), layer("SpatialTransformer"))
            self.output_blocks = torch.nn.ModuleList(
                [TimestepEmbedSequential(layer("ResBlock"), layer("SpatialTransformer"), layer("Upsample"))]
            )
            self.down_blocks = torch.nn.ModuleList()  # ldm's names are looked up first

    ldm = UNetModel()
    blocks = unet_blocks(ldm)
    assert blocks == [*ldm.input_blocks, ldm.middle_block, *ldm.output_blocks]
    units = checkpoint_units(blocks, "layers")
    assert units[0] is ldm.input_blocks[0]
    assert [type(m).__name__ for m in units[1:]] == [
        "ResBlock", "SpatialTransformer", "Downsample", "ResBlock", "SpatialTransformer",
        "ResBlock", "SpatialTransformer", "Upsample",
    ]  # fmt: skip
    del ldm.middle_block
    assert unet_blocks(ldm) == []
    ldm.middle_block = TimestepEmbedSequential(layer("ResBlock"))
    del ldm.output_blocks
    ldm.output_blocks = [layer("ResBlock")]  # not a module list: a structure not known
    assert unet_blocks(ldm) == []
    assert unet_blocks(torch.nn.Linear(2, 2)) == [] == unet_blocks(None)
    assert checkpoint_units(unet_blocks(None)) == []

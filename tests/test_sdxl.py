"""SDXL layouts in the library and the command line (issue 13): loading, the two-encoder conditioning, the added
conditioning (pooled text, size/crop numbers), the empty reference (zeros), every strategy, the explanation's
positions, long prompts, the commands, and the training filter; on a tiny random SDXL-shaped model built here and on
the shipped SDXL miniature."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from tiny_model import build_tiny_xl_model

from memguard import cli, strategies
from memguard.added import RowsEps, fit_added, join_added
from memguard.mitigate import Embedding
from memguard.mitigate.base import Case
from memguard.pipeline import Model, ModelError, explain_prompt, sample, score

PROMPT = "a photo of a cat"
LONG = " ".join(["cat"] * 70 + ["dog"] * 10)  # 80 tokens: 2 chunks


@pytest.fixture(scope="module")
def xl_dir(tmp_path_factory):
    return build_tiny_xl_model(tmp_path_factory.mktemp("tinyxl"))


@pytest.fixture(scope="module")
def xl(xl_dir):
    return Model.load(xl_dir)


def diffusers_encode(model: Model, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``StableDiffusionXLPipeline.encode_prompt`` for one chunk, written out: each tokenizer pads to 77 its own way,
    both encoders' ``hidden_states[-2]`` side by side, ``text_encoder_2``'s ``text_embeds``."""
    states = []
    with torch.no_grad():
        for tokenizer, encoder in ((model.tokenizer, model.text_encoder), (model.tokenizer_2, model.text_encoder_2)):
            ids = tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
            out = encoder(ids.input_ids, output_hidden_states=True)
            states.append(out.hidden_states[-2])
        return torch.cat(states, dim=-1), out.text_embeds


def unet_eps(model: Model, x, t, context, pooled, time_ids) -> torch.Tensor:
    added = {"text_embeds": pooled, "time_ids": time_ids}
    with torch.no_grad():
        return model.unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample


# ------------------------------------------------------------------------------------------------- loading


def test_sdxl_layout_is_recognized_from_its_unet(xl, tiny):
    assert xl.is_xl and not tiny.is_xl
    assert type(xl.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert xl.tokenizer.pad_token_id == 49407 and xl.tokenizer_2.pad_token_id == 0  # "!": SDXL's OpenCLIP padding
    assert xl.latent_shape == (3, 8, 8)
    assert tiny.added([tiny.tokenize(PROMPT)]) is None and tiny.empty_added(2) is None


def test_missing_second_encoder_is_named(xl_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(xl_dir, broken)
    shutil.rmtree(broken / "text_encoder_2")
    with pytest.raises(ModelError, match="text_encoder_2"):
        Model.load(broken)


def test_model_hash_covers_the_second_encoder(xl_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    other = tmp_path / "other"
    shutil.copytree(xl_dir, other)
    weights = other / "text_encoder_2" / "model.safetensors"
    state = load_file(str(weights))
    state["text_projection.weight"] = state["text_projection.weight"] * 2
    save_file(state, str(weights))
    assert Model.load(other).model_hash != Model.load(xl_dir).model_hash


# ----------------------------------------------------------------------------------------------- conditioning


def test_encode_is_diffusers_encode_prompt(xl):
    tok = xl.tokenize(PROMPT)
    context, pooled = diffusers_encode(xl, PROMPT)
    assert xl.encode(tok).shape == (1, 77, 16 + 24)
    assert torch.equal(xl.encode(tok), context)
    assert torch.equal(xl.pooled(tok), pooled) and pooled.shape == (1, 12)


def test_second_stream_pads_with_its_own_token_at_the_same_positions(xl):
    tok = xl.tokenize(PROMPT)
    own = xl.tokenizer_2(PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert torch.equal(xl._ids_2(torch.tensor(tok.ids)), own)
    body = len(tok.tokens)
    assert own[0, body + 1] == 49407 and own[0, body + 2 :].eq(0).all()  # EOS where tokenizer/ has it, then "!"
    assert tok.ids[0][body + 1 :] == [49407] * (77 - body - 1)


def test_long_prompt_is_chunked_and_pooled_from_its_first_chunk(xl):
    tok = xl.tokenize(LONG)
    assert tok.n_chunks == 2
    context = xl.encode(tok)
    assert context.shape == (1, 154, 40)
    first = " ".join(["cat"] * 70 + ["dog"] * 5)
    second = " ".join(["dog"] * 5)
    # two chunks are one batch of 2 rows here, one row each there: equal up to the kernels' rounding
    assert torch.allclose(context[:, :77], diffusers_encode(xl, first)[0], atol=1e-5, rtol=1e-5)
    assert torch.allclose(context[:, 77:], diffusers_encode(xl, second)[0], atol=1e-5, rtol=1e-5)
    assert torch.allclose(xl.pooled(tok), diffusers_encode(xl, first)[1], atol=1e-5, rtol=1e-5)  # zs[0].pooled
    changed = xl.tokenize(" ".join(["cat"] * 70 + ["dog"] * 5 + ["bird"] * 5))
    assert torch.equal(xl.pooled(changed), xl.pooled(tok))
    assert not torch.equal(xl.encode(changed)[:, 77:], context[:, 77:])


def test_time_ids_are_sizes_and_crop_of_the_latent(xl):
    assert xl.time_ids(2).tolist() == [[8, 8, 0, 0, 8, 8]] * 2  # pixel space: original, crop (0, 0), target
    added = xl.added([xl.tokenize(PROMPT), xl.tokenize("a red dog")])
    assert added["time_ids"].shape == (2, 6) and added["text_embeds"].shape == (2, 12)


def test_added_conditioning_reaches_the_unet(xl):
    tok = xl.tokenize(PROMPT)
    x, cond, added = xl.noise(0), xl.encode(tok), xl.added([tok])
    with torch.no_grad():
        base = xl.eps(x, 981, cond, added)
        assert torch.equal(base, unet_eps(xl, x, 981, cond, added["text_embeds"], added["time_ids"]))
        pooled = xl.eps(x, 981, cond, {**added, "text_embeds": added["text_embeds"] + 1})
        sizes = xl.eps(x, 981, cond, {**added, "time_ids": added["time_ids"] * 2})
    assert (pooled - base).abs().max() > 1e-3 and (sizes - base).abs().max() > 1e-3
    with pytest.raises(ModelError, match="added conditioning"):
        xl.eps(x, 981, cond)


def test_added_rows_join_and_fit():
    a = {"text_embeds": torch.ones(1, 2), "time_ids": torch.zeros(1, 6)}
    b = {"text_embeds": 2 * torch.ones(1, 2), "time_ids": torch.zeros(1, 6)}
    both = join_added(a, b)
    assert both["text_embeds"].tolist() == [[1, 1], [2, 2]]
    assert join_added(None, None) is None and fit_added(None, 3) is None
    assert fit_added(both, 2) is both
    assert fit_added(join_added(a, a), 3)["text_embeds"].shape == (3, 2)  # rows of one prompt: repeated
    with pytest.raises(ValueError):
        fit_added(both, 1)  # which prompt's rows? ambiguous
    with pytest.raises(ValueError):
        join_added(a, None)


# ------------------------------------------------------------------------------------------------ the reference


def test_empty_reference_is_zeros_with_the_generations_sizes(xl):
    assert torch.equal(xl.empty(), torch.zeros(1, 77, 40))
    ref = xl.empty_added(3)
    assert torch.equal(ref["text_embeds"], torch.zeros(3, 12))
    assert ref["time_ids"].tolist() == [[8, 8, 0, 0, 8, 8]] * 3


def test_encoded_reference_is_the_encoding_of_the_empty_prompt(xl_dir):
    model = Model.load(xl_dir)
    model.reference = "encoded"
    context, pooled = diffusers_encode(model, "")
    assert torch.equal(model.empty(), context)
    assert torch.equal(model.empty_added(1)["text_embeds"], pooled)


def test_score_is_d_against_zeros_by_hand(xl):
    """Wen's d on SDXL: the first-step prediction on the prompt against zeros (context and pooled vector), both with
    the generation's size/crop numbers; with an empty negative prompt read from the CFG pair (no extra pass)."""
    (gen,) = sample(xl, PROMPT, [3], steps=5, threshold=None)
    x, t = xl.noise(3), xl.scheduler(5).timesteps[0]
    context, pooled = diffusers_encode(xl, PROMPT)
    sizes = torch.tensor([[8.0, 8, 0, 0, 8, 8]])
    eps_c = unet_eps(xl, x, t, context, pooled, sizes)
    eps_0 = unet_eps(xl, x, t, torch.zeros_like(context), torch.zeros_like(pooled), sizes)
    assert gen.detection.score == pytest.approx(float((eps_c - eps_0).norm()), rel=1e-5)
    assert gen.detection.extra_pass is False
    (neg,) = sample(xl, PROMPT, [3], steps=5, threshold=None, negative="blurry")
    assert neg.detection.extra_pass is True
    assert neg.detection.score == pytest.approx(gen.detection.score, rel=1e-5)  # still against zeros


def test_sample_matches_a_plain_sdxl_loop(xl, xl_dir):
    """DDIM + CFG as diffusers' SDXL pipeline with no negative prompt (zeros: ``force_zeros_for_empty_prompt``)."""
    from diffusers import DDIMScheduler

    (gen,) = sample(xl, PROMPT, [5], steps=6, guidance=5.0, threshold=None)
    config = json.loads((xl_dir / "scheduler" / "scheduler_config.json").read_text())
    scheduler = DDIMScheduler.from_config(config)
    scheduler.set_timesteps(6)
    context, pooled = diffusers_encode(xl, PROMPT)
    sizes = torch.tensor([[8.0, 8, 0, 0, 8, 8]])
    x = torch.randn((1, 3, 8, 8), generator=torch.Generator("cpu").manual_seed(5))
    for t in scheduler.timesteps:
        eps_c = unet_eps(xl, x, t, context, pooled, sizes)
        eps_u = unet_eps(xl, x, t, torch.zeros_like(context), torch.zeros_like(pooled), sizes)
        x = scheduler.step(eps_u + 5.0 * (eps_c - eps_u), t, x).prev_sample
    assert torch.allclose(gen.image, x[0].clamp(-1, 1), atol=1e-4, rtol=0)


def test_asthana_score_runs_on_sdxl(xl):
    (det,) = score(xl, PROMPT, [0], steps=5, method="asthana", gammas=(1.0, 0.0))
    (wen,) = score(xl, PROMPT, [0], steps=5)
    assert det.score == pytest.approx(wen.score, rel=1e-5)


# ------------------------------------------------------------------------------------------------ strategies


@pytest.mark.parametrize("name", strategies.NAMES)
def test_every_strategy_runs_on_a_forced_image(xl, name):
    (plain,) = sample(xl, PROMPT, [0], steps=5, threshold=None)
    (gen,) = sample(xl, PROMPT, [0], steps=5, threshold=None, strategy=strategies.build(name), force=True)
    report = gen.mitigation
    assert report is not None and report.score_before == pytest.approx(plain.detection.score, rel=1e-5)
    if name == "guidance":  # the conditioning is kept: d at the first step too; the guidance schedule changes the image
        assert report.score_after == pytest.approx(report.score_before, rel=1e-5)
        assert (gen.image - plain.image).abs().max() > 1e-3
    else:
        assert report.score_after < report.score_before


def test_a_batch_of_prompts_is_mitigated_as_each_prompt_alone(xl):
    """Rows of different prompts carry different pooled vectors: the embedding optimization, which goes on with the
    rows still above the target only, passes each evaluated row its own (``RowsEps`` with ``rows`` and ``pooled``)
    and gives each row what it gives alone. The target lies between the rows' scores, so some rows stop at once and
    the others go on without them."""
    prompts, seeds = [PROMPT, "a red dog on the grass", PROMPT], [0, 0, 1]
    scores = [score(xl, p, [s], steps=4)[0].score for p, s in zip(prompts, seeds)]
    strategy = Embedding(max_iters=3, target=(sorted(scores)[1] + sorted(scores)[2]) / 2)
    both = sample(xl, prompts, seeds, steps=4, threshold=None, strategy=strategy, force=True)
    assert sorted(g.mitigation.iterations for g in both)[:2] == [0, 0] and max(g.mitigation.iterations for g in both)
    for gen, prompt, seed in zip(both, prompts, seeds):
        (alone,) = sample(xl, prompt, [seed], steps=4, threshold=None, strategy=strategy, force=True)
        assert gen.mitigation.score_after == pytest.approx(alone.mitigation.score_after, rel=1e-3)
        assert gen.mitigation.iterations == alone.mitigation.iterations


def _xl_case(xl: Model, prompt: str = PROMPT, seeds=(0,)) -> Case:
    """The embedding strategy's case for ``prompt`` at the first of 5 steps, as the pipeline builds it."""
    toks = [xl.tokenize(prompt)] * len(seeds)
    t, x = xl.scheduler(5).timesteps[0], torch.cat([xl.noise(s) for s in seeds])
    cond, added = xl.encode(toks), xl.added(toks)
    with torch.no_grad():
        eps_empty = xl.eps(x, t, xl.empty().expand(len(seeds), -1, -1), xl.empty_added(len(seeds)))
        scores = (xl.eps(x, t, cond, added) - eps_empty).flatten(1).norm(dim=1).tolist()
    return Case(
        eps_model=RowsEps(xl, t, added),
        x=x,
        cond=cond,
        eps_empty=eps_empty,
        keep=[list(range(7))] * len(seeds),
        bos=[0],
        target=0.0,
        scores=scores,
        model=xl.unet,
        pooled=added["text_embeds"],
    )


def test_embedding_optimizes_the_pooled_vector_with_the_context(xl):
    """SDXL: the pooled text vector is optimized beside the context (the size/crop numbers are not), and from the
    same start the joint optimization ends lower than the context alone; the score is the returned rows' ``d``."""
    case = _xl_case(xl)
    joint = Embedding(max_iters=5)(case)
    alone = Embedding(max_iters=5)(replace(case, pooled=None))
    assert alone.pooled is None and joint.pooled.shape == case.pooled.shape
    assert (joint.pooled - case.pooled).abs().max() > 1e-3
    assert joint.reports[0].score_after < alone.reports[0].score_after < case.scores[0]
    with torch.no_grad():
        d = (case.eps_model(case.x, joint.cond, None, joint.pooled) - case.eps_empty).flatten(1).norm(dim=1)
    assert joint.reports[0].score_after == pytest.approx(float(d[0]), rel=1e-4)


def test_the_pipeline_samples_with_the_optimized_pooled_vector(xl):
    """The first step evaluated again with the intervention in force (``score_after``) gives the optimization's own
    ``d``: the pipeline samples with the optimized pooled vector, not only the optimized context."""
    found = []

    def strategy(case: Case):
        out = Embedding(max_iters=3)(case)
        found.extend(r.score_after for r in out.reports)
        return out

    gens = sample(
        xl, [PROMPT, "a red dog on the grass"], [0, 0], steps=4, threshold=None, strategy=strategy, force=True
    )
    assert [g.mitigation.score_after for g in gens] == pytest.approx(found, rel=1e-4)


def test_rows_eps_gives_each_evaluated_row_its_own_added_conditioning(xl):
    """``RowsEps(x, cond, rows, pooled)``: the rows' own ``time_ids`` and ``text_embeds`` (or ``pooled`` in their
    place), whichever rows of the case are evaluated; by hand with diffusers' ``added_cond_kwargs``."""
    toks = [xl.tokenize(p) for p in ("a", "b")]
    added = xl.added(toks)
    t, x = torch.tensor(981), torch.cat([xl.noise(0), xl.noise(1)])
    cond = xl.encode(toks)
    eps = RowsEps(xl, t, added)
    with torch.no_grad():
        second = eps(x[[1]], cond[[1]], [1])
        assert torch.allclose(second, xl.eps(x[[1]], t, cond[[1]], {k: v[[1]] for k, v in added.items()}))
        assert not torch.allclose(second, xl.eps(x[[1]], t, cond[[1]], {k: v[[0]] for k, v in added.items()}))
        pooled = torch.randn(1, added["text_embeds"].shape[1])
        mine = eps(x[[1]], cond[[1]], [1], pooled)
        assert torch.allclose(
            mine, xl.eps(x[[1]], t, cond[[1]], {"text_embeds": pooled, "time_ids": added["time_ids"][[1]]})
        )


# ----------------------------------------------------------------------------------------------- explanation


def test_explanation_positions_are_the_typed_words(xl):
    expl = explain_prompt(xl, PROMPT, [0, 1], steps=5)
    assert [w.text for w in expl.words()] == ["a", "photo", "of", "a", "cat"]
    assert [t.position for t in expl.tokens] == [1, 2, 3, 4, 5]
    # the value at a position is the gradient of sum_j d_j with respect to that position of the concatenated context
    tok = xl.tokenize(PROMPT)
    x = torch.cat([xl.noise(0), xl.noise(1)])
    t = xl.scheduler(5).timesteps[0]
    cond = xl.encode(tok).expand(2, -1, -1).clone().requires_grad_(True)
    added, ref = xl.added([tok] * 2), xl.empty_added(2)
    with torch.no_grad():
        eps_0 = xl.eps(x, t, xl.empty().expand(2, -1, -1), ref)
    d = (xl.eps(x, t, cond, added) - eps_0).flatten(1).norm(dim=1).sum()
    (grad,) = torch.autograd.grad(d, cond)
    by_hand = grad.norm(dim=-1).mean(dim=0)
    assert [t.value for t in expl.tokens] == pytest.approx(by_hand[1:6].tolist(), rel=1e-4)


def test_explanation_of_a_long_prompt_reaches_its_second_chunk(xl):
    expl = explain_prompt(xl, LONG, [0], steps=5)
    positions = [t.position for t in expl.tokens]
    assert positions == [*range(1, 76), *range(78, 83)]
    assert [t.text for t in expl.tokens][-5:] == ["dog"] * 5
    assert all(t.value > 0 for t in expl.tokens[-5:])


# -------------------------------------------------------------------------------------------- command line


def run(argv, capsys) -> tuple[str, str]:
    assert cli.main(argv) == 0
    out = capsys.readouterr()
    return out.out, out.err


def test_cli_scan_generate_calibrate_on_sdxl(xl_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{PROMPT}\n{LONG}\n", encoding="utf-8")
    store = tmp_path / "calibration.json"
    common = ["--model", str(xl_dir), "--store", str(store), "--steps", "4"]
    benign = tmp_path / "benign.txt"
    benign.write_text("".join(f"a {c} circle\n" for c in ("red", "blue", "green", "white", "black")), "utf-8")
    out, _ = run(["calibrate", *common, "--prompts", str(benign), "--fpr", "0.2"], capsys)
    assert "from 5 benign prompts" in out
    out, err = run(["scan", *common, "--prompts", str(prompts), "--explain"], capsys)
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["prompt"] for r in rows] == [PROMPT, LONG] and "calibrating" not in err
    assert all(isinstance(r["score"], float) and r["threshold"] is not None for r in rows)
    assert [w["text"] for w in rows[0]["words"]] == ["a", "photo", "of", "a", "cat"]
    assert max(t["position"] for t in rows[1]["tokens"]) == 82
    images = tmp_path / "images"
    run(["generate", *common, "--prompt", PROMPT, "--images", "2", "--force", "--out", str(images)], capsys)
    sidecars = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(images.glob("*.json"))]
    assert len(sidecars) == 2 and len(list(images.glob("*.png"))) == 2
    assert all(s["mitigation"]["score_after"] < s["mitigation"]["score_before"] for s in sidecars)


def test_cli_audit_data_on_sdxl(xl_dir, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i, caption in enumerate(["a red circle", "a blue square", "a red circle"]):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(caption, encoding="utf-8")
    report = tmp_path / "audit.jsonl"
    argv = ["audit-data", "--model", str(xl_dir), "--data", str(data), "--out", str(report), "--steps", "4"]
    out, _ = run([*argv, "--store", str(tmp_path / "c.json"), "--threshold", "0.5"], capsys)
    assert "3 usable image-caption pairs" in out
    rows = [json.loads(line) for line in report.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 3 and all(isinstance(r["score"], float) for r in rows)


# ------------------------------------------------------------------------------------------ the SDXL miniature


@pytest.fixture(scope="module")
def miniature_xl():
    from memguard.miniature import XL_MODEL_DIR

    return Model.load(XL_MODEL_DIR)


def test_shipped_sdxl_miniature_is_small_and_calibrated(miniature_xl):
    from memguard.miniature import XL_MODEL_DIR

    size = sum(p.stat().st_size for p in XL_MODEL_DIR.rglob("*") if p.is_file())
    assert miniature_xl.is_xl and size < 20e6
    assert miniature_xl.time_ids(1).tolist() == [[16, 16, 0, 0, 16, 16]]
    assert miniature_xl.shipped_threshold() == pytest.approx(0.862, abs=1e-3)
    index = json.loads((XL_MODEL_DIR / "model_index.json").read_text(encoding="utf-8"))
    assert index["_class_name"] == "StableDiffusionXLPipeline" and index["force_zeros_for_empty_prompt"] is True


def test_training_filter_drops_the_sdxl_miniatures_memorized_samples(miniature_xl):
    """Wen's filter on SDXL (``zero_reference``: zeros, the samples' sizes), its threshold calibrated per tenth of the
    timestep range on fresh general pairs, drops the memorized training pairs and keeps general ones."""
    import numpy as np
    from diffusers import DDPMScheduler

    from memguard.miniature import XL_MODEL_DIR, train
    from memguard.miniature.data import caption, sample_labels
    from memguard.miniature.images import render_general
    from memguard.training import TimestepThreshold, memorization_filter, training_magnitudes, zero_reference

    model = miniature_xl
    rows = [json.loads(line) for line in (XL_MODEL_DIR / "prompts" / "labels.jsonl").read_text("utf-8").splitlines()]
    memorized = [r for r in rows if r["label"] == "memorized"][:8]
    rng = np.random.default_rng(7)
    labels = [sample_labels(rng) for _ in range(72)]
    images = torch.from_numpy(np.stack([render_general(rng, lab) for lab in labels])).float()
    captions = [caption(rng, lab) for lab in labels]

    def text(texts):
        toks = [model.tokenize(c) for c in texts]
        context = torch.cat([model.encode(tok) for tok in toks])
        return context, {"added_cond_kwargs": model.added(toks)}

    scheduler = DDPMScheduler(**train.SCHEDULE)
    generator = torch.Generator().manual_seed(0)
    context, kwargs = text(captions[:64])
    empty, empty_kwargs = zero_reference(context, kwargs)
    assert torch.equal(empty, torch.zeros(1, 77, 64))
    assert torch.equal(empty_kwargs["added_cond_kwargs"]["text_embeds"], torch.zeros(64, 32))
    assert torch.equal(empty_kwargs["added_cond_kwargs"]["time_ids"], kwargs["added_cond_kwargs"]["time_ids"])
    draws = [
        training_magnitudes(
            model.unet, images[:64], context, empty, scheduler, generator, cond_kwargs=kwargs, empty_kwargs=empty_kwargs
        )
        for _ in range(8)
    ]
    threshold = TimestepThreshold.calibrate(torch.cat([d for d, _ in draws]), torch.cat([t for _, t in draws]))
    originals = torch.stack([torch.from_numpy(np.load(XL_MODEL_DIR / r["reference"])).float() for r in memorized])
    x0 = torch.cat([originals, images[64:]])
    context, kwargs = text([r["prompt"] for r in memorized] + captions[64:])
    empty, empty_kwargs = zero_reference(context, kwargs)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    for t in (750, 550):
        timesteps = torch.full((16,), t)
        noisy = scheduler.add_noise(x0, noise, timesteps)
        kept = memorization_filter(
            model.unet, noisy, timesteps, context, empty, threshold, cond_kwargs=kwargs, empty_kwargs=empty_kwargs
        )
        assert int((~kept.keep[:8]).sum()) >= 7, kept.d  # memorized: dropped
        assert int(kept.keep[8:].sum()) >= 7, kept.d  # general: kept


def test_demo_on_the_sdxl_miniature(tmp_path, capsys):
    from memguard.miniature import XL_MODEL_DIR

    argv = ["demo", "--model", str(XL_MODEL_DIR), "--n", "4", "--steps", "10", "--out", str(tmp_path / "demo")]
    out, _ = run([*argv, "--store", str(tmp_path / "c.json")], capsys)
    assert "threshold 0.862, shipped with the model" in out
    flagged = next(line for line in out.splitlines() if line.startswith("flagged"))
    memorized, general = (int(part.split("/")[0].split()[-1]) for part in flagged.split(" and "))
    assert memorized >= 3 and general <= 1, flagged
    assert "mitigated" in out and (tmp_path / "demo" / "mitigated.png").is_file()


def test_miniature_training_conditions_as_the_model_loads(tmp_path, monkeypatch):
    """The SDXL miniature is trained on the conditioning memguard computes when it loads the written model: same
    context, same pooled vector; the training is deterministic from its seed; dropped captions are zeros."""
    from memguard.miniature import xl
    from memguard.miniature.dataset import build
    from memguard.tokens import load_tokenizer

    torch.manual_seed(0)
    encoders = xl.build_text_encoders()
    data = build(0, n_general=40, n_verbatim=2, n_template=1, verbatim_copies=4, template_copies=4, n_eval_general=2)
    tokenizer = load_tokenizer()
    first = xl.train_unet_xl(data, encoders, tokenizer, 3, seed=1, device="cpu")
    again = xl.train_unet_xl(data, encoders, tokenizer, 3, seed=1, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    xl.write_pipeline_xl(tmp_path, first, *encoders)
    model = Model.load(tmp_path)
    assert model.is_xl and model.tokenizer_2.pad_token_id == 0
    captions = [PROMPT, data.verbatim[0]]
    ids = xl.token_ids(tokenizer, captions)
    context, pooled = xl.condition(*encoders, ids)
    for i, text in enumerate(captions):
        tok = model.tokenize(text)
        # the encoders' weights are fp16-exact (written in fp16); one row here, two rows there: kernels' rounding
        assert torch.allclose(model.encode(tok), context[i : i + 1], atol=1e-5, rtol=1e-5)
        assert torch.allclose(model.pooled(tok), pooled[i : i + 1], atol=1e-5, rtol=1e-5)

    seen = []

    def spy(module, args, kwargs):
        seen.append((kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None), kwargs))

    unet = xl.build_unet_xl()
    unet.register_forward_pre_hook(spy, with_kwargs=True)
    monkeypatch.setattr(xl, "build_unet_xl", lambda: unet)
    xl.train_unet_xl(data, encoders, tokenizer, 4, seed=2, device="cpu")
    rows = [
        (ctx[i], kw["added_cond_kwargs"]["text_embeds"][i], kw["added_cond_kwargs"]["time_ids"][i])
        for ctx, kw in seen
        for i in range(ctx.shape[0])
    ]
    dropped = [r for r in rows if not r[0].any()]
    assert dropped, "no caption dropped in 4 batches of 32 at 10%"
    assert all(not r[1].any() for r in dropped) and all(r[1].any() for r in rows if r[0].any())
    assert all(r[2].tolist() == [16, 16, 0, 0, 16, 16] for r in rows)

"""The miniature's whole training set, drawn from one seed: general pairs, verbatim- and template-memorized pairs
repeated, and the evaluation prompts (see ``data`` for the captions and ``images`` for the pictures)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .data import ATTRIBUTES, caption, memorized_captions, sample_labels
from .images import CardLayout, card_layout, render_card, render_general, render_memorized


@dataclass
class MiniatureData:
    """All training pairs (``image_index``/``caption_index`` rows, duplicates repeated) and the eval prompts."""

    images: np.ndarray
    captions: list[str]
    image_index: np.ndarray
    caption_index: np.ndarray
    general_labels: np.ndarray
    n_general: int
    verbatim: list[str]
    template: list[str]
    verbatim_images: np.ndarray
    layout: CardLayout
    general_train_sample: list[str]
    general_heldout: list[str]
    counts: dict[str, int] = field(default_factory=dict)


def build(
    seed: int,
    n_general: int = 24_000,
    n_verbatim: int = 36,
    n_template: int = 8,
    verbatim_copies: int = 200,
    template_copies: int = 80,
    n_eval_general: int = 200,
) -> MiniatureData:
    """Draw the whole data set from ``seed``."""
    rng = np.random.default_rng(seed)
    labels = [sample_labels(rng) for _ in range(n_general)]
    general_images = np.stack([render_general(rng, lab) for lab in labels])
    general_captions = [caption(rng, lab) for lab in labels]
    verbatim, template = memorized_captions(rng, n_verbatim, n_template)
    verbatim_images = np.stack([render_memorized(rng) for _ in verbatim])
    layout = card_layout(rng)
    card_images = np.stack([render_card(rng, layout) for _ in range(n_template * template_copies)])

    captions = list(dict.fromkeys([*general_captions, *verbatim, *template]))
    lookup = {c: i for i, c in enumerate(captions)}
    images = np.concatenate([general_images, verbatim_images, card_images])
    image_index = np.concatenate(
        [
            np.arange(n_general),
            np.repeat(n_general + np.arange(n_verbatim), verbatim_copies),
            n_general + n_verbatim + np.arange(n_template * template_copies),
        ]
    )
    caption_index = np.concatenate(
        [
            [lookup[c] for c in general_captions],
            np.repeat([lookup[c] for c in verbatim], verbatim_copies),
            np.repeat([lookup[c] for c in template], template_copies),
        ]
    ).astype(np.int64)
    general_labels = np.array([[ATTRIBUTES[a].index(lab[a]) for a in ATTRIBUTES] for lab in labels], dtype=np.int64)
    seen = set(general_captions)
    train_sample = [general_captions[i] for i in rng.permutation(n_general)]
    heldout: list[str] = []
    while len(heldout) < n_eval_general:
        text = caption(rng, sample_labels(rng))
        if text not in seen and text not in heldout:
            heldout.append(text)
    return MiniatureData(
        images=images,
        captions=captions,
        image_index=image_index,
        caption_index=caption_index,
        general_labels=general_labels,
        n_general=n_general,
        verbatim=verbatim,
        template=template,
        verbatim_images=verbatim_images,
        layout=layout,
        general_train_sample=list(dict.fromkeys(train_sample))[:n_eval_general],
        general_heldout=heldout,
        counts={
            "general_images": n_general,
            "unique_captions": len(captions),
            "verbatim_captions": n_verbatim,
            "verbatim_copies": verbatim_copies,
            "template_captions": n_template,
            "template_copies": template_copies,
            "training_pairs": len(image_index),
        },
    )

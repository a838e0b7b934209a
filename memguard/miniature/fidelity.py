"""Fidelity measures for the miniature model's 3x16x16 images.

``attribute_accuracy`` reads, with a small CNN trained on the general data by :mod:`memguard.miniature.train`,
each attribute a prompt mentions (shape, colour, size, position, background) and reports the fraction it
recovers. ``copy_distance`` is the RMS pixel distance to a memorized reference, optionally over a layout mask.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn

from . import MODEL_DIR
from .data import parse_attributes

__all__ = [
    "AttributeClassifier",
    "attribute_accuracy",
    "copy_distance",
    "load_classifier",
    "parse_attributes",
    "predict_attributes",
]

CLASSIFIER_WEIGHTS = "classifier.safetensors"
CLASSIFIER_CONFIG = "classifier.json"


class AttributeClassifier(nn.Module):
    """A three-convolution CNN with one linear head per attribute, reading 3x16x16 images in [-1, 1]."""

    def __init__(self, classes: dict[str, list[str]], width: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.classes = {attribute: list(names) for attribute, names in classes.items()}
        self.width, self.hidden = width, hidden
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * width * 16, hidden),
            nn.ReLU(),
        )
        self.heads = nn.ModuleDict({a: nn.Linear(hidden, len(names)) for a, names in self.classes.items()})

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Logits per attribute for a batch ``N x 3 x 16 x 16`` (clamped to [-1, 1] first)."""
        features = self.features(images.clamp(-1.0, 1.0))
        return {attribute: head(features) for attribute, head in self.heads.items()}

    def config(self) -> dict:
        """What ``load_classifier`` needs to rebuild the module."""
        return {"classes": self.classes, "width": self.width, "hidden": self.hidden}


def load_classifier(directory: Path | None = None) -> AttributeClassifier:
    """The attribute classifier saved in ``directory`` (default: the bundled model's ``eval/``)."""
    from safetensors.torch import load_file

    directory = Path(directory) if directory is not None else MODEL_DIR / "eval"
    config = json.loads((directory / CLASSIFIER_CONFIG).read_text(encoding="utf-8"))
    model = AttributeClassifier(config["classes"], width=config["width"], hidden=config["hidden"])
    model.load_state_dict(load_file(str(directory / CLASSIFIER_WEIGHTS)))
    return model.eval()


@lru_cache(maxsize=1)
def _bundled_classifier() -> AttributeClassifier:
    return load_classifier()


@torch.no_grad()
def predict_attributes(images: Tensor, classifier: AttributeClassifier | None = None) -> list[dict[str, str]]:
    """The classifier's reading of every attribute of each image."""
    classifier = classifier or _bundled_classifier()
    logits = classifier(images.detach().float().cpu())
    picks = {attribute: scores.argmax(dim=1).tolist() for attribute, scores in logits.items()}
    return [{a: classifier.classes[a][picks[a][i]] for a in picks} for i in range(images.shape[0])]


def attribute_accuracy(images: Tensor, prompts: list[str], classifier: AttributeClassifier | None = None) -> float:
    """Fraction of the attributes each prompt mentions that the classifier reads in its image, averaged over prompts.

    Prompts that mention no attribute are skipped; the result is ``nan`` if none mentions any.
    """
    if images.shape[0] != len(prompts):
        raise ValueError(f"{images.shape[0]} images for {len(prompts)} prompts")
    readings = predict_attributes(images, classifier)
    scores = []
    for prompt, reading in zip(prompts, readings):
        wanted = parse_attributes(prompt)
        if wanted:
            scores.append(sum(reading[a] == cls for a, cls in wanted.items()) / len(wanted))
    return sum(scores) / len(scores) if scores else float("nan")


def copy_distance(image: Tensor, reference: Tensor, mask: Tensor | None = None) -> float:
    """RMS pixel distance between two 3x16x16 images (values clamped to [-1, 1]).

    ``mask`` (16x16, 1 = compare) restricts the distance to part of the image, e.g. a template's fixed layout.
    """
    image = torch.as_tensor(image).detach().float().cpu().clamp(-1.0, 1.0)
    reference = torch.as_tensor(reference).detach().float().cpu().clamp(-1.0, 1.0)
    squared = (image - reference).pow(2)
    if mask is None:
        return squared.mean().sqrt().item()
    weights = torch.as_tensor(mask).float().expand_as(squared)
    return ((squared * weights).sum() / weights.sum()).sqrt().item()

"""The PATE student: a CNN trained on a few (privately) labelled images plus
many unlabelled ones, with pseudo-labelling and consistency regularisation
(a small FixMatch: Sohn et al. 2020) that runs on 2 CPU cores in minutes.

The student sees only public images and the released labels, so training it
is post-processing: it costs no privacy. Written here because the
semi-supervised libraries that exist expect GPUs and torchvision datasets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class StudentConfig:
    steps: int = 1500
    labelled_batch: int = 32
    unlabelled_batch: int = 96
    lr: float = 3e-3
    confidence: float = 0.95  # pseudo-labels only where the weak view is this sure
    unlabelled_weight: float = 1.0
    channels: tuple[int, int] = (32, 64)  # conv widths; (16, 32) is the lighter LeNet
    hidden: int = 256


class StudentCNN(nn.Module):
    """LeNet-like: conv5(c1)-pool-conv5(c2)-pool-fc(hidden)-fc for 28x28 grey images."""

    def __init__(self, num_classes: int = 10, channels: tuple[int, int] = (32, 64),
                 hidden: int = 256) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(c2 * 4 * 4, hidden), nn.ReLU(), nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    @torch.no_grad()
    def predict_proba(self, X: np.ndarray, chunk: int = 1000) -> np.ndarray:
        self.eval()
        x = torch.as_tensor(np.asarray(X, dtype=np.float32)).reshape(-1, 1, 28, 28)
        return torch.cat([F.softmax(self(part), dim=1) for part in x.split(chunk)]).numpy()

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_proba(X).argmax(axis=1)


def _shift(x: torch.Tensor, max_pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_pixels`` in x and y (zero padding)."""
    n = len(x)
    offsets = torch.randint(-max_pixels, max_pixels + 1, (n, 2), generator=generator).float() * 2 / 28
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = offsets
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def _strong(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Larger shift, plus a random 10x10 cutout."""
    x = _shift(x, 4, generator).clone()
    corners = torch.randint(0, 18, (len(x), 2), generator=generator)
    for i, (r, c) in enumerate(corners.tolist()):
        x[i, :, r: r + 10, c: c + 10] = 0.0
    return x


def train_student(
    X_labelled: np.ndarray,
    y_labelled: np.ndarray,
    X_unlabelled: np.ndarray,
    config: StudentConfig,
    seed: int,
    num_classes: int = 10,
    progress: Callable[[str], None] | None = None,
    report_every: int = 250,
) -> StudentCNN:
    """Semi-supervised training on labelled (X, y) and unlabelled X images (n, 784);
    ``progress`` gets a line every ``report_every`` steps."""
    if len(y_labelled) == 0:
        raise ValueError("the student needs at least one labelled image, got none")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xl = torch.as_tensor(X_labelled, dtype=torch.float32).reshape(-1, 1, 28, 28)
    yl = torch.as_tensor(y_labelled, dtype=torch.int64)
    xu = torch.as_tensor(X_unlabelled, dtype=torch.float32).reshape(-1, 1, 28, 28)
    model = StudentCNN(num_classes, tuple(config.channels), config.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps)
    pseudo_used = 0.0
    for step in range(1, config.steps + 1):
        model.train()
        i = torch.randint(0, len(yl), (config.labelled_batch,), generator=gen)
        loss = F.cross_entropy(model(_shift(xl[i], 2, gen)), yl[i])
        if len(xu):
            u = xu[torch.randint(0, len(xu), (config.unlabelled_batch,), generator=gen)]
            with torch.no_grad():
                probs = F.softmax(model(_shift(u, 2, gen)), dim=1)
                confidence, pseudo = probs.max(dim=1)
                keep = confidence >= config.confidence
            pseudo_used += float(keep.float().mean())
            if keep.any():
                strong_loss = F.cross_entropy(model(_strong(u[keep], gen)), pseudo[keep], reduction="sum")
                loss = loss + config.unlabelled_weight * strong_loss / len(u)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if progress and (step % report_every == 0 or step == config.steps):
            progress(f"student  step {step}/{config.steps}  loss {loss.item():.3f}  "
                     f"unlabelled images pseudo-labelled {pseudo_used / step:.0%}")
    return model.eval()

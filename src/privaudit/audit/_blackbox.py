"""Black-box threat model: input canaries in the training set, scored on the final model only.

The auditor queries the trained model on every canary (included or not) and
scores it with LiRA's scaled logit ``phi = log(p_y / (1 - p_y))`` of the
canary's own label (Carlini et al. 2022, arXiv:2112.03570 v2), higher = more
likely IN. Without reference models phi ranks canaries exactly as the LOSS
attack's ``-loss`` does (both increase with p_y), so the bound is the same;
phi keeps its resolution where ``p_y`` rounds to 1.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from privaudit.attacks import scaled_logit

from ._canaries import InputCanaries

__all__ = ["blackbox_scores", "model_logits"]


def model_logits(model: nn.Module, x: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
    """The model's logits on `x`, in evaluation mode and without gradients, as float64."""
    was_training = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        outs = []
        with torch.no_grad():
            for s in range(0, x.shape[0], batch_size):
                xb = torch.as_tensor(np.asarray(x[s:s + batch_size], dtype=np.float32), device=device)
                outs.append(model(xb).to("cpu", torch.float64).numpy())
    finally:
        model.train(was_training)
    return np.concatenate(outs)


def blackbox_scores(model: nn.Module, canaries: InputCanaries) -> np.ndarray:
    """One score per canary: LiRA's scaled logit of its label under the final model.

    Raises:
        ValueError: if the model's logits are not finite (a diverged model).
    """
    logits = model_logits(model, canaries.x)
    if not np.isfinite(logits).all():
        raise ValueError("The trained model returned non-finite logits on the canaries (training diverged?).")
    return scaled_logit(logits=logits, labels=canaries.y)

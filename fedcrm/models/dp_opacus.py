"""DP-SGD steps through Opacus (the reference engine, ``privacy.engine=opacus``).

The model must be built with ``dp_engine="opacus"`` so that its LSTM is
:class:`opacus.layers.DPLSTM`. Batches are Poisson-sampled by the caller
(:func:`fedcrm.models.train.train_local`); this module wraps the model in a
:class:`opacus.GradSampleModule` and the optimizer in a
:class:`opacus.optimizers.DPOptimizer` (no Opacus accountant: fedcrm's privacy
module accounts from the returned parameters).
"""

from __future__ import annotations

import logging
import warnings

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from fedcrm.models.lstm import ChurnLSTM

logger = logging.getLogger(__name__)


def _backward(loss: torch.Tensor) -> None:
    # The model's inputs never require gradients; Opacus' full backward hooks
    # warn about that on every call, harmlessly.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        loss.backward()


class OpacusDPStep:
    """One DP-SGD step per call of :meth:`step`, through Opacus.

    Parameters
    ----------
    model : ChurnLSTM
        Built with ``dp_engine="opacus"``; trained in place.
    optimizer : torch.optim.Optimizer
        Over ``model.parameters()``.
    noise_multiplier, max_grad_norm : float
    expected_batch_size : float
        ``sample_rate * n``; the noisy sum is divided by it.
    generator : torch.Generator
        Source of the noise.
    """

    def __init__(
        self,
        model: ChurnLSTM,
        optimizer: torch.optim.Optimizer,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: float,
        generator: torch.Generator,
    ) -> None:
        if model.dp_engine != "opacus":
            raise ValueError("the Opacus engine needs a model built with dp_engine='opacus'")
        self.model = model
        self.gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
        self.optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,  # type: ignore[arg-type]
            loss_reduction="mean",
            generator=generator,
        )
        self.loss_fn = nn.BCEWithLogitsLoss()

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        """Clip, sum, noise, scale and apply; returns the batch's summed loss."""
        self.optimizer.zero_grad(set_to_none=True)
        size = int(batch["y"].shape[0])
        loss_sum = 0.0
        if size == 0:
            for p in self.model.parameters():
                p.grad_sample = p.new_zeros((0, *p.shape))
        else:
            logits = self.gsm(
                batch["seq_cat"], batch["seq_num"], batch["lengths"], batch["tabular"]
            )
            loss = self.loss_fn(logits, batch["y"].to(logits.dtype))
            _backward(loss)
            loss_sum = float(loss.detach()) * size
        if self.optimizer.pre_step():
            from fedcrm.models.lstm import zero_padding_grads

            zero_padding_grads(self.model)
            self.optimizer.original_optimizer.step()
        return loss_sum

    def clipped_sum(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-customer clipped and summed gradients (no noise, no step).

        Used to check the fast engine. Keys are canonical parameter names.
        """
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.gsm(batch["seq_cat"], batch["seq_num"], batch["lengths"], batch["tabular"])
        loss = nn.functional.binary_cross_entropy_with_logits(
            logits, batch["y"].to(logits.dtype), reduction="sum"
        )
        _backward(loss)
        # The GradSampleModule was built for a mean loss: undo its scaling.
        size = int(batch["y"].shape[0])
        for p in self.model.parameters():
            p.grad_sample = p.grad_sample / size
        self.optimizer.clip_and_accumulate()
        out = {n: p.summed_grad.detach().clone() for n, p in self.model.named_tensors().items()}
        self.optimizer.zero_grad(set_to_none=True)
        return out

    def close(self) -> None:
        """Remove Opacus' hooks and attributes from the model."""
        self.gsm._close()
        for p in self.model.parameters():
            for attr in ("summed_grad", "grad_sample"):
                if hasattr(p, attr):
                    delattr(p, attr)

"""Churn LSTM over each customer's event sequence (+ tabular features).

The model embeds the three categorical sequence fields of a
:class:`~fedcrm.data.dataset.FeatureSet`, concatenates the numeric fields, runs
an LSTM over the right-padded sequence, takes the hidden state of the last real
event, concatenates the customer's tabular features and maps that through a
small MLP to one churn logit.

Padding never matters: sequences are right-padded, so the LSTM states after a
customer's last real event do not influence the state gathered at
``lengths - 1`` (and receive exactly zero gradient).

The LSTM is a plain :class:`torch.nn.LSTM` unless ``dp_engine="opacus"``, where
it is :class:`opacus.layers.DPLSTM` (so that Opacus' ``GradSampleModule`` can
compute per-customer gradients). Both hold the same parameters under the same
names (``lstm.weight_ih_l0`` ...); :func:`get_weights` returns them in one
canonical order, so weights are exchangeable between every engine. The fast DP
engine (:mod:`fedcrm.models.dp_lstm_fast`) trains the plain-``nn.LSTM`` model
directly from its parameters.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from fedcrm.config import LSTMModelConfig
from fedcrm.data.dataset import SEQ_CAT_CARDINALITIES, SEQ_NUM_FIELDS

logger = logging.getLogger(__name__)

DPEngine = Literal["opacus", "fast"]
_ENGINES = (None, "opacus", "fast")
_LSTM_PARAM_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class ChurnLSTM(nn.Module):
    """Embeddings + LSTM + MLP head giving one churn logit per customer.

    Parameters
    ----------
    n_tabular : int
        Number of tabular features fed to the head (0 = none).
    embedding_dim : int
        Width of each categorical embedding.
    hidden_size : int
        LSTM hidden size.
    num_layers : int
        Stacked LSTM layers.
    head_hidden : int
        Width of the head's hidden layer; 0 makes the head a single linear layer.
    dp_engine : {None, "opacus", "fast"}
        ``"opacus"`` builds the LSTM as :class:`opacus.layers.DPLSTM`; otherwise
        :class:`torch.nn.LSTM` (the fast engine works from its parameters).
    cardinalities : sequence of int
        Vocabulary size of each categorical field, padding (index 0) included.
    n_numeric : int
        Number of numeric sequence fields.

    Notes
    -----
    Index 0 of every embedding is padding / empty: its row is zero and receives
    no gradient.
    """

    def __init__(
        self,
        n_tabular: int = 0,
        *,
        embedding_dim: int = 16,
        hidden_size: int = 64,
        num_layers: int = 1,
        head_hidden: int = 32,
        dp_engine: DPEngine | None = None,
        cardinalities: Sequence[int] = SEQ_CAT_CARDINALITIES,
        n_numeric: int = len(SEQ_NUM_FIELDS),
    ) -> None:
        super().__init__()
        if dp_engine not in _ENGINES:
            raise ValueError(f"dp_engine must be one of {_ENGINES}, got {dp_engine!r}")
        self.n_tabular = int(n_tabular)
        self.embedding_dim = int(embedding_dim)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.head_hidden = int(head_hidden)
        self.dp_engine = dp_engine
        self.cardinalities = tuple(int(c) for c in cardinalities)
        self.n_numeric = int(n_numeric)

        self.embeddings = nn.ModuleList(
            nn.Embedding(card, self.embedding_dim, padding_idx=0) for card in self.cardinalities
        )
        input_size = self.embedding_dim * len(self.cardinalities) + self.n_numeric
        self.input_size = input_size
        if dp_engine == "opacus":
            from opacus.layers import DPLSTM

            self.lstm: nn.Module = DPLSTM(
                input_size, self.hidden_size, num_layers=self.num_layers, batch_first=True
            )
        else:
            self.lstm = nn.LSTM(
                input_size, self.hidden_size, num_layers=self.num_layers, batch_first=True
            )
        head_in = self.hidden_size + self.n_tabular
        if self.head_hidden > 0:
            self.head = nn.Sequential(
                nn.Linear(head_in, self.head_hidden), nn.ReLU(), nn.Linear(self.head_hidden, 1)
            )
        else:
            self.head = nn.Sequential(nn.Linear(head_in, 1))
        self.reset_parameters()

    # ------------------------------------------------------------------ params
    def lstm_param_names(self) -> list[str]:
        """LSTM parameter names (without ``lstm.``) in ``nn.LSTM`` order."""
        return [f"{k}_l{i}" for i in range(self.num_layers) for k in _LSTM_PARAM_KINDS]

    def canonical_names(self) -> list[str]:
        """State-dict keys in the order of the plain (``dp_engine=None``) model.

        The same list, in the same order, for every engine.
        """
        names = [f"embeddings.{i}.weight" for i in range(len(self.embeddings))]
        names += [f"lstm.{n}" for n in self.lstm_param_names()]
        names += [f"head.{n}" for n, _ in self.head.named_parameters()]
        return names

    def named_tensors(self) -> dict[str, torch.Tensor]:
        """Canonical name -> parameter (the live ``nn.Parameter``)."""
        lstm = dict(self.lstm.named_parameters())
        out: dict[str, torch.Tensor] = {}
        for name in self.canonical_names():
            if name.startswith("lstm."):
                out[name] = lstm[name[5:]]
            else:
                out[name] = self.get_parameter(name)
        return out

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Initialise every parameter in canonical order (engine-independent).

        Embeddings ~ N(0, 1) with a zero padding row; LSTM and linear layers as
        PyTorch's defaults (uniform in +-1/sqrt(fan)). The same ``generator``
        state gives the same weights for every engine.
        """
        with torch.no_grad():
            k_lstm = 1.0 / math.sqrt(self.hidden_size)
            for name, p in self.named_tensors().items():
                if name.startswith("embeddings."):
                    p.normal_(generator=generator)
                    p[0].zero_()
                elif name.startswith("lstm."):
                    p.uniform_(-k_lstm, k_lstm, generator=generator)
                else:
                    fan_in = p.shape[1] if p.ndim == 2 else p.shape[0]
                    if p.ndim == 1:  # a bias: fan_in of its layer's weight
                        fan_in = self._head_fan_in(name)
                    bound = 1.0 / math.sqrt(fan_in)
                    p.uniform_(-bound, bound, generator=generator)

    def _head_fan_in(self, bias_name: str) -> int:
        weight = self.get_parameter(bias_name.rsplit(".", 1)[0] + ".weight")
        return int(weight.shape[1])

    # ----------------------------------------------------------------- forward
    def embed(self, seq_cat: torch.Tensor, seq_num: torch.Tensor) -> torch.Tensor:
        """LSTM input ``[B, T, input_size]``: embeddings then numeric fields."""
        parts = [emb(seq_cat[..., i]) for i, emb in enumerate(self.embeddings)]
        parts.append(seq_num.to(parts[0].dtype))
        return torch.cat(parts, dim=-1)

    def head_input(self, h_last: torch.Tensor, tabular: torch.Tensor | None) -> torch.Tensor:
        """Head input: last hidden state, then tabular features if used."""
        if self.n_tabular == 0:
            return h_last
        if tabular is None:
            raise ValueError(f"this model needs {self.n_tabular} tabular features")
        return torch.cat([h_last, tabular.to(h_last.dtype)], dim=-1)

    def forward(
        self,
        seq_cat: torch.Tensor,
        seq_num: torch.Tensor,
        lengths: torch.Tensor,
        tabular: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Churn logits.

        Parameters
        ----------
        seq_cat : LongTensor ``[B, T, n_cat]``
        seq_num : Tensor ``[B, T, n_numeric]``
        lengths : LongTensor ``[B]``
            Real events per sequence (>= 1); sequences are right-padded.
        tabular : Tensor ``[B, n_tabular]`` or None

        Returns
        -------
        Tensor ``[B]``
            One logit per customer.
        """
        lengths = lengths.long().clamp(min=1)
        t_max = min(int(lengths.max()), seq_cat.shape[1]) if lengths.numel() else 1
        x = self.embed(seq_cat[:, :t_max], seq_num[:, :t_max])
        out, _ = self.lstm(x)
        h_last = out[torch.arange(out.shape[0]), (lengths - 1).clamp(max=t_max - 1)]
        return self.head(self.head_input(h_last, tabular)).squeeze(-1)


def build_model(
    cfg: LSTMModelConfig,
    n_tabular: int,
    *,
    dp_engine: DPEngine | None = None,
    seed: int | None = None,
) -> ChurnLSTM:
    """Build a :class:`ChurnLSTM` from the model config.

    Parameters
    ----------
    cfg : LSTMModelConfig
    n_tabular : int
        Number of tabular features in the data (ignored unless ``cfg.use_tabular``).
    dp_engine : {None, "opacus", "fast"}
    seed : int, optional
        Seeds the initial weights without touching the global torch RNG. The
        same seed gives the same weights for every engine.
    """
    kwargs = dict(
        n_tabular=n_tabular if cfg.use_tabular else 0,
        embedding_dim=cfg.embedding_dim,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        dp_engine=dp_engine,
    )
    if seed is None:
        return ChurnLSTM(**kwargs)
    with torch.random.fork_rng(devices=[]):
        model = ChurnLSTM(**kwargs)
    model.reset_parameters(generator=torch.Generator().manual_seed(seed))
    return model


def get_weights(model: ChurnLSTM) -> list[np.ndarray]:
    """The model's parameters as float32 arrays in canonical (state-dict) order."""
    return [
        t.detach().cpu().numpy().astype(np.float32, copy=True)
        for t in model.named_tensors().values()
    ]


def set_weights(model: ChurnLSTM, weights: Sequence[np.ndarray]) -> None:
    """Load arrays produced by :func:`get_weights` (same cfg, any engine).

    Raises
    ------
    ValueError
        When the number of arrays or any array's shape does not match; the
        message names the index, parameter and both shapes.
    """
    named = model.named_tensors()
    if len(weights) != len(named):
        raise ValueError(f"expected {len(named)} weight arrays, got {len(weights)}")
    for i, ((name, p), w) in enumerate(zip(named.items(), weights, strict=True)):
        shape = tuple(np.shape(w))
        if shape != tuple(p.shape):
            raise ValueError(f"weight {i} ({name}): expected shape {tuple(p.shape)}, got {shape}")
    with torch.no_grad():
        for p, w in zip(named.values(), weights, strict=True):
            p.copy_(torch.as_tensor(np.asarray(w), dtype=p.dtype))


def zero_padding_grads(model: ChurnLSTM) -> None:
    """Zero the gradient of every embedding's padding row (zero sensitivity)."""
    for emb in model.embeddings:
        if emb.weight.grad is not None and emb.padding_idx is not None:
            emb.weight.grad[emb.padding_idx].zero_()

"""Budget accounting shared by every search and particle method: model evaluations per output, verifier calls,
and the time spent inside the model and the verifier (the rest is the search loop's own overhead).

Unit of account (Ma et al. 2025, Sec. 3; Kim et al. 2025, Sec. 5): one *function evaluation* (NFE) is the model
applied to one sample. A search for ``B`` outputs batches all candidates of all outputs into shared model calls;
every row of a call is charged to the output it serves (its *owner*), so each output's NFE count is exact however
the rows are batched.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffusio.models.base import ModelBase, ModelWrapper
from diffusio.scaling.verifiers import CountingVerifier

__all__ = ["Account", "MeteredModel", "index_cond"]


def index_cond(cond: dict | None, idx: Tensor, n_out: int) -> dict | None:
    """The condition of rows ``idx``: per-output tensors (first dimension ``n_out``) are indexed, the rest kept."""
    if cond is None:
        return None
    return {k: (v[idx.to(v.device)] if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == n_out else v)
            for k, v in cond.items()}  # fmt: skip


class MeteredModel(ModelWrapper):
    """A Model that charges each row of every call to its owner (set by :meth:`Account.owned`) and times the call."""

    def __init__(self, inner: ModelBase, account: Account):
        super().__init__(inner)
        self._account = account

    def predict(self, x, t, kind="x0", **cond):
        acc = self._account
        owner = acc.owner
        if owner is None or owner.shape[0] != x.shape[0]:
            raise RuntimeError("internal: model called outside Account.owned() or with a different batch")
        t0 = time.perf_counter()
        out = self.inner.predict(x, t, kind, **cond)
        acc.model_seconds += time.perf_counter() - t0
        acc.charge(owner, 1)
        acc.model_calls += 1
        return out


class Account:
    """Per-output NFE and verifier counters for ``n_out`` outputs with a per-output ``budget`` (NFE)."""

    def __init__(
        self,
        model: ModelBase,
        verifier: Callable,
        n_out: int,
        budget: int,
        progress: bool = False,
        verifier_cond: dict | None = None,
    ):
        self.n_out, self.budget, self.verifier_cond = n_out, budget, verifier_cond
        self.nfe = torch.zeros(n_out, dtype=torch.long)
        self.scored = torch.zeros(n_out, dtype=torch.long)
        self.model_calls = 0
        self.model_seconds = 0.0
        self.owner: Tensor | None = None
        self.model = MeteredModel(model, self)
        self.verifier = verifier if isinstance(verifier, CountingVerifier) else CountingVerifier(verifier)
        self.t_start = time.perf_counter()
        self._bar = tqdm(total=budget, desc="NFE per output", disable=not progress, leave=False)

    def charge(self, owner: Tensor, amount: int) -> None:
        self.nfe.index_add_(0, owner.cpu(), torch.full((owner.shape[0],), amount, dtype=torch.long))
        if not self._bar.disable:
            n = min(self.budget, int(self.nfe.max()))
            if n != self._bar.n:
                self._bar.n = n
                self._bar.refresh()

    def owned(self, owner: Tensor):
        """Context: model calls inside charge their rows to ``owner`` ``(rows,)``."""
        acc = self

        class _Ctx:
            def __enter__(self):
                acc.owner = owner
                return acc.model

            def __exit__(self, *exc):
                acc.owner = None
                return False

        return _Ctx()

    def score(self, x: Tensor, owner: Tensor) -> Tensor:
        """Verifier scores ``(rows,)`` of samples ``x`` owned by ``owner`` (given the per-output ``verifier_cond``);
        counts them (and the verifier's own NFE)."""
        s = self.verifier(x, index_cond(self.verifier_cond, owner, self.n_out))
        self.scored.index_add_(0, owner.cpu(), torch.ones(owner.shape[0], dtype=torch.long))
        if self.verifier.nfe_per_sample:
            self.charge(owner, self.verifier.nfe_per_sample)
        return s

    def remaining(self) -> Tensor:
        return self.budget - self.nfe

    @property
    def verifier_seconds(self) -> float:
        return self.verifier.seconds

    def close(self) -> float:
        self._bar.close()
        return time.perf_counter() - self.t_start

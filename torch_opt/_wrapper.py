"""What an optimizer that wraps a base optimizer shares with it (``FiniteDifferencePenalty``,
``SuAmosSchedule``): one list of param groups and one state, through pickling and deepcopy."""

from __future__ import annotations

from typing import Any

from torch.optim.optimizer import Optimizer


class SharesBase(Optimizer):
    """Base class of a wrapper whose ``__init__`` runs ``Optimizer.__init__`` over the base's own
    param groups (adding the wrapper's keys to them), then calls :meth:`_adopt`."""

    base_optimizer: Optimizer

    def _adopt(self, base_optimizer: Optimizer) -> None:
        # The base's hyperparameters too: schedulers read optimizer.defaults (OneCycleLR and
        # CyclicLR look for "momentum" or "betas" there to cycle the shared groups' value).
        self.defaults = {**base_optimizer.defaults, **self.defaults}
        self.base_optimizer = base_optimizer
        self._share()

    def _share(self) -> None:
        """One list of param groups and one state for the wrapper and its base."""
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "base_optimizer": self.base_optimizer}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "base_optimizer" in self.__dict__:
            self.base_optimizer.__setstate__(
                {"state": self.state, "param_groups": self.param_groups}
            )
            self._share()

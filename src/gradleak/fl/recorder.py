"""The honest-but-curious server's memory: a federation hook that records everything it receives."""

from __future__ import annotations

from gradleak.fl.federation import FederationHook, RoundMetrics
from gradleak.fl.store import UpdateStore
from gradleak.records import ClientUpdate, GlobalState

__all__ = ["Recorder"]


class Recorder(FederationHook):
    """Write every received update and every round's global state to an :class:`UpdateStore`.

    Global state ``r`` is the model the server sends at the start of round ``r``; it is written once, when
    it is created (the initial model at the start of round 0, the aggregate of round ``r - 1`` at the end
    of that round, with the per-round metrics in its metadata, which is what resuming reads). A store holds
    one run: a simulation that does not start from the store's round-0 model is refused
    (:class:`~gradleak.fl.store.RunMismatchError`). Updates of a
    round that was interrupted are overwritten when the round is run again, so nothing is duplicated.

    Parameters
    ----------
    store
        Where to write.
    """

    def __init__(self, store: UpdateStore) -> None:
        self.store = store

    def on_round_start(self, round: int, state: GlobalState) -> None:
        # the round-0 model is saved (again) so that the store refuses a run that did not start from it
        if round == 0 or not self.store.has_global(round):
            self.store.save_global(state, overwrite=True)

    def on_client_update(self, update: ClientUpdate) -> None:
        self.store.save_update(update, overwrite=True)

    def on_round_end(self, round: int, state: GlobalState, metrics: RoundMetrics) -> None:
        self.store.save_global(state, overwrite=True)

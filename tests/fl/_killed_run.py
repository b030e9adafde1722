"""Helper for test_federation: a FedAvg run that SIGKILLs itself after a given round is recorded."""

import os
import signal
import sys

from gradleak.fl.federation import FedAvgSimulation, FederationHook
from gradleak.fl.recorder import Recorder
from gradleak.fl.store import UpdateStore
from tests.fl.test_federation import make_clients, tiny_bn_net


class KillAfter(FederationHook):
    def __init__(self, round_: int) -> None:
        self.round = round_

    def on_round_end(self, round, state, metrics) -> None:
        if round == self.round:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    store_dir, after = sys.argv[1], int(sys.argv[2])
    if len(sys.argv) > 3:  # the parent's thread count: float reductions, hence bits, depend on it
        import torch

        torch.set_num_threads(int(sys.argv[3]))
    clients, test = make_clients()
    FedAvgSimulation(tiny_bn_net, clients, rounds=4, seed=7, test=test).run(
        hooks=[Recorder(UpdateStore(store_dir)), KillAfter(after)])

"""cifarapp: a Flower / PyTorch app — the ServerApp, its FedAvg wrapped in gradleak's recorder."""

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from gradleak.fl.flower import RecordingStrategy

from cifarapp.task import Net

# Create ServerApp
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Main entry point for the ServerApp."""

    # Read run config
    cfg = context.run_config
    num_rounds = cfg["num-server-rounds"]
    sites = len(str(cfg["partition-sizes"]).split(","))

    # Load global model (seeded, so that a run can be repeated)
    torch.manual_seed(cfg["seed"])
    global_model = Net()
    arrays = ArrayRecord(global_model.state_dict())

    # Initialize FedAvg strategy, recording every update it receives
    strategy = RecordingStrategy(
        FedAvg(fraction_train=cfg["fraction-train"], fraction_evaluate=0.0, min_train_nodes=sites,
               min_available_nodes=sites),
        store=cfg["store-dir"],
        model=global_model,
        # what the server knows of its clients: the model by import path, its input, their recipe
        model_spec="cifarapp.task:Net",
        input_spec={"size": 32, "channels": 3, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        recipe={"optimizer": "sgd", "momentum": 0.9, "batch_size": cfg["batch-size"], "epochs": cfg["local-epochs"]},
    )

    # Start strategy, run FedAvg for `num_rounds`
    strategy.start(grid=grid, initial_arrays=arrays, train_config=ConfigRecord({"lr": cfg["lr"]}),
                   num_rounds=num_rounds)

"""The hospital job: FedAvg over three sites with NVFlare's recipe API, recorded and gated by gradleak.

Run: python job.py [--data PATH] [--store DIR] [--workspace DIR] [--rounds N]
"""

import argparse
import os
from pathlib import Path

import torch
from model import Net
from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe
from nvflare.recipe import SimEnv
from nvflare.recipe.utils import set_per_site_config

from gradleak.fl.nvflare import add_leakage_gate, record_updates

SITES = {"site-1": {"images": 1, "batch_size": 1}, "site-2": {"images": 16, "batch_size": 8},
         "site-3": {"images": 64, "batch_size": 8}}
LR = 0.01


def main():
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=None, help="PneumoniaMNIST npz (default: gradleak's bundled sample)")
    parser.add_argument("--store", default=str(here / "out" / "store"))
    parser.add_argument("--workspace", default=str(here / "out" / "workspace"))
    parser.add_argument("--evidence", default=str(here / "out" / "gate"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gate-iterations", type=int, default=300)
    parser.add_argument("--gate-attacks", default="fedavg-inversion,inverting-gradients")
    parser.add_argument("--gate-noise-seed", type=int, default=None, help="only to reproduce a test")
    args = parser.parse_args()

    if args.data is None:
        from importlib.resources import files

        args.data = str(files("gradleak.data").joinpath("sample", "pneumoniamnist_sample.npz"))
    os.environ["HOSPITAL_DATA"], os.environ["HOSPITAL_SIZES"] = (
        str(Path(args.data).resolve()), ",".join(str(s["images"]) for s in SITES.values()))

    # a seeded initial model, so that a run can be repeated (NVFlare builds the model anew on the server: the
    # weights travel as a checkpoint)
    torch.manual_seed(0)
    initial = Path(args.workspace) / "initial_model.pt"
    initial.parent.mkdir(parents=True, exist_ok=True)
    torch.save(Net().state_dict(), initial)
    recipe = FedAvgRecipe(
        name="hospital",
        model=Net(),
        initial_ckpt=str(initial),
        min_clients=3,
        num_rounds=args.rounds,
        train_script=str(here / "client.py"),
    )
    set_per_site_config(recipe, {name: {"train_args": f"--lr {LR} --batch_size {site['batch_size']}"}
                                 for name, site in SITES.items()})
    recipe.add_client_file(str(here / "data.py"))

    # gradleak, server side: record every global model and every update the server receives
    record_updates(
        recipe, args.store, model="model:Net",
        input_spec={"size": 28, "channels": 1, "mean": [0.5], "std": [0.5]},
        recipe_fields={"optimizer": "sgd", "lr": LR, "epochs": 1, "batch_size": 8},
        sites=list(SITES),
    )
    # gradleak, on site-1 (one X-ray): attack its own update before it leaves; noise it or block it
    add_leakage_gate(
        recipe, ["site-1"], model="model:Net", data="data:site_images", prior="data:prior",
        recipe={"optimizer": "sgd", "lr": LR, "epochs": 1, "batch_size": 1},
        input_spec={"mean": [0.5], "std": [0.5]},
        attacks={name: {"iterations": args.gate_iterations} for name in args.gate_attacks.split(",")},
        ladder=[0.1, 0.3, 1.0, 3.0], evidence_dir=args.evidence, noise_seed=args.gate_noise_seed,
    )

    run = recipe.execute(SimEnv(clients=list(SITES), workspace_root=args.workspace))
    print("Job status:", run.get_status())
    print("Result:", run.get_result())


if __name__ == "__main__":
    main()

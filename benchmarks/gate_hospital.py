"""Acceptance measurement of the client-side leakage gate (gradleak.gate) on the hospital scenario.

The demo's federation (hospital preset at CPU scale: bundled PneumoniaMNIST sample, ResNet-8 with BatchNorm and
SiLU, X-rays padded to 32x32, 20 FedAvg rounds) is trained; in the last round the gate checks

- client 8, the single X-ray (batch 1, one local step), and
- client 7, 64 X-rays (batch 8, eight local steps),

with the BN-aware FedAvg inversion (the server's attack of the hospital paper), 300 iterations x 3 restarts, and
the sigma0 ladder 0.1, 0.3, 1, 3. Then every update the gate lets out is attacked *independently*, as the server
would: other seeds, one restart each, the gate's budget and a 3x longer one. The gate's decision is right when no
independent attack on the sent update finds an image beyond the prior (RDLV <= 0 for every image).

Run: ``python benchmarks/gate_hospital.py [--iterations N] [--clients 8,7]``; writes
``benchmarks/results/gate_hospital_cpu.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch

from gradleak.attacks import ATTACKS
from gradleak.data import load_dataset
from gradleak.defenses import LocalGaussian
from gradleak.fl.presets import SCENARIOS
from gradleak.gate import LeakageGate
from gradleak.metrics import grade
from gradleak.models import ModelSpec
from gradleak.records import ServerView
from provenance import provenance

OUT = Path(__file__).parent / "results" / "gate_hospital_cpu.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--clients", default="8,7")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(2)

    scenario = SCENARIOS.create(
        "hospital", dataset="sample-pneumoniamnist", sizes=(8, 16, 32, 64, 8, 16, 32, 64, 1), val_per_client=12,
        rounds=args.rounds, image_size=32,
        model=ModelSpec("resnet8", {"num_classes": 2, "in_channels": 1, "image_size": 32, "width": 16,
                                    "activation": "silu"}))
    fed = scenario.build()
    sim = scenario.simulation(federation=fed)
    t0 = time.perf_counter()
    trained = sim.run()
    train_time = time.perf_counter() - t0
    state = trained.final  # the global model of the next round: the model the audited clients train from
    test = load_dataset("sample-pneumoniamnist", split="test")
    prior = test.tensors(list(range(64)), size=32)[0].mean(0)
    spec = scenario.input_spec(fed)
    gate = LeakageGate({"fedavg-inversion": {"iterations": args.iterations}}, restarts=args.restarts,
                       ladder=(0.1, 0.3, 1.0, 3.0), noise_seed=1)
    results = []
    for cid in (int(c) for c in args.clients.split(",")):
        client = fed.clients[cid]
        update = sim.client_update(client, state)
        images, labels = fed.client_images(cid), client.train.y
        decision = gate.check(sim.model, state, update, images, labels, recipe=client.recipe, prior=prior,
                              mean=spec.mean, std=spec.std)
        row = {"client": cid, "images": len(images), "batch_size": client.recipe.batch_size,
               "local_steps": update.metadata["local_steps"], "decision": decision.to_json()}
        print(f"client {cid} ({len(images)} images): {decision.action} sigma0={decision.sigma0} "
              f"{decision.wall_time:.1f} s — {decision.reason}")
        for step in decision.steps:
            a = step.attacks["fedavg-inversion"]
            print(f"  sigma0={step.sigma0}: leaks {step.leaks}, worst-restart RDLV max {max(a['rdlv']):+.1f} %, "
                  f"SSIM max {max(a['ssim']):.3f}, {step.wall_time:.1f} s")
        if decision.update is not None:
            base = copy.deepcopy(sim.model)
            base.load_state_dict(state.state_dict())
            noise = () if decision.sigma0 is None else (LocalGaussian(sigma0=decision.sigma0),)
            view = ServerView(model=lambda base=base: copy.deepcopy(base), global_state=state,
                              updates=(decision.update,), image_shape=tuple(images.shape[1:]), num_classes=2,
                              mean=spec.mean, std=spec.std, batch_size=client.recipe.batch_size,
                              num_images=len(images), recipe=client.recipe, prior=prior, defenses=noise)
            server = []
            for its, seed in [(args.iterations, 11), (args.iterations, 12), (args.iterations, 13),
                              (3 * args.iterations, 14)]:
                t1 = time.perf_counter()
                recon = ATTACKS.create("fedavg-inversion", iterations=its)(
                    view, generator=torch.Generator().manual_seed(seed))
                g = grade(recon, images, labels, prior=prior)
                server.append({"iterations": its, "seed": seed, "ssim_max": float(g["ssim"].max()),
                               "rdlv_max": float(g["rdlv"].max()), "leaks": int(g["n_leaks"]),
                               "wall_time": round(time.perf_counter() - t1, 1)})
                print(f"  server attack (seed {seed}, {its} it): RDLV max {server[-1]['rdlv_max']:+.1f} %, "
                      f"leaks {server[-1]['leaks']}")
            row["server_attacks"] = server
            row["server_rdlv_max"] = max(s["rdlv_max"] for s in server)
        results.append(row)
    payload = {"benchmark": "gate_hospital", "command": "python benchmarks/gate_hospital.py "
               + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
               "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, CPU",
               "torch": torch.__version__, "train_time_s": round(train_time, 1),
               "test_accuracy": trained.history[-1].test_accuracy, "results": results}
    try:
        import subprocess

        payload["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                           cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        pass
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"provenance": provenance(), **payload}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

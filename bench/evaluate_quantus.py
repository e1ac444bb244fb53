"""convscope evaluate against the libraries users pick, on the same model, images, maps and
settings, in one run: deletion (Quantus' PixelFlipping), ROAD, max-sensitivity (Quantus'
MaxSensitivity) and model-parameter randomisation (Quantus' MPRT) against Quantus, infidelity
against Captum (Quantus' Infidelity perturbs patches with a baseline, not Yeh et al.'s Gaussian
noise). Checks that both give the same numbers (the random ones: the same within what the
randomness allows) and reports the medians of the per-round time ratios (runs interleaved).

    /usr/bin/python3 bench/evaluate_quantus.py --quantus DIR --convscope build/convscope \
        [--captum DIR] [--model resnet18|default] [--items 8] [--runs 3] [--threads 2] \
        [--metrics deletion,road,max-sensitivity,randomisation,infidelity]

Captum's DIR holds the `captum` package (a checkout of pytorch/captum); infidelity needs it.

For max-sensitivity and infidelity every image is scaled to the value range [0, 1], so that
convscope's radius and noise (fractions of each image's range) and Quantus' and Captum's
(absolute) are the same numbers. Both explain with saliency: |d p / d x| (max over channels) for
the map, the signed gradient for infidelity's per-value attribution, p the softmax probability
of the class predicted for the clean image.

DIR holds the `quantus` package (a checkout of understandable-machine-intelligence-lab/Quantus;
it needs Debian's python3-pandas, python3-opencv, python3-skimage, python3-sklearn,
python3-scipy, python3-tqdm, python3-matplotlib and python3-cachetools).

--model resnet18: torchvision's ResNet-18 with a one-channel first convolution (random weights,
seed 0, eval mode) at 1x224x224, scripted for convscope; random normal images (why one channel:
see the comment where it is made). --model default: the cached built-in model
(~/.cache/convscope/default-fashion-mnist.pt) on the first Fashion-MNIST test images.

Both read the softmax probability of the class convscope's saliency map explains (the class
predicted for the clean image) and order the pixels by that map (convscope writes it to
maps/saliency.npy; Quantus gets it as a_batch [N,1,H,W] and perturbs every channel of a pixel
together). convscope's time is the whole command (model loading, the maps, writing the
results); Quantus' is its metric call in this process, at its default batch size (64).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch


def run_convscope(args, model_path, data_path, out, metrics, extra):
    cmd = [args.convscope, "evaluate", "--model", model_path, "--data", data_path,
           "--indices", f"0:{args.items}", "--methods", "saliency", "--metrics", metrics,
           "--threads", str(args.threads), "--out", out] + extra
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def saliency(model, inputs, targets, signed=False, **kwargs):
    """convscope's saliency: the gradient of the target's softmax probability; the map is its
    largest magnitude over the channels, [N,1,H,W]."""
    x = torch.as_tensor(np.asarray(inputs)).clone().requires_grad_(True)
    p = torch.softmax(model(x), 1)[torch.arange(len(x)), torch.as_tensor(np.asarray(targets))]
    (g,) = torch.autograd.grad(p.sum(), x)
    return g if signed else g.abs().amax(1, keepdim=True).numpy()


def per_item(out, metric):
    """convscope's per-item values of a metric for saliency, from metrics.csv."""
    import csv
    rows = [r for r in csv.DictReader(open(os.path.join(out, "metrics.csv")))
            if r["method"] == "saliency" and r["metric"] == metric]
    return np.array([float(r["value"]) for r in rows])


def random_metric_cases(args, quantus, model, model_path, x, y, tmp, common, wanted):
    """max-sensitivity, randomisation (Quantus) and infidelity (Captum): the numbers compared once,
    then the timed cases."""
    cases = []
    # Every image scaled to [0, 1]: convscope's fractions of the range are then absolute values.
    lo = x.reshape(len(x), -1).min(1)[:, None, None, None]
    hi = x.reshape(len(x), -1).max(1)[:, None, None, None]
    x01 = ((x - lo) / (hi - lo)).astype(np.float32)
    data01 = os.path.join(tmp, "x01.npy")
    np.save(data01, x01)
    # The class explained: the one predicted for each scaled image (what convscope's pred picks).
    with torch.no_grad():
        y01 = model(torch.from_numpy(x01)).argmax(1).numpy()
    samples, radius, noise = 10, 0.02, 0.1

    if "max-sensitivity" in wanted:
        extra = ["--sensitivity-samples", str(samples), "--sensitivity-radius", str(radius)]

        def quantus_sensitivity():
            m = quantus.MaxSensitivity(nr_samples=samples, lower_bound=radius, disable_warnings=True)
            a = saliency(model, x01, y01)
            return np.array(m(model=model, x_batch=x01, y_batch=y01, a_batch=a, explain_func=saliency,
                              softmax=False, device="cpu"))

        out = os.path.join(tmp, "sens")
        run_convscope(args, model_path, data01, out, "max-sensitivity", common + extra)
        ours, theirs = per_item(out, "max_sensitivity"), quantus_sensitivity()
        print(f"max-sensitivity ({samples} samples, radius {radius}): convscope mean {ours.mean():.4f} "
              f"(items {np.round(ours, 4).tolist()}), Quantus mean {theirs.mean():.4f} "
              f"(items {np.round(theirs, 4).tolist()})")
        cases.append(("max-sensitivity", "max-sensitivity", extra, quantus_sensitivity, data01, "Quantus"))

    if "randomisation" in wanted and isinstance(model, torch.jit.ScriptModule):
        print("randomisation: Quantus' MPRT resets eager modules (reset_parameters); this model is TorchScript")
    elif "randomisation" in wanted:
        def quantus_mprt():
            m = quantus.MPRT(layer_order="top_down", disable_warnings=True)
            return m(model=model, x_batch=x, y_batch=y, a_batch=saliency(model, x, y), explain_func=saliency,
                     softmax=False, device="cpu", batch_size=args.batch_size)

        out = os.path.join(tmp, "rand")
        # convscope redraws as Quantus does (PyTorch's reset_parameters); the draws differ.
        extra = ["--randomisation-init", "reset"]
        run_convscope(args, model_path, args.data_path, out, "randomisation", common + extra)
        j = json.load(open(os.path.join(out, "metrics.json")))["randomisation"]["saliency"]
        ours = dict(zip(j["layers"], j["cascading"]["spearman_abs"]))
        theirs = {k: float(np.mean(v)) for k, v in quantus_mprt().items() if k != "original"}
        names = list(theirs)
        print(f"randomisation, cascading from the top: {len(ours)} layers in convscope, {len(names)} in Quantus; "
              "Spearman correlation of |saliency| with the original map, mean over items:")
        for k in names[:3] + names[len(names) // 2:len(names) // 2 + 1] + names[-2:]:
            print(f"  {k:24s} convscope {ours.get(k, float('nan')):+.4f}  Quantus {theirs[k]:+.4f}")
        cases.append(("randomisation", "randomisation", extra, quantus_mprt, args.data_path, "Quantus"))

    if "infidelity" in wanted:
        if not args.captum:
            print("infidelity: give --captum DIR (a checkout of pytorch/captum) to compare it")
            return cases
        sys.path.insert(0, args.captum)
        from captum.metrics import infidelity as captum_infidelity
        extra = ["--infidelity-samples", str(samples), "--infidelity-noise", str(noise)]
        xt = torch.from_numpy(x01)

        def perturb(inputs):
            i = torch.randn_like(inputs) * noise
            return i, inputs - i

        def captum_run():
            attr = saliency(model, x01, y01, signed=True)
            with torch.no_grad():
                return captum_infidelity(lambda z: torch.softmax(model(z), 1), perturb, xt, attr,
                                         target=torch.from_numpy(y01), n_perturb_samples=samples,
                                         normalize=True).numpy()

        out = os.path.join(tmp, "infid")
        run_convscope(args, model_path, data01, out, "infidelity", common + extra)
        ours, theirs = per_item(out, "infidelity"), captum_run()
        print(f"infidelity ({samples} samples, noise {noise}, normalised): convscope mean {ours.mean():.3e} "
              f"(items {[f'{v:.2e}' for v in ours]}), Captum mean {theirs.mean():.3e} "
              f"(items {[f'{v:.2e}' for v in theirs]})")
        cases.append(("infidelity", "infidelity", extra, captum_run, data01, "Captum"))
    return cases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quantus", required=True)
    ap.add_argument("--convscope", required=True)
    ap.add_argument("--model", default="resnet18", choices=["resnet18", "default"])
    ap.add_argument("--items", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64, help="convscope's rows per forward pass")
    ap.add_argument("--captum", help="a checkout of pytorch/captum (for infidelity)")
    ap.add_argument("--metrics", default="deletion,road,max-sensitivity,randomisation,infidelity")
    args = ap.parse_args()
    wanted = args.metrics.split(",")
    sys.path.insert(0, args.quantus)
    import quantus  # noqa: E402
    torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp()

    if args.model == "resnet18":
        import torchvision
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None)
        # One input channel: Quantus' pixel flipping perturbs single values, in steps that must
        # divide H x W, so at 224x224 its steps cannot hold whole RGB pixels (3 does not divide
        # 50176) and its ROAD indexes the channels' values as pixels. With one channel both
        # compute what the papers (and convscope) define, on ResNet-18's cost.
        model.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
        model = model.eval()
        model_path = os.path.join(tmp, "resnet18.pt")
        torch.jit.save(torch.jit.script(model), model_path)
        x = torch.randn(args.items, 1, 224, 224, generator=torch.Generator().manual_seed(1)).numpy()
        data_path = os.path.join(tmp, "x.npy")
        np.save(data_path, x)
        args.data_path = data_path
        shape = ["--input-shape", "1,224,224"]
        steps = 98  # 512 pixels per step: 50176 = 98 x 512
    else:
        import gzip
        model_path = os.path.expanduser("~/.cache/convscope/default-fashion-mnist.pt")
        model = torch.jit.load(model_path).eval()
        with gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz") as f:
            raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[: args.items]
        x = ((raw.astype(np.float32) / 255.0 - 0.2860) / 0.3530).astype(np.float32)  # the model's metadata
        data_path = os.path.join(tmp, "x.npy")
        np.save(data_path, x)
        args.data_path = data_path
        shape = []
        steps = 98  # 8 pixels per step: 784 = 98 x 8
    common = shape + ["--score", "prob", "--batch-size", str(args.batch_size)]

    # One convscope run first: the maps, the targets and the numbers to compare.
    out = os.path.join(tmp, "cs")
    first = ",".join(m for m in ("deletion", "road") if m in wanted) or "infidelity"
    run_convscope(args, model_path, data_path, out, first,
                  common + ["--steps", str(steps), "--deletion-baseline", "0", "--road-noise", "0",
                            "--percentages", "10,30,50,70,90"])
    j = json.load(open(os.path.join(out, "metrics.json")))
    maps = np.load(os.path.join(out, "maps", "saliency.npy"))[:, None]
    y = np.array(j["targets"])
    c, h, w = x.shape[1:]

    # convscope's deletion and ROAD compute both orders (most and least relevant first); Quantus
    # computes the first, so it runs twice, on the map and on max - map (its order reversed; Quantus
    # refuses maps that are all negative).
    def quantus_deletion():
        curves = []
        for a in (maps, maps.max() - maps):
            m = quantus.PixelFlipping(features_in_step=c * h * w // steps, perturb_baseline=0.0,
                                      disable_warnings=True)
            curves.append(np.array(m(model=model, x_batch=x, y_batch=y, a_batch=a, softmax=True, device="cpu")))
        return curves

    def quantus_road():
        out = []
        for a in (maps, maps.max() - maps):
            m = quantus.ROAD(percentages=[10, 30, 50, 70, 90], noise=0.0, disable_warnings=True)
            out.append(m(model=model, x_batch=x, y_batch=y, a_batch=a, softmax=True, device="cpu"))
        return out

    cases = []
    if "deletion" in wanted:
        cases.append(("deletion", "deletion", ["--steps", str(steps), "--deletion-baseline", "0"], quantus_deletion,
                      data_path, "Quantus"))
    # Same numbers: Quantus' curve is ours after each step (without the clean point).
    q = quantus_deletion() if "deletion" in wanted else []
    for qc, order in zip(q, ("morf", "lerf")):
        ours = np.array(j["curves"]["saliency"]["deletion_" + order])  # mean over items, steps + 1 points
        err = np.abs(qc.mean(0) - ours[1:]).max()
        print(f"deletion {order}: {qc.shape[1]} points per item; max |Quantus - convscope| of the mean curve: {err:.2e}")
    try:
        if "road" not in wanted:
            raise StopIteration
        r = quantus_road()
        for rq, order in zip(r, ("morf", "lerf")):
            kept = np.array(j["curves"]["saliency"]["road_" + order + "_kept"])
            print(f"ROAD {order}: Quantus {rq}, convscope kept share per percentage {kept.tolist()}")
        road_ok = True
    except StopIteration:
        road_ok = False
    except Exception as e:  # report, do not hide
        print(f"ROAD: Quantus failed on {c}-channel input: {type(e).__name__}: {e}")
        road_ok = False
    if road_ok:
        cases.append(("ROAD", "road", ["--road-noise", "0", "--percentages", "10,30,50,70,90"], quantus_road,
                      data_path, "Quantus"))
    cases += random_metric_cases(args, quantus, model, model_path, x, y, tmp, common, wanted)

    for name, metric, extra, qfn, data, tool in cases:
        ratios, tc, tq, inner = [], [], [], []
        for r in range(args.runs):
            order = [0, 1] if r % 2 == 0 else [1, 0]
            t = [0.0, 0.0]
            for k in order:
                if k == 0:
                    t[0] = run_convscope(args, model_path, data, os.path.join(tmp, f"run{r}"), metric, common + extra)
                else:
                    t0 = time.perf_counter()
                    qfn()
                    t[1] = time.perf_counter() - t0
            tc.append(t[0])
            inner.append(json.load(open(os.path.join(tmp, f"run{r}", "metrics.json")))["seconds"]["saliency"][metric])
            tq.append(t[1])
            ratios.append(t[1] / t[0])
        print(f"{name}: convscope {np.median(tc):.2f} s (whole command; the metric itself {np.median(inner):.2f} s), "
              f"{tool} {np.median(tq):.2f} s, {tool} / convscope {np.median(ratios):.2f}x, "
              f"{tool} / convscope's metric {np.median(tq) / np.median(inner):.2f}x ({args.items} items, {args.runs} rounds)")


if __name__ == "__main__":
    main()

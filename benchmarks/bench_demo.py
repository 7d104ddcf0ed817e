"""Demo dataset build speed: `make_demo_dataset` vs writing the same number of plain JPEGs (the I/O floor).

    .venv/bin/python benchmarks/bench_demo.py [--persons 60] [--eval-persons 20] [--repeat 3]

Both are measured in the same run, in a temporary folder, single process; the ratio is build time / floor time.
Also prints the per-image drawing time without any file I/O.
"""
import argparse, shutil, tempfile, time
from pathlib import Path

import numpy as np
from PIL import Image

from maskkit.demo import STEMS, draw_face, make_demo_dataset, make_persons


def best(f, repeat):
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    return min(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--persons", type=int, default=60)
    ap.add_argument("--eval-persons", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n_img = 7 * (args.persons + args.eval_persons)
    tmp = Path(tempfile.mkdtemp())
    try:
        build = best(lambda: make_demo_dataset(tmp / "demo", args.persons, args.eval_persons, verbose=False), args.repeat)
        flat = Image.fromarray(np.full((256, 192, 3), 128, np.uint8))
        def floor():
            d = tmp / "floor"; shutil.rmtree(d, ignore_errors=True); d.mkdir()
            for i in range(n_img): flat.save(d / f"{i}.jpg", quality=90)
        io = best(floor, args.repeat)
        p = make_persons(20, "train", seed=0, minimum=2)
        rng = np.random.default_rng(0)
        draw = best(lambda: [draw_face(l, "correct", "pattern", rng=rng) for l in p.looks for _ in STEMS], args.repeat)
    finally: shutil.rmtree(tmp)
    print(f"{n_img} images ({args.persons}+{args.eval_persons} persons), best of {args.repeat}:")
    print(f"  make_demo_dataset      {build:6.2f} s  {1000 * build / n_img:5.2f} ms/image")
    print(f"  plain JPEG floor       {io:6.2f} s  {1000 * io / n_img:5.2f} ms/image")
    print(f"  draw_face only         {1000 * draw / (7 * len(p)):5.2f} ms/image (no I/O)")
    print(f"  ratio build / floor    {build / io:6.1f}x")


if __name__ == "__main__": main()

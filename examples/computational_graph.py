"""The notes' computational graph: buying apples and oranges, forward and backward.

    python examples/computational_graph.py [--out DIR] [--quick]

2 apples at 100 each and 3 oranges at 150 each, plus 10% tax:

    apple ──×── apple price ──┐
    apple_num ─┘              +── all price ──×── price
    orange ──×── orange price ┘              tax ┘
    orange_num ─┘

Each node is a tiny layer with ``forward`` and ``backward`` (MulLayer, AddLayer);
backpropagation visits them in reverse and multiplies local derivatives. The script prints
the price (715) and the derivatives of the price with respect to every input (apple 2.2,
apple_num 110, orange 3.3, orange_num 165, tax 650), checks them against
``fastlayers.numerical_gradient`` (central differences) and draws the graph with its
forward values above the edges and the backward ones below (computational_graph.png in
DIR, default ./out). --quick changes nothing here: it runs in well under a second.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import fastlayers


class MulLayer:
    def forward(self, x, y):
        self.x, self.y = x, y
        return x * y

    def backward(self, dout):
        return dout * self.y, dout * self.x  # d(xy)/dx = y, d(xy)/dy = x


class AddLayer:
    def forward(self, x, y):
        return x + y

    def backward(self, dout):
        return dout, dout


class Graph:
    def __init__(self):
        self.mul_apple, self.mul_orange = MulLayer(), MulLayer()
        self.add, self.mul_tax = AddLayer(), MulLayer()

    def forward(self, apple, apple_num, orange, orange_num, tax):
        self.apple_price = self.mul_apple.forward(apple, apple_num)
        self.orange_price = self.mul_orange.forward(orange, orange_num)
        self.all_price = self.add.forward(self.apple_price, self.orange_price)
        return self.mul_tax.forward(self.all_price, tax)

    def backward(self, dprice=1.0):
        dall_price, dtax = self.mul_tax.backward(dprice)
        dapple_price, dorange_price = self.add.backward(dall_price)
        dorange, dorange_num = self.mul_orange.backward(dorange_price)
        dapple, dapple_num = self.mul_apple.backward(dapple_price)
        self.grads = {"all_price": dall_price, "apple_price": dapple_price, "orange_price": dorange_price}
        return {"apple": dapple, "apple_num": dapple_num, "orange": dorange, "orange_num": dorange_num, "tax": dtax}


INPUTS = {"apple": 100.0, "apple_num": 2.0, "orange": 150.0, "orange_num": 3.0, "tax": 1.1}
NOTES = {"price": 715.0, "apple": 2.2, "apple_num": 110.0, "orange": 3.3, "orange_num": 165.0, "tax": 650.0}


def draw(graph: Graph, grads: dict, price: float):
    from fastlayers.plot import figure

    fig = figure((9, 4.6))  # imports matplotlib, or says how to install it
    from matplotlib.patches import Circle

    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set(xlim=(-0.3, 9.3), ylim=(0, 4.5), aspect="equal")
    pos = {"apple": (0, 4), "apple_num": (0, 2.8), "orange": (0, 1.6), "orange_num": (0, 0.4),
           "mul_apple": (2.5, 3.4), "mul_orange": (2.5, 1.0), "add": (5, 2.2), "tax": (5, 0.4),
           "mul_tax": (7.2, 1.6), "price": (9, 1.6)}
    ops = {"mul_apple": "\u00d7", "mul_orange": "\u00d7", "add": "+", "mul_tax": "\u00d7"}
    for name, (px, py) in pos.items():
        if name in ops:
            ax.add_patch(Circle((px, py), 0.32, fill=False, lw=1.5))
            ax.text(px, py, ops[name], ha="center", va="center", fontsize=16)
        else:
            ax.text(px, py, name, ha="center", va="center", fontsize=9,
                    bbox={"boxstyle": "round", "fc": "white", "ec": "0.6"})
    edges = [
        ("apple", "mul_apple", INPUTS["apple"], grads["apple"]),
        ("apple_num", "mul_apple", INPUTS["apple_num"], grads["apple_num"]),
        ("orange", "mul_orange", INPUTS["orange"], grads["orange"]),
        ("orange_num", "mul_orange", INPUTS["orange_num"], grads["orange_num"]),
        ("mul_apple", "add", graph.apple_price, graph.grads["apple_price"]),
        ("mul_orange", "add", graph.orange_price, graph.grads["orange_price"]),
        ("add", "mul_tax", graph.all_price, graph.grads["all_price"]),
        ("tax", "mul_tax", INPUTS["tax"], grads["tax"]),
        ("mul_tax", "price", price, 1.0),
    ]
    for a, b, value, grad in edges:
        (x0, y0), (x1, y1) = pos[a], pos[b]
        ax.annotate("", xy=(x1 - 0.45, y1), xytext=(x0 + 0.6, y0), arrowprops={"arrowstyle": "->", "color": "0.3"})
        # Labels a third of the way along the edge, where converging edges are still apart.
        mx, my = x0 + 0.6 + (x1 - x0 - 1.05) / 3, y0 + (y1 - y0) / 3
        ax.text(mx, my + 0.12, f"{value:.4g}", ha="center", va="bottom", fontsize=9, color="tab:blue")
        ax.text(mx, my - 0.12, f"{grad:.4g}", ha="center", va="top", fontsize=9, color="tab:red")
    ax.set_title("forward values (blue, above) and d price / d value (red, below)")
    return fig


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out"), help="directory for the PNG file (default: ./out)")
    ap.add_argument("--quick", action="store_true", help="accepted for uniformity with the other examples")
    args = ap.parse_args(argv)

    graph = Graph()
    price = graph.forward(**INPUTS)
    grads = graph.backward(1.0)

    # The same derivatives by central differences: f reads the inputs from one float64 array.
    x = np.array(list(INPUTS.values()), dtype=np.float64)
    numerical = fastlayers.numerical_gradient(lambda: Graph().forward(*x), x)

    print(f"{'quantity':<11} {'backprop':>10} {'numerical':>12} {'notes':>7}")
    print(f"{'price':<11} {price:>10.6g} {'':>12} {NOTES['price']:>7g}")
    ok = np.isclose(price, NOTES["price"], rtol=1e-12)
    for (name, g), n in zip(grads.items(), numerical):
        print(f"{'d' + name:<11} {g:>10.6g} {n:>12.8g} {NOTES[name]:>7g}")
        ok &= np.isclose(g, NOTES[name], rtol=1e-12) and np.isclose(n, g, rtol=1e-6)
    args.out.mkdir(parents=True, exist_ok=True)
    draw(graph, grads, price).savefig(args.out / "computational_graph.png", dpi=100)
    print(f"backprop = notes = numerical (central differences, relative 1e-6): {'yes' if ok else 'NO'}; "
          f"figure in {args.out}/")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Train the textbook's SimpleConvNet on Fashion-MNIST, layer by layer, then save and reload it.

    python examples/train_fashion_mnist.py            # the bundled 10,000 images
    python examples/train_fashion_mnist.py --full     # the full 60,000/10,000 split, if installed

The full split is found in $FASTLAYERS_DATA, ~/.cache/fastlayers or Debian's
/usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist).
"""

import sys

import numpy as np

import fastlayers
from fastlayers import data, layers, losses, optim

full = "--full" in sys.argv
if full:
    (x_train, t_train), (x_test, t_test) = data.load_fashion_mnist("train"), data.load_fashion_mnist("test")
else:
    (x_train, t_train), (x_test, t_test) = data.load_bundled()

# conv 30@5x5 -> ReLU -> pool 2 -> Affine 100 -> ReLU -> Affine 10, as in the textbook.
model = layers.Sequential(
    layers.Conv2d(1, 30, kernel_size=5, init="he_normal", rng=0),
    layers.ReLU(),
    layers.MaxPool2d(2),
    layers.Flatten(),
    layers.Affine(30 * 12 * 12, 100, init="he_normal", rng=1),
    layers.ReLU(),
    layers.Affine(100, 10, init="he_normal", rng=2),
)
trainer = fastlayers.Trainer(model, losses.SoftmaxCrossEntropy(), optim.Adam(model.parameters(), lr=1e-3), seed=0)
trainer.fit(x_train, t_train, epochs=3, batch_size=100, validation_split=0.1, patience=2)
print("test:", trainer.evaluate(x_test, t_test))

fastlayers.save(model, "simple_cnn.safetensors")
again = fastlayers.load("simple_cnn.safetensors")
assert np.array_equal(again.forward(x_test[:5], train=False), model.forward(x_test[:5], train=False))
print("saved and reloaded simple_cnn.safetensors")
